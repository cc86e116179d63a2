"""The cycle simulation's pipeline (:class:`exitflow.cosim.cycle.Pipeline`) of a design built in
``DIR/hw``: every FINN node of its stages and heads with its cycles, its gates and record FIFOs
as built. Separate from :mod:`exitflow.cosim.cycle`, which needs numpy alone."""

from __future__ import annotations

import json
import math
from pathlib import Path

from exitflow.core.artifacts import BuildSummary, RunDir
from exitflow.core.design import load_design
from exitflow.core.errors import ConfigError
from exitflow.core.files import user_path
from exitflow.hw import streams
from exitflow.hw.folding import record_fifo_depth, stream_words

from .cycle import Pipeline, Stage, Unit
from .engines import _import_finn_ops


def _graph_units(folder: Path, fix: str) -> tuple[list[Unit], object]:
    """The units of one built graph, in node order, and its last node (a qonnx custom op).

    Each unit takes FINN's cycle estimate of its node, except that the graph's slowest node
    takes the interval the graph's streams allow (:func:`exitflow.hw.streams.simulate`: pixel
    by pixel, with its forks, adds and StreamingFIFOs at their built depths and every other
    stream holding a pixel) when that is longer: a residual block's branches, a window generator
    waiting for rows, a producer blocked by a full stream stall it. The dse model keeps FINN's
    estimate (``Unit.estimate``), so the simulated-to-predicted ratio shows what the streams cost."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    onnx_path, cycles_path = folder / "model_hw.onnx", folder / "estimate_layer_cycles.json"
    for path in (onnx_path, cycles_path):
        if not path.is_file():
            raise ConfigError(f"{path}: missing; {fix}")
    try:
        estimates = json.loads(cycles_path.read_text())
        if not isinstance(estimates, dict):
            raise ValueError
    except ValueError:
        raise ConfigError(f"{cycles_path}: corrupt (not a JSON object of node cycles); {fix}") from None
    try:
        model = ModelWrapper(str(onnx_path))
    except Exception as err:  # onnx raises DecodeError and others for a damaged file
        raise ConfigError(f"{onnx_path}: corrupt ONNX file ({type(err).__name__}); {fix}") from None
    units = []
    for node in model.graph.node:
        value = estimates.get(node.name)
        if not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{cycles_path}: no cycle estimate for node {node.name}; {fix}")
        units.append(Unit(node.name, int(math.ceil(value))))
    if not units:
        raise ConfigError(f"{onnx_path}: a graph without nodes; {fix}")
    busy = [u for u in units if u.cycles > 0] or units[:1]  # 0-cycle nodes (width converters) are wires here
    streamed = streams.simulate(model, streams.built_fifo_pixels(model))
    if streamed.deadlock:
        raise ConfigError(
            f"{onnx_path}: the graph's streams deadlock (after {streamed.frames_done} frames) at their built "
            f"FIFO depths; {fix}"
        )
    slowest = max(range(len(busy)), key=lambda i: busy[i].cycles)
    interval = int(math.ceil(streamed.interval - 1e-6))
    if interval > busy[slowest].cycles:
        unit = busy[slowest]
        busy[slowest] = Unit(unit.name, interval, unit.cycles)
    return busy, getCustomOp(model.graph.node[-1])


def load_pipeline(run_dir: str | Path, design_path: str | Path | None = None) -> tuple[Pipeline, list[str]]:
    """The pipeline of the design built in ``DIR/hw`` and its exit (head) names."""
    run = RunDir(run_dir)
    design_path = user_path(design_path) if design_path else run.design
    if not design_path.is_file():
        raise ConfigError(f"{design_path}: design not found; pass --design FILE (a design YAML, see README)")
    design = load_design(design_path)
    hw = run.hw
    fix = f"build it with `exitflow build {run.root} --design {design_path}`"
    if not run.build_summary.is_file():
        raise ConfigError(f"{run.build_summary}: no built hardware; {fix}")
    clock_mhz = BuildSummary.read(hw, fix).clock_mhz  # checked: one line if damaged or foreign
    return built_pipeline(hw, design, clock_mhz, fix), [s.head.name for s in design.stages]


def built_pipeline(hw: Path, design, clock_mhz: float, fix: str) -> Pipeline:
    """The pipeline of ``design``'s graphs in ``hw`` at ``clock_mhz`` (``fix``: what to do when a
    graph is missing or damaged)."""
    _import_finn_ops()
    stages = []
    for stage in design.stages:
        units, last = _graph_units(hw / stage.name, fix)
        head, _ = _graph_units(hw / stage.head.name, fix)
        words = stream_words(last)
        stages.append(Stage(stage.name, tuple(units), tuple(head), stage.gate_depth, max(1, words)))
    return Pipeline(tuple(stages), clock_mhz, record_fifo_depth(design))

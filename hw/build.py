"""``exitflow build``: a design -> FINN hardware for every stage and head, up to code generation.

1. Check the design against the trained model (same backbone, stages that follow its blocks,
   exits it has) and the folding against FINN's rules, before FINN runs.
2. Export the design's exits stage by stage (QONNX).
3. Run exitflow's FINN steps (:mod:`exitflow.hw.finn_flow`) on every stage and head into
   ``DIR/hw/<stage or head name>/``: the specialised, folded HW graph, FINN's estimate reports,
   the folding as a FINN folding-config JSON, and the generated HLS/RTL code.
4. The bitfile needs Vivado and Vitis HLS; without them the build says so in one line.

Bad input is found before anything is written. FINN records absolute paths, so the graphs are
built in ``DIR/hw`` itself while an earlier ``DIR/hw`` waits in ``DIR/.hw.previous``; if the
build fails, the earlier outputs are put back as they were.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from exitflow.core.artifacts import BitfileStatus, BuildSummary, GateCheck, GraphReport, LayerMap, RunDir
from exitflow.core.catalogue import get_board
from exitflow.core.design import Design, gate_depth_limit, load_design, memory_bits, reads_previous_class
from exitflow.core.errors import ConfigError, check_interrupt
from exitflow.core.files import user_path
from exitflow.core.resources import Resources
from exitflow.core.schema import FrozenMap
from exitflow.hls_templates.registry import register_finn_ops
from exitflow.hw import finn_flow
from exitflow.hw.folding import check_folding, stream_words

VIVADO_VERSION = "2024.2"  # the tool release finn-plus 1.6.1 targets


def match_design(design: Design, config, model, source: str) -> list[str]:
    """The exits the design keeps, after checking it describes this model."""
    if design.model != config.model.backbone:
        raise ConfigError(
            f"{source}: model: the design is for {design.model!r}, the run folder holds a "
            f"{config.model.backbone!r} model"
        )
    ends = [stage.blocks[-1] for stage in design.stages]
    for k, end in enumerate(ends):
        last = k == len(design.stages) - 1
        if last and end != model.exit_names[-1]:
            raise ConfigError(
                f"{source}: stages[{k}].blocks: the last stage must end with the final exit "
                f"{model.exit_names[-1]!r}; it ends with {end!r}"
            )
        if not last and end not in model.exit_names[:-1]:
            raise ConfigError(
                f"{source}: stages[{k}].blocks: the model has no exit after {end!r}; "
                f"candidate exits: {', '.join(model.exit_names[:-1])}"
            )
    mismatch = model.blocks_mismatch([list(stage.blocks) for stage in design.stages])
    if mismatch:
        raise ConfigError(f"{source}: stages: {mismatch}")
    names = [s.name for s in design.stages] + [h.name for h in design.heads]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ConfigError(f"{source}: stage and head names share {clash[0]!r}; each names its own folder in hw/")
    return ends[:-1]


def _summarise(name: str, kind: str, folder: Path) -> GraphReport:
    resources = json.loads((folder / "estimate_layer_resources.json").read_text())
    cycles = json.loads((folder / "estimate_layer_cycles.json").read_text())
    total = Resources.total(Resources.from_finn(r) for r in resources.values())
    return GraphReport(
        name=name,
        kind=kind,
        lut=total.lut,
        ff=sum(r.get("FF", 0) for r in resources.values()),  # flip-flops: not in a resource vector
        bram18=int(total.bram18),
        uram=int(total.uram),
        dsp=int(total.dsp),
        interval_cycles=int(max(cycles.values())),
        nodes=len(resources),
    )


def build(
    run_dir: str | Path,
    design_path: str | Path | None = None,
    log: Callable[[str], None] = print,
    hw_dir: str | Path | None = None,
    vivado_project: Callable[[Path, BuildSummary], object] | None = None,
    codegen: bool = True,
) -> list[GraphReport]:
    """Build the design into ``hw_dir`` (default ``DIR/hw``); see the module docstring.
    ``vivado_project(run folder, summary)`` runs before ``build.json`` commits the build;
    ``codegen=False`` builds the graphs without their HLS/RTL code (for their estimates)."""
    run = RunDir(run_dir)
    run_dir = run.root
    design_path = user_path(design_path) if design_path else run.design
    if not design_path.exists():
        raise ConfigError(f"{design_path}: design not found; pass --design FILE (a design YAML, see README)")
    design = load_design(design_path)
    board = get_board(design.board)
    # torch, only once the design and the board are known to be good: a mistake there is reported at once
    from exitflow.quant import checkpoint as ckpt
    from exitflow.quant.export import layer_table

    config, model, data = ckpt.load_model(run_dir)
    exits = match_design(design, config, model, str(design_path))
    chosen = model.kept_exits(exits)
    stage_layers, head_layers = layer_table(model, chosen)
    for k, stage in enumerate(design.stages):
        check_folding(f"{design_path}: stages[{k}].folding", stage.folding, stage_layers[k], f"stage {stage.name!r}")
        check_folding(
            f"{design_path}: stages[{k}].head.folding", stage.head.folding, head_layers[k], f"head {stage.head.name!r}"
        )

    # FINN records absolute paths of generated code, so the build happens in DIR/hw itself; an
    # earlier DIR/hw waits in DIR/.hw.previous and comes back if this build fails or is killed.
    final = user_path(hw_dir) if hw_dir else run.hw
    restore_build(final, log)
    previous = backup_of(final)
    if final.exists():
        final.rename(previous)
    try:
        reports = _build_graphs(
            final,
            design,
            design_path,
            board,
            model,
            data,
            exits,
            stage_layers,
            head_layers,
            log,
            vivado_project,
            codegen,
        )
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        if previous.exists():
            previous.rename(final)
        raise
    shutil.rmtree(previous, ignore_errors=True)
    return reports


def backup_of(hw: Path) -> Path:
    """Where an earlier build waits while a new one runs: ``DIR/.hw.previous``."""
    return hw.with_name(f".{hw.name}.previous")


def is_finished(hw: Path) -> bool:
    """A build is finished once its ``build.json`` is there: it is written last, atomically."""
    return (hw / BuildSummary.FILE).is_file()


def restore_build(hw: Path, log: Callable[[str], None] = print) -> bool:
    """Put the last finished build back in ``hw`` after a build that was interrupted or killed
    (``kill -9`` leaves no chance to clean up): an unfinished ``hw`` gives way to its backup; a
    finished one makes the backup redundant. Safe to interrupt at any point and to call again.
    Returns whether a backup was put back."""
    previous = backup_of(hw)
    if not previous.exists():
        return False
    if is_finished(hw):
        shutil.rmtree(previous)  # the build finished; only its clean-up was cut short
        return False
    if not is_finished(previous):  # no finished build anywhere (cannot happen unless edited by hand)
        shutil.rmtree(previous)
        return False
    shutil.rmtree(hw, ignore_errors=True)
    previous.rename(hw)
    log(f"note: {hw} held an interrupted build; the last finished build was put back from {previous}")
    return True


def _build_graphs(
    hw, design, design_path, board, model, data, exits, stage_layers, head_layers, log, vivado_project, codegen
):
    import sys

    import torch
    from tqdm import tqdm

    # torch, as in build()
    from exitflow.quant.export import export_stages

    manifest = export_stages(model, exits, hw / "stages", torch.zeros((1, *data["input_shape"])))
    clock_ns = 1000.0 / design.resolve_clock_mhz()
    jobs = []
    for k, stage in enumerate(design.stages):
        ctu = {
            "policy": stage.head.policy,
            "threshold": stage.head.threshold,
            "scale": manifest.heads[k].scale,
            "logit_bits": manifest.heads[k].logit_bits,
            "class_input": reads_previous_class(design, k),
        }
        blocks = ", ".join(stage.blocks)
        where = f"the stage of blocks {blocks}"
        if model.stages_cut_from_whole:  # a user's model: a stage is named by the module it ends at
            where = (
                f"the stage ending at the classifier {stage.blocks[-1]!r}"
                if k == len(design.stages) - 1
                else f"the stage ending at {stage.blocks[-1]!r}"
            )
        jobs.append(
            (
                stage.name,
                "stage",
                manifest.stages[k].file,
                stage_layers[k],
                stage.folding,
                None,
                where,
            )
        )
        jobs.append(
            (
                stage.head.name,
                "head",
                manifest.heads[k].file,
                head_layers[k],
                stage.head.folding,
                ctu,
                f"the exit head after {stage.blocks[-1]}",
            )
        )
    reports = []
    for k, (name, kind, file, layers, folding, ctu, where) in enumerate(
        tqdm(jobs, desc="FINN", unit="graph", disable=not sys.stderr.isatty(), leave=False)
    ):
        out = hw / name
        state = finn_flow.FlowState(
            name=name,
            part=board.part,
            clock_ns=clock_ns,
            layers=[layer.name for layer in layers],
            signatures={layer.name: layer.signature for layer in layers},
            folding=folding,
            out=out,
            image_input=k == 0,
            ctu=ctu,
            where=where,
        )
        finn_flow.run_flow(hw / "stages" / file, out, state, codegen=codegen)
        LayerMap(
            layers=FrozenMap(state.layer_nodes), input_datatype=state.input_datatype, input_scale=state.input_scale
        ).write(out)
        report = _summarise(name, kind, out)
        reports.append(report)
        fifos = (
            f"; skip FIFOs sized by simulation to {', '.join(map(str, state.skip_fifos.values()))} words"
            if state.skip_fifos
            else ""
        )
        if state.link_fifos:
            fifos += f"; {state.link_fifos} stream FIFOs of {state.link_pixels} pixels, so the graph keeps its interval"
        log(
            f"{kind} {name}: {report.nodes} HW nodes, interval {report.interval_cycles} cycles, "
            f"LUT {report.lut:.0f}, BRAM18 {report.bram18}, DSP {report.dsp}{fifos}"
        )
    gates = _gate_checks(hw, design, board, design_path, log)
    summary = BuildSummary(
        design=str(Path(design_path).resolve()),
        board=board.name,
        part=board.part,
        gates=gates,
        clock_mhz=design.resolve_clock_mhz(),
        input_shape=tuple(data["input_shape"]),
        graphs=tuple(reports),
        bitfile=bitfile_status(hw.parent, design_path),
    )
    if vivado_project:  # the board's step (exitflow.boards.vivado.write_project): before build.json commits the build
        vivado_project(hw.parent, summary)
    check_interrupt()  # a Ctrl-C that a library swallowed: the earlier build comes back, this one is not committed
    summary.write(hw)  # last, atomically: the build is done
    return reports


def _gate_checks(hw: Path, design: Design, board, design_path: Path, log) -> tuple[GateCheck, ...]:
    """A gate must fit on the board: ``gate_depth`` feature maps of the stage's real size (its
    folded output words times the stream width) within the device's memory, or the design is
    refused. Its FIFO should also cover its head's decision latency (the sum of the head's node
    cycles): a shallower one stalls the stage while the head decides. That is reported, not
    refused: the depth is the design's trade-off."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    register_finn_ops()

    checks = []
    for k, stage in enumerate(design.stages[:-1]):
        last = getCustomOp(ModelWrapper(str(hw / stage.name / "model_hw.onnx")).graph.node[-1])
        folds = stream_words(last)
        map_bits = folds * int(last.get_outstream_width())
        if stage.gate_depth > gate_depth_limit(board, map_bits):  # the config-time check, with the real map size
            raise ConfigError(
                f"{design_path}: stages[{k}].gate_depth: {stage.gate_depth:,} feature maps of {map_bits:,} bits after "
                f"{stage.name!r} need {stage.gate_depth * map_bits:,} bits; {board.name} holds {memory_bits(board):,} "
                f"in all (BRAM, URAM and LUT RAM), so at most {gate_depth_limit(board, map_bits):,} maps; "
                "the search uses 2 to 8"
            )
        latency = sum(json.loads((hw / stage.head.name / "estimate_layer_cycles.json").read_text()).values())
        words = stage.gate_depth * folds
        checks.append(
            GateCheck(stage=stage.name, fifo_words=words, head_latency_cycles=int(latency), covers=words >= latency)
        )
        if words < latency:
            log(
                f"note: the gate after {stage.name} holds {words} words, "
                f"less than {stage.head.name}'s decision latency "
                f"of about {int(latency)} cycles; the stage may stall while it decides (raise gate_depth)"
            )
    return tuple(checks)


def missing_tools() -> list[str]:
    missing = [] if shutil.which("vivado") else [f"Vivado {VIVADO_VERSION} (vivado)"]
    if not (shutil.which("vitis_hls") or shutil.which("vitis-run")):
        missing.append(f"Vitis HLS {VIVADO_VERSION} (vitis_hls or vitis-run)")
    return missing


def bitfile_status(run_dir: Path, design_path: Path) -> BitfileStatus:
    """What the Vivado part of the build needs, and whether this machine has it."""
    return BitfileStatus(
        tools=f"Vivado and Vitis HLS {VIVADO_VERSION}",
        missing=tuple(missing_tools()),
        project=str(RunDir(run_dir).vivado),
        command=f"exitflow build {run_dir} --design {design_path}",
    )

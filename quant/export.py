"""Export of a multi-exit network one stage at a time, as linear QONNX graphs FINN can take.

For a chosen subset of exits (the final exit is always added), stage k holds the backbone blocks
between exit k-1 and exit k, head k the exit classifier after them:
``DIR/stages/stage{k}.onnx`` and ``DIR/stages/head{k}.onnx``, plus ``DIR/stages/manifest.json``
(per stage: blocks, input and output shapes; per head: the exit, the logit scale and bit width).

Every graph starts with the quantiser of what it receives, so its input is quantised exactly as
in the whole network; running the stages and heads one after another reproduces the network's
integer logits bit for bit (``tests/quant/test_export.py``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from exitflow.errors import ConfigError

from . import checkpoint as ckpt
from .network import MultiExitNet


def _export(module: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    from brevitas.export import export_qonnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    module.eval()
    # torch's dynamo exporter: the TorchScript one (dynamo=False) leaves Brevitas' quantiser
    # parameters behind as extra graph outputs in torch 2.13. Its progress lines are muted.
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as scratch, contextlib.redirect_stdout(io.StringIO()):
            raw = Path(scratch) / path.name  # the exporter may add a .data file beside it
            export_qonnx(module, input_t=example, export_path=str(raw), dynamo=True, verbose=False)
            cleanup_model(ModelWrapper(str(raw))).save(str(path))  # one self-contained file
    finally:
        logger.setLevel(level)


def is_linear_graph(model) -> bool:
    """The data path (nodes reachable from the graph input) is one chain: every such node has one
    data-path input and at most one data-path consumer. Weight quantisers hang off initializers
    and are folded by FINN, so they do not count."""
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        return False
    live = {graph.input[0].name}
    data_nodes = []
    for node in graph.node:  # ONNX nodes are topologically sorted
        if set(node.input) & live:
            data_nodes.append(node)
            live.update(node.output)
    for node in data_nodes:
        consumers = [n for n in data_nodes if set(n.input) & set(node.output)]
        if len([i for i in node.input if i in live]) != 1 or len(consumers) > 1:
            return False
    return bool(data_nodes) and graph.output[0].name in live


def export_stages(model: MultiExitNet, exits: list[str], out_dir: str | Path, example: torch.Tensor) -> dict:
    """Write stage and head QONNX files for ``exits`` into ``out_dir``; returns the manifest."""
    unknown = [e for e in exits if e not in model.exit_names]
    if unknown:
        raise ConfigError(f"exits: no exit after block {unknown[0]!r}; candidate exits: {', '.join(model.exit_names)}")
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.eval()
    chosen = [e for e in model.exit_names if e in exits or e == model.exit_names[-1]]
    manifest = {"exits": chosen, "stages": [], "heads": []}
    x = example[:1].float()
    names = model.block_names
    prev = None
    with torch.no_grad():
        for k, ((stage, head), exit_name) in enumerate(zip(model.stage_modules(chosen), chosen)):
            _export(stage, x, tmp / f"stage{k}.onnx")
            feature = stage(x).value
            _export(head, feature, tmp / f"head{k}.onnx")
            logits = head(feature)
            start = 0 if prev is None else names.index(prev) + 1
            manifest["stages"].append({
                "file": f"stage{k}.onnx", "blocks": names[start : names.index(exit_name) + 1],
                "input_shape": list(x.shape[1:]), "output_shape": list(feature.shape[1:]),
            })
            manifest["heads"].append({
                "file": f"head{k}.onnx", "exit": exit_name, "scale": float(logits.scale),
                "logit_bits": int(logits.bit_width), "num_classes": int(logits.shape[1]),
            })
            x, prev = feature, exit_name
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.replace(out_dir)
    return manifest


def export_run(run_dir: str | Path, exits: list[str]) -> dict:
    """Export the trained run in ``run_dir`` to ``run_dir/stages``."""
    run_dir = Path(run_dir)
    _, model, data = ckpt.load_model(run_dir)
    example = torch.zeros((1, *data["input_shape"]))
    return export_stages(model, exits, run_dir / "stages", example)


def run_stages(stage_dir: str | Path, x: np.ndarray) -> list[np.ndarray]:
    """Execute exported stages and heads one after another with QONNX's executor: the integer
    logits of every exported exit, shape ``(samples, classes)`` each. ``x`` is float input."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    stage_dir = Path(stage_dir)
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    graphs = [(ModelWrapper(str(stage_dir / s["file"])), ModelWrapper(str(stage_dir / h["file"])), h)
              for s, h in zip(manifest["stages"], manifest["heads"])]
    logits = [[] for _ in graphs]
    for i in range(len(x)):
        h = x[i : i + 1].astype(np.float32)
        for k, (stage, head, meta) in enumerate(graphs):
            h = execute_onnx(stage, {stage.graph.input[0].name: h})[stage.graph.output[0].name]
            y = execute_onnx(head, {head.graph.input[0].name: h})[head.graph.output[0].name]
            z = y / meta["scale"]
            if np.abs(z - np.round(z)).max() > 1e-2:
                raise RuntimeError(f"{meta['file']}: output is not an integer multiple of the logit scale")
            logits[k].append(np.round(z).astype(np.int64))
    return [np.concatenate(v) for v in logits]

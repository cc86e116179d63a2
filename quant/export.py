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
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from exitflow.core.artifacts import ExportManifest, HeadFile, RunDir, StageFile, WeightLayer
from exitflow.core.errors import ConfigError

from . import checkpoint as ckpt
from .model import MultiExitModel
from .network import MultiExitNet


def _export(module: torch.nn.Module, example: torch.Tensor, path: Path, dynamo: bool = True, check=None) -> None:
    """Brevitas QONNX export of ``module`` into one self-contained, cleaned-up file.

    torch's dynamo exporter by default: the TorchScript one flattens a returned QuantTensor into
    extra graph outputs. The TorchScript one (``dynamo=False``) is used where the traced forward
    raises and catches an exception (a custom backbone stopped at its classifier), which makes
    torch.export fall back to a trace that decomposes Brevitas' Quant nodes."""
    from brevitas.export import export_qonnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    module.eval()
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the dynamo exporter's progress lines
    try:
        with tempfile.TemporaryDirectory() as scratch, contextlib.redirect_stdout(io.StringIO()):
            raw = Path(scratch) / path.name  # the exporter may add a .data file beside it
            export_qonnx(module, input_t=example, export_path=str(raw), dynamo=dynamo, verbose=False)
            if check is not None:  # on the exporter's own graph, whose node names carry module scopes
                import onnx

                check(onnx.load(str(raw)))
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


def export_stages(
    model: MultiExitModel, exits: list[str], out_dir: str | Path, example: torch.Tensor
) -> ExportManifest:
    """Write stage and head QONNX files for ``exits`` into ``out_dir``; returns the manifest.

    ``model`` is a built-in :class:`MultiExitNet` (each stage exported from its own modules) or a
    :class:`~exitflow.quant.custom.CustomMultiExitNet` (the user's whole model exported once and
    cut at the exits' tensors)."""
    unknown = [e for e in exits if e not in model.exit_names]
    if unknown:
        raise ConfigError(
            f"exits: {unknown[0]!r} is not a candidate exit of this model; "
            f"candidate exits: {', '.join(model.exit_names)}"
        )
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.eval()
    chosen = model.kept_exits(exits)
    x = example[:1].float()
    with torch.no_grad():
        try:
            cut = _cut_custom if model.stages_cut_from_whole else _builtin_stages
            features = cut(model, chosen, x, tmp)
        except ConfigError:  # a layer exitflow cannot map: leave nothing half-written behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        stages, heads = [], []
        inputs = [x, *features[:-1]]
        blocks, layers = model.stage_blocks(chosen), _stage_layers(model, chosen)
        for k, exit_name in enumerate(chosen):
            head = model.exit_head(exit_name)
            _export(head, features[k], tmp / f"head{k}.onnx")
            logits = head(features[k])
            stages.append(
                StageFile(
                    file=f"stage{k}.onnx",
                    blocks=tuple(blocks[k]),
                    input_shape=tuple(inputs[k].shape[1:]),
                    output_shape=tuple(features[k].shape[1:]),
                    layers=layers[k],
                )
            )
            heads.append(
                HeadFile(
                    file=f"head{k}.onnx",
                    exit=exit_name,
                    scale=float(logits.scale),
                    logit_bits=int(logits.bit_width),
                    num_classes=int(logits.shape[1]),
                    layers=_head_layers(head),
                )
            )
    manifest = ExportManifest(exits=tuple(chosen), stages=tuple(stages), heads=tuple(heads))
    manifest.write(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.replace(out_dir)
    return manifest


def _weight_layer(name: str, module) -> WeightLayer | None:
    """FINN's matrix view of a weight layer: MW inputs (Cin*k*k for a conv) by MH outputs."""
    from brevitas.nn import QuantConv2d, QuantLinear

    if not isinstance(module, (QuantConv2d, QuantLinear)):
        return None
    wbits = int(module.quant_weight().bit_width)
    if isinstance(module, QuantConv2d):
        k = int(np.prod(module.kernel_size))
        return WeightLayer(
            name=name, mw=module.in_channels * k, mh=module.out_channels, cin=module.in_channels, wbits=wbits
        )
    return WeightLayer(name=name, mw=module.in_features, mh=module.out_features, wbits=wbits)


def _stage_layers(model: MultiExitModel, chosen: list[str]) -> list[tuple[WeightLayer, ...]]:
    """The weight layers of every stage, named as folding keys: block names (built-in) or module
    names (custom backbone)."""
    return [
        tuple(layer for name, module in stage if (layer := _weight_layer(name, module)))
        for stage in model.stage_layers(chosen)
    ]


def layer_table(
    model: MultiExitModel, chosen: list[str]
) -> tuple[list[tuple[WeightLayer, ...]], list[tuple[WeightLayer, ...]]]:
    """(weight layers of every stage, of every head) for the exits ``chosen`` (the final exit
    last), known before anything is exported: what folding is checked against."""
    return _stage_layers(model, chosen), [_head_layers(model.head(e)) for e in chosen]


def _head_layers(head) -> tuple[WeightLayer, ...]:
    """Weight layers of a head: ``hidden`` (if any) and ``classifier``."""
    found = [m for m in head.modules() if _weight_layer("", m)]
    names = ["hidden", "classifier"] if len(found) == 2 else ["classifier"]
    return tuple(_weight_layer(n, m) for n, m in zip(names, found, strict=False))


def _builtin_stages(model: MultiExitNet, chosen: list[str], x: torch.Tensor, folder: Path) -> list[torch.Tensor]:
    features = []
    for k, (stage, _) in enumerate(model.stage_modules(chosen)):
        _export(stage, x, folder / f"stage{k}.onnx")
        x = stage(x).value
        features.append(x)
    return features


class _Taps(torch.nn.Module):
    """The user's model with the exits' feature maps as its outputs."""

    def __init__(self, model, names: list[str]):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, x):
        taps = self.model._run(x)
        features = (self.model.exit_feature(taps, n) for n in self.names)
        return tuple(f.value if hasattr(f, "value") else f for f in features)


def _cut_custom(model, chosen: list[str], x: torch.Tensor, folder: Path) -> list[torch.Tensor]:
    """Export the user's model once with every exit's feature map as an output, then cut it into
    one graph per stage; each stage after the first starts with a copy of the quantiser of what
    it receives."""
    import onnx
    from onnx import helper
    from onnx.utils import Extractor
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    taps = _Taps(model, chosen)
    _export(taps, x, folder / "whole.onnx", dynamo=False, check=lambda raw: check_chain(raw, model))
    whole = onnx.load(str(folder / "whole.onnx"))
    (folder / "whole.onnx").unlink()
    outputs = [o.name for o in whole.graph.output]
    producer = {out: node for node in whole.graph.node for out in node.output}
    init = {i.name: i for i in whole.graph.initializer}
    del whole.graph.quantization_annotation[:]  # the extractor refuses them; cleanup infers them again
    extractor = Extractor(whole)
    for k, out in enumerate(outputs):
        start = whole.graph.input[0].name if k == 0 else outputs[k - 1]
        stage = extractor.extract_model([start], [out])
        if k > 0:
            quant = _quantiser_node(producer, start, chosen[k - 1])
            new_in = "stage_in"
            node = helper.make_node(
                "Quant", [new_in, *quant.input[1:]], [start], domain=quant.domain, name="StageInputQuant"
            )
            node.attribute.extend(quant.attribute)
            stage.graph.node.insert(0, node)
            have = {i.name for i in stage.graph.initializer}
            stage.graph.initializer.extend(init[n] for n in quant.input[1:] if n not in have)
            old = onnx.ValueInfoProto()
            old.CopyFrom(stage.graph.input[0])
            new = onnx.ValueInfoProto()
            new.CopyFrom(old)
            new.name = new_in
            del stage.graph.input[:]
            stage.graph.input.append(new)
            stage.graph.value_info.append(old)  # the received tensor is now internal
        seen = {i.name for i in stage.graph.input} | {o.name for o in stage.graph.output}
        kept = []
        for v in stage.graph.value_info:  # one entry per internal tensor
            if v.name not in seen:
                seen.add(v.name)
                kept.append(v)
        del stage.graph.value_info[:]
        stage.graph.value_info.extend(kept)
        path = folder / f"stage{k}.onnx"
        onnx.save(stage, str(path))
        cleanup_model(ModelWrapper(str(path))).save(str(path))
    return list(taps(x))


def _quantiser_node(producer: dict, tensor: str, exit_name: str = ""):
    """The Quant node whose output is ``tensor``, or feeds the max pool that produces it."""
    node = producer[tensor]
    if node.op_type == "MaxPool":
        node = producer[node.input[0]]
    if node.op_type not in ("Quant", "BipolarQuant"):
        raise ConfigError(
            f"model.exits: the output of {exit_name!r} is not the output of an activation quantiser "
            "once exported; put the exit right after a QuantIdentity, QuantReLU or QuantHardTanh"
        )
    return node


# What the exporter calls the operations that join two branches, in the user's words.
_JOINS = {"Add": "Add", "Sum": "Add", "Sub": "Sub", "Mul": "Mul", "Concat": "Concat", "Div": "Div"}


def _user_module(node_name: str, modules: dict) -> str | None:
    """The user's module an exported node comes from: its name scope (``/backbone/block1/Add``)
    read back as the deepest module name of the user's backbone it names."""
    parts = node_name.strip("/").split("/")[:-1]
    if parts[:1] == ["backbone"]:
        parts = parts[1:]
    found, path = None, []
    for part in parts:
        path.append(part)
        for candidate in (part, ".".join(path)):
            if candidate in modules:
                found = candidate
    return found


def check_chain(raw, model) -> None:
    """The exported custom backbone is one chain of layers (what exitflow maps to hardware),
    else one ConfigError line naming the user's module where it branches: a skip connection
    (two branches joined by an Add) or a concatenation."""
    modules = {n: m for n, m in model.backbone.named_modules() if n}
    graph = raw.graph
    live = {graph.input[0].name}
    for node in graph.node:  # ONNX nodes are topologically sorted
        data_in = [i for i in node.input if i in live]
        if not data_in or node.op_type in ("Shape", "Size"):  # a shape is not data (x.view(x.shape[0], -1))
            continue
        live.update(node.output)
        if len(data_in) > 1:
            where = _user_module(node.name, modules)
            owner = f"{type(modules[where]).__name__}.forward" if where else f"{type(model.backbone).__name__}.forward"
            op = _JOINS.get(node.op_type, node.op_type)
            kind = "skip connection" if op in ("Add", "Sub") else "join"
            raise ConfigError(
                f"{where or 'the backbone'}: the {kind} ({op} of two branches) is not supported: exitflow maps only a "
                f"backbone that is one chain of layers to hardware; remove the branch from {owner}"
            )


def export_run(run_dir: str | Path, exits: list[str]) -> ExportManifest:
    """Export the trained run in ``run_dir`` to ``run_dir/stages``."""
    run = RunDir(run_dir)
    _, model, data = ckpt.load_model(run.root)
    example = torch.zeros((1, *data["input_shape"]))
    return export_stages(model, exits, run.exported, example)


def run_stages(stage_dir: str | Path, x: np.ndarray) -> list[np.ndarray]:
    """Execute exported stages and heads one after another with QONNX's executor: the integer
    logits of every exported exit, shape ``(samples, classes)`` each. ``x`` is float input."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    stage_dir = Path(stage_dir)
    manifest = ExportManifest.read(stage_dir)
    graphs = [
        (ModelWrapper(str(stage_dir / s.file)), ModelWrapper(str(stage_dir / h.file)), h)
        for s, h in zip(manifest.stages, manifest.heads, strict=True)
    ]
    logits = [[] for _ in graphs]
    for i in range(len(x)):
        h = x[i : i + 1].astype(np.float32)
        for k, (stage, head, meta) in enumerate(graphs):
            h = execute_onnx(stage, {stage.graph.input[0].name: h})[stage.graph.output[0].name]
            y = execute_onnx(head, {head.graph.input[0].name: h})[head.graph.output[0].name]
            z = y / meta.scale
            if np.abs(z - np.round(z)).max() > 1e-2:
                raise RuntimeError(f"{meta.file}: output is not an integer multiple of the logit scale")
            logits[k].append(np.round(z).astype(np.int64))
    return [np.concatenate(v) for v in logits]

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
from .custom import _is_quantiser
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
        if module.groups > 1:
            if module.groups != module.in_channels or module.out_channels != module.in_channels:
                raise ConfigError(
                    f"{name}: a grouped convolution ({module.groups} groups of {module.in_channels} channels) "
                    "is not supported: FINN maps dense and depthwise ones (groups = in_channels = out_channels)"
                )
            return WeightLayer(
                name=name, mw=k, mh=module.out_channels, cin=module.in_channels, wbits=wbits, depthwise=True
            )
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
    _export(taps, x, folder / "whole.onnx", dynamo=False, check=lambda raw: check_graph(raw, model, chosen[:-1]))
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


#: The exported operations on a user's backbone's data path that exitflow's FINN steps map (or
#: fold away: batch norm into thresholds, scalar affine ops into the next layer, layout ops).
MAPPED_OPS = frozenset(
    {
        "Conv", "MatMul", "Gemm", "BatchNormalization", "Relu", "Quant", "BipolarQuant", "MaxPool",
        "GlobalAveragePool", "ReduceMean", "Flatten", "Reshape", "Transpose", "Identity", "Squeeze",
        "Unsqueeze", "Add", "Sub", "Mul", "Div", "Concat", "Sum", "Gather", "Cast",
    }
)  # fmt: skip
#: The same in the user's words, for messages.
MAPPED_LAYERS = (
    "quantised convolutions (dense and depthwise) and linear layers, batch norm, ReLU and activation quantisers, "
    "max pooling, global average pooling, flatten, scalar scaling and residual adds"
)

# What the exporter calls the operations that join two branches, in the user's words.
_JOINS = {"Add": "Add", "Sum": "Add", "Sub": "Sub", "Mul": "Mul", "Concat": "Concat", "Div": "Div"}


def _user_module(node_name: str, modules: dict) -> str | None:
    """The user's module an exported node comes from: its name scope (``/backbone/block1/Add``)
    read back as the deepest module name of the user's backbone it names (a Brevitas layer, not
    its quantisers' inner parts)."""
    parts = node_name.strip("/").split("/")[:-1]
    if parts[:1] == ["backbone"]:
        parts = parts[1:]
    found, path = None, []
    for part in parts:
        path.append(part)
        for candidate in (part, ".".join(path)):
            if candidate in modules:
                found = candidate
        if found is not None and type(modules[found]).__module__.startswith("brevitas."):
            break  # a Brevitas layer: what lies inside it is Brevitas', not the user's
    return found


def _quantiser_of(node_name: str, modules: dict) -> str | None:
    """The user's activation quantiser an exported Quant node belongs to (the outermost
    QuantIdentity, QuantReLU or QuantHardTanh on its name scope), or None."""
    parts = node_name.strip("/").split("/")[:-1]
    if parts[:1] == ["backbone"]:
        parts = parts[1:]
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if name in modules and _is_quantiser(modules[name]):
            return name
    return None


def _add_problem(node, producer: dict, init: dict, modules: dict) -> str | None:
    """What keeps FINN from mapping this Add of two branches: its inputs must both come from one
    shared activation quantiser (FINN then moves the common scale past the add)."""
    from onnx import numpy_helper

    sources = [producer.get(i) for i in node.input]
    names = []
    for src in sources:
        if src is None or src.op_type != "Quant":
            where = _user_module(src.name, modules) if src is not None else None
            names.append(f"{where or 'an unquantised tensor'} (not quantised)")
        else:
            names.append(_quantiser_of(src.name, modules) or "a quantiser")
    scales = [
        numpy_helper.to_array(init[s.input[1]])
        if s is not None and s.op_type == "Quant" and s.input[1] in init
        else None
        for s in sources
    ]
    quantised = all(s is not None and s.op_type == "Quant" for s in sources)
    same_module = quantised and names[0] == names[1] and names[0] != "a quantiser"
    same_scale = quantised and scales[0] is not None and scales[1] is not None and np.array_equal(scales[0], scales[1])
    if same_module or (same_scale and "a quantiser" in names):
        return None
    return f"its inputs come from {names[0]} and {names[1]}"


def _cut_problem(graph, data_nodes: list, tensor: str) -> str | None:
    """A branch crossing the cut at ``tensor`` (an exit): a node after the cut reading a tensor
    computed before it other than ``tensor`` itself. Returns the reading node's name, or None."""
    producer = {o: n for n in data_nodes for o in n.output}
    before, todo = set(), [tensor]
    while todo:
        node = producer.get(todo.pop())
        if node is not None and node.name not in before:
            before.add(node.name)
            todo.extend(node.input)
    made_before = {o for n in data_nodes if n.name in before for o in n.output} - {tensor}
    for node in data_nodes:
        if node.name not in before and set(node.input) & made_before:
            return node.name
    return None


def check_graph(raw, model, exits: list[str]) -> None:
    """The exported custom backbone is what exitflow maps to hardware: a chain of layers, with
    residual adds whose two inputs share one quantiser, cut at the exits where no branch crosses.
    Anything else is one ConfigError line naming the user's module."""
    modules = {n: m for n, m in model.backbone.named_modules() if n}
    graph = raw.graph
    init = {i.name: i for i in graph.initializer}
    live = {graph.input[0].name}
    data_nodes = []
    for node in graph.node:  # ONNX nodes are topologically sorted
        data_in = [i for i in node.input if i in live]
        if not data_in or node.op_type in ("Shape", "Size"):  # a shape is not data (x.view(x.shape[0], -1))
            continue
        live.update(node.output)
        data_nodes.append(node)
    producer = {o: n for n in data_nodes for o in n.output}
    for node in data_nodes:
        if node.op_type not in MAPPED_OPS:
            where = _user_module(node.name, modules)
            what = f" ({type(modules[where]).__name__})" if where else ""
            raise ConfigError(
                f"{where or 'the backbone'}: layer type {node.op_type}{what} cannot be mapped to hardware; exitflow "
                f"maps {MAPPED_LAYERS}"
            )
        if len([i for i in node.input if i in live]) < 2:
            continue
        where = _user_module(node.name, modules)
        owner = f"{type(modules[where]).__name__}.forward" if where else f"{type(model.backbone).__name__}.forward"
        op = _JOINS.get(node.op_type, node.op_type)
        if op != "Add" or len(node.input) != 2:
            raise ConfigError(
                f"{where or 'the backbone'}: the join ({op} of two branches) is not supported: exitflow maps chains of "
                f"layers and residual adds to hardware; remove the branch from {owner}"
            )
        problem = _add_problem(node, producer, init, modules)
        if problem:
            raise ConfigError(
                f"{where or 'the backbone'}: the skip connection (Add of two branches) needs one shared quantiser on "
                f"both inputs, as FINN's residual blocks do, but {problem}; in {owner} apply one QuantIdentity "
                "(the same module) to both branches before the add"
            )
    for name, out in zip(exits, (o.name for o in graph.output), strict=False):
        reader = _cut_problem(graph, data_nodes, out)
        if reader is not None:
            inside = _user_module(reader, modules) or "a later layer"
            raise ConfigError(
                f"model.exits: the exit after {name!r} cuts through a branch ({inside} reads a tensor from before it); "
                "put exits where the whole feature map passes, e.g. after a residual block's output quantiser"
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

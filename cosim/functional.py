"""Bit-accurate functional cosimulation of a built multi-exit design.

:func:`load_built` reads a run folder (``DIR/model.pt``) and its built hardware (``DIR/hw``, from
``exitflow build``) and checks that they belong together and to the design. :func:`run_design`
then executes samples the way the hardware does: stage k's HW graph on the integer stream, head
k's HW graph (ending in the confidence-threshold unit) on the stage's output, and the routing:
a sample whose CTU says "exit" leaves with (exit index, class, confidence code), the others go on
through the gate to stage k+1, with their class when head k+1 uses ``agreement`` (its CTU reads
the class each sample had at head k, as the gate sends it in hardware); the final head takes
every remaining sample.

:func:`expected_results` computes the same three numbers from the Brevitas model and the policy
function (:mod:`exitflow.quant.policies`), exactly as profiling and the design search do, and
:func:`cosimulate` runs one or both engines (:mod:`exitflow.cosim.engines`), compares every
sample and locates each mismatch (sample, stage or head, layer, first differing element).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from exitflow.core.artifacts import BuildSummary, LayerMap, RunDir
from exitflow.core.data import ImageSet, load_splits
from exitflow.core.design import load_design, reads_previous_class
from exitflow.core.errors import ConfigError
from exitflow.core.files import user_path
from exitflow.hw.build import backup_of, is_finished, match_design
from exitflow.hw.finn_flow import read_layers
from exitflow.hw.folding import check_folding
from exitflow.quant import policies

from .engines import FinnEngine, VectorisedEngine, _import_finn_ops, first_difference
from .thresholds import profile_columns

ENGINES = ("vectorised", "finn", "both")
DEFAULT_REFERENCE_SAMPLES = 10
CHUNK = 32  # samples per vectorised batch: large enough for BLAS, small enough for the caches


# ------------------------------------------------------------------------------ the design


@dataclass
class Graph:
    """One built stage or head: its HW graph and what names its layers."""

    name: str  # the design's stage or head name (its folder in DIR/hw)
    kind: str  # "stage" or "head"
    index: int  # k
    model: object  # qonnx ModelWrapper of model_hw.onnx
    layers: dict[str, str]  # FINN node name -> exitflow layer name
    engines: dict[str, object] = field(default_factory=dict)

    def engine(self, name: str):
        if name not in self.engines:
            self.engines[name] = (VectorisedEngine if name == "vectorised" else FinnEngine)(self.model)
        return self.engines[name]

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"


@dataclass
class Built:
    """A run folder, its design and its built hardware, checked to belong together."""

    run_dir: Path
    design_path: Path
    design: object  # exitflow.core.design.Design
    config: object  # RunConfig
    model: object  # a quant.model.MultiExitModel
    exits: list[str]  # the model's exits the design keeps, the final one last
    graphs: list[tuple[Graph, Graph]]  # (stage k, head k)
    ctu: list[object]  # CTUParams of every head
    input_order: Callable[[np.ndarray], np.ndarray]  # NCHW uint8 images -> stage 0's HW input
    # per head: the graph input of its CTU's previous-class stream (agreement after the first
    # kept exit), None where the CTU has none
    class_inputs: list[str | None] = field(default_factory=list)

    def head_inputs(self, k: int, previous: np.ndarray | None) -> dict[str, np.ndarray]:
        """The further inputs of head ``k``'s graph for a batch whose classes at head ``k - 1``
        are ``previous``: none, or that class per sample on its class input."""
        name = self.class_inputs[k] if self.class_inputs else None
        return {} if name is None else {name: np.asarray(previous).reshape(-1, 1)}

    @property
    def names(self) -> list[str]:
        return [head.name for _, head in self.graphs]


def _load_graph(path: Path, fix: str):
    from qonnx.core.modelwrapper import ModelWrapper

    if not path.is_file():
        raise ConfigError(f"{path}: missing; {fix}")
    try:
        return ModelWrapper(str(path))
    except Exception as err:  # onnx raises DecodeError and others for a damaged file
        raise ConfigError(f"{path}: corrupt ONNX file ({type(err).__name__}); {fix}") from None


def _software_nodes(parent, before: bool) -> list:
    """The software nodes of a parent graph before (or after) its dataflow partition."""
    nodes = list(parent.graph.node)
    sdp = [i for i, n in enumerate(nodes) if n.op_type == "StreamingDataflowPartition"]
    if len(sdp) != 1:
        raise ConfigError("parent graph without exactly one dataflow partition")
    return nodes[: sdp[0]] if before else nodes[sdp[0] + 1 :]


def _apply_layout(nodes: list, parent, x: np.ndarray, where: str) -> np.ndarray:
    """Apply the layout-only software nodes (Transpose, Reshape, Flatten; Mul scales skipped) to
    ``x``, a batch with the parent's batch axis first."""
    from onnx import helper

    for node in nodes:
        if node.op_type == "Transpose":
            perm = helper.get_attribute_value(next(a for a in node.attribute if a.name == "perm"))
            x = np.transpose(x, perm)
        elif node.op_type in ("Reshape", "Flatten"):
            shape = parent.get_tensor_shape(node.output[0])
            x = x.reshape(len(x), *shape[1:])
        elif node.op_type not in ("Mul",):
            raise ConfigError(
                f"{where}: software node {node.op_type} ({node.name}) around the HW graph is not "
                "supported by the cosimulation"
            )
    return x


def load_built(run_dir: str | Path, design_path: str | Path | None = None) -> Built:
    """Check and load ``DIR``'s model, the design and ``DIR/hw``; every problem is one
    :class:`ConfigError` line naming the file and the fix."""
    run = RunDir(run_dir)
    run_dir = run.root
    design_path = user_path(design_path) if design_path else run.design
    if not design_path.is_file():
        raise ConfigError(f"{design_path}: design not found; pass --design FILE (a design YAML, see README)")
    design = load_design(design_path)
    # torch, QONNX and FINN, only once the design is known to be good: a mistake there is reported at once
    from qonnx.custom_op.registry import getCustomOp

    from exitflow.quant import checkpoint as ckpt
    from exitflow.quant.export import layer_table

    config, model, _ = ckpt.load_model(run_dir)
    early = match_design(design, config, model, str(design_path))
    exits = model.kept_exits(early)
    hw = run.hw
    rebuild = f"build it with `exitflow build {run_dir} --design {design_path}`"
    if not is_finished(hw):
        if is_finished(backup_of(hw)):
            raise ConfigError(
                f"{hw}: holds an interrupted build; the last finished build waits in {backup_of(hw)}: "
                f"`exitflow cosim {run_dir}` puts it back, or {rebuild}"
            )
        raise ConfigError(f"{hw}: no built hardware; {rebuild}")
    BuildSummary.read(hw, rebuild)  # checked: one line if damaged or foreign
    _import_finn_ops()
    stage_layers, head_layers = layer_table(model, exits)
    for k, stage in enumerate(design.stages):  # the design's folding must be one FINN could build
        check_folding(f"{design_path}: stages[{k}].folding", stage.folding, stage_layers[k], f"stage {stage.name!r}")
        check_folding(
            f"{design_path}: stages[{k}].head.folding", stage.head.folding, head_layers[k], f"head {stage.head.name!r}"
        )
    graphs, ctu, class_inputs = [], [], []
    for k, stage in enumerate(design.stages):
        pair = []
        for kind, name, layers in (("stage", stage.name, stage_layers[k]), ("head", stage.head.name, head_layers[k])):
            folder = hw / name
            graph = _load_graph(folder / "model_hw.onnx", rebuild)
            built_layers = read_layers(folder / LayerMap.FILE, rebuild)  # checked: one line if damaged
            wanted = [layer.name for layer in layers]
            if list(built_layers) != wanted:
                raise ConfigError(
                    f"{folder}: built with the layers {list(built_layers)}, the design's {kind} {name!r} "
                    f"has {wanted}; the hardware is from another design: {rebuild}"
                )
            pair.append(Graph(name, kind, k, graph, {node: layer for layer, node in built_layers.items()}))
        head_graph = pair[1].model
        last = head_graph.graph.node[-1]
        if not last.op_type.startswith("ConfidenceThreshold"):
            raise ConfigError(
                f"{hw / stage.head.name}: the head does not end in the confidence-threshold unit; {rebuild}"
            )
        params = getCustomOp(last).params()
        if (params.policy, params.threshold) != (stage.head.policy, stage.head.threshold):
            raise ConfigError(
                f"{hw / stage.head.name}: built with policy {params.policy} at threshold {params.threshold}, "
                f"the design "
                f"says {stage.head.policy} at {stage.head.threshold}; the hardware is from another design: {rebuild}"
            )
        wanted = reads_previous_class(design, k)
        if params.class_input != wanted or len(head_graph.graph.input) != 1 + wanted:
            raise ConfigError(
                f"{hw / stage.head.name}: its CTU was built {'with' if params.class_input else 'without'} the previous "
                f"exit's class as an input, which the design's {stage.head.policy} head at kept exit {k} "
                f"{'needs' if wanted else 'does not take'}; the hardware is from another design: {rebuild}"
            )
        graphs.append(tuple(pair))
        ctu.append(params)
        class_inputs.append(head_graph.graph.input[1].name if wanted else None)
    _check_streams(hw, graphs)
    parent = _load_graph(hw / design.stages[0].name / "parent.onnx", rebuild)
    before = _software_nodes(parent, before=True)
    first = graphs[0][0].model
    shape = tuple(first.get_tensor_shape(first.graph.input[0].name))

    def input_order(x: np.ndarray) -> np.ndarray:
        return _apply_layout(before, parent, x, str(hw / design.stages[0].name)).reshape(len(x), *shape[1:])

    return Built(run_dir, design_path, design, config, model, exits, graphs, ctu, input_order, class_inputs)


def _check_streams(hw: Path, graphs: list[tuple[Graph, Graph]]) -> None:
    """Every stage's integer output is what its head and the next stage take, element for
    element: same datatype, and the software layout changes between them cancel out."""
    for k, (stage, head) in enumerate(graphs):
        consumers = [head] + ([graphs[k + 1][0]] if k + 1 < len(graphs) else [])
        out = stage.model.graph.output[0].name
        out_shape = stage.model.get_tensor_shape(out)
        producer_parent = _load_graph(hw / stage.name / "parent.onnx", "rebuild the design with `exitflow build`")
        after = _software_nodes(producer_parent, before=False)
        for consumer in consumers:
            name = consumer.model.graph.input[0].name
            dt_in, dt_out = consumer.model.get_tensor_datatype(name), stage.model.get_tensor_datatype(out)
            if dt_in != dt_out:
                raise ConfigError(
                    f"{hw / consumer.name}: takes {dt_in.name} but {stage.name} produces {dt_out.name}; "
                    "rebuild the design"
                )
            consumer_parent = _load_graph(
                hw / consumer.name / "parent.onnx", "rebuild the design with `exitflow build`"
            )
            probe = np.arange(int(np.prod(out_shape))).reshape(out_shape)
            moved = _apply_layout(after, producer_parent, probe, str(hw / stage.name))
            moved = _apply_layout(
                _software_nodes(consumer_parent, before=True), consumer_parent, moved, str(hw / consumer.name)
            )
            if not np.array_equal(moved.reshape(-1), probe.reshape(-1)):
                raise ConfigError(
                    f"{hw / consumer.name}: its input layout differs from {stage.name}'s output layout; "
                    "rebuild the design"
                )


# ------------------------------------------------------------------------------ running


@dataclass
class Results:
    """Per sample: the exit it took, its class and its confidence code."""

    exit: np.ndarray
    cls: np.ndarray
    code: np.ndarray

    @classmethod
    def empty(cls, n: int) -> Results:
        return cls(np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int64))

    def differs(self, other: Results) -> np.ndarray:
        return (self.exit != other.exit) | (self.cls != other.cls) | (self.code != other.code)


def run_design(
    built: Built, images: np.ndarray, engine: str = "vectorised", progress: Callable[[int], None] | None = None
) -> Results:
    """Execute uint8 images (N, C, H, W) through the design's HW graphs with one engine."""
    n = len(images)
    out = Results.empty(n)
    chunk = CHUNK if engine == "vectorised" else 1
    for start in range(0, n, chunk):
        index = np.arange(start, min(start + chunk, n))
        h = built.input_order(images[index])
        previous = None  # the class at the previous kept exit of each sample still going
        for k, ((stage, head), params) in enumerate(zip(built.graphs, built.ctu, strict=False)):
            h, _ = stage.engine(engine).run(h)
            records, _ = head.engine(engine).run(h, extra=built.head_inputs(k, previous))
            decision = params.unpack(records.reshape(-1))
            leave = decision.exit if k < len(built.graphs) - 1 else np.ones(len(index), dtype=bool)
            out.exit[index[leave]] = k
            out.cls[index[leave]] = decision.cls[leave]
            out.code[index[leave]] = decision.code[leave]
            index, h, previous = index[~leave], h[~leave], decision.cls[~leave]
            if not len(index):
                break
        if progress:
            progress(min(chunk, n - start))
    return out


def model_logits(built: Built, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(integer logits (N, exits, classes), scales, logit bit widths) of the Brevitas model at the
    design's exits, as profiling computes them."""
    # torch: running the Brevitas model
    from exitflow.quant.profile import run_exits

    data = ImageSet("cosim", images, np.zeros(len(images), dtype=np.int64), built.model.num_classes)
    prof, scales, bits = run_exits(built.model, data)
    keep = [built.model.exit_names.index(e) for e in built.exits]
    return prof.logits[:, keep], scales[keep], bits[keep]


def expected_results(built: Built, logits: np.ndarray, scales: np.ndarray, bits: np.ndarray) -> Results:
    """The Brevitas model + the policy function: per sample the first exit whose policy says
    exit (the final one otherwise; an agreement exit compares with the class at the kept exit
    before it), with that exit's class and confidence code."""
    n = len(logits)
    out = Results.empty(n)
    heads = [stage.head for stage in built.design.stages]
    cls, code = np.empty((n, len(heads)), dtype=np.int64), np.empty((n, len(heads)), dtype=np.int64)
    for k, head in enumerate(heads):
        cls[:, k], code[:, k] = policies.confidence_code(head.policy, logits[:, k], float(scales[k]), int(bits[k]))
    early = heads[:-1]
    constants = [policies.threshold_code(h.policy, h.threshold, scales[k]) for k, h in enumerate(early)]
    out.exit[:] = policies.route([h.policy for h in early], code, constants, cls)
    rows = np.arange(n)
    out.cls[:], out.code[:] = cls[rows, out.exit], code[rows, out.exit]
    return out


# ------------------------------------------------------------------------------ mismatches


@dataclass(frozen=True)
class Mismatch:
    """One sample on which an engine disagrees with the model or with the other engine."""

    sample: int  # index in the test split
    engine: str  # the engine whose result differs
    against: str  # "model" (Brevitas + policy) or "finn" (the reference engine)
    expected: dict  # exit, class, code
    got: dict
    graph: str | None = None  # "stage NAME" or "head NAME" where the first difference is
    node: str | None = None  # FINN node name
    layer: str | None = None  # exitflow layer name (block, hidden, classifier)
    element: list | None = None  # index of the first differing element, channels last
    element_expected: int | None = None
    element_got: int | None = None

    def describe(self) -> str:
        what = "the Brevitas model + policy" if self.against == "model" else "FINN's execution"
        text = (
            f"sample {self.sample}: the {self.engine} engine gives (exit, class, code) = "
            f"({self.got['exit']}, {self.got['class']}, {self.got['code']}), {what} "
            f"({self.expected['exit']}, {self.expected['class']}, {self.expected['code']})"
        )
        if self.graph:
            where = ", ".join(
                p
                for p in (self.graph, self.layer and f"layer {self.layer}", self.node and f"FINN node {self.node}")
                if p
            )
            text += f"; first difference in {where}"
            if self.element is not None:
                text += f", element {self.element}: expected {self.element_expected}, got {self.element_got}"
        return text


def _triple(r: Results, i: int) -> dict:
    return {"exit": int(r.exit[i]), "class": int(r.cls[i]), "code": int(r.code[i])}


def _path(built: Built, exit_index: int) -> list[Graph]:
    return [g for pair in built.graphs[: exit_index + 1] for g in pair]


def _trace(built: Built, image: np.ndarray, engine: str, upto: int) -> dict[str, dict[str, np.ndarray]]:
    """Every intermediate tensor of one sample through stages and heads 0..upto, per graph."""
    h = built.input_order(image[None])
    tensors = {}
    previous = None
    for k, ((stage, head), params) in enumerate(zip(built.graphs[: upto + 1], built.ctu, strict=False)):
        h_next, tensors[stage.name] = stage.engine(engine).run(h, keep=True)
        records, tensors[head.name] = head.engine(engine).run(h_next, keep=True, extra=built.head_inputs(k, previous))
        h, previous = h_next, params.unpack(records.reshape(-1)).cls
    return tensors


def _layer_outputs(built: Built, image: np.ndarray) -> dict[tuple[int, str, str], np.ndarray]:
    """Brevitas integer outputs of every weight layer's activation (the classifier's logits for a
    head), channels last, keyed by (k, kind, layer name). Built-in backbones only."""
    import torch

    # torch: the Brevitas model's layer outputs
    from exitflow.quant.profile import reference_model
    from exitflow.quant.train import to_input

    model = built.model
    if model.stages_cut_from_whole:  # its stages do not run on their own (no stage_modules)
        return {}
    hooks, found = [], {}

    def grab(key):
        def hook(module, inputs, output):  # the first call: a block's quantiser runs again at a boundary
            found.setdefault(key, np.asarray(output.int().detach().numpy(), dtype=np.int64))

        return hook

    stages = model.stage_modules(built.exits[:-1])
    prev = 0
    for k, exit_name in enumerate(built.exits):
        end = model.block_names.index(exit_name) + 1
        for block in model.block_names[prev:end]:
            hooks.append(model.blocks[block].act.register_forward_hook(grab((k, "stage", block))))
        prev = end
        head = model.heads[exit_name]
        if hasattr(head, "hidden_act"):
            hooks.append(head.hidden_act.register_forward_hook(grab((k, "head", "hidden"))))
        hooks.append(head.classifier.register_forward_hook(grab((k, "head", "classifier"))))
    try:
        with torch.no_grad(), reference_model(model):  # what profiling and the cosimulation compare with
            x = to_input(image[None], torch.float64)
            for stage, head in stages:
                x = stage(x)
                head(x)
                x = x.value if hasattr(x, "value") else x
    finally:
        for hook in hooks:
            hook.remove()
    return {key: (np.moveaxis(v, 1, -1) if v.ndim == 4 else v) for key, v in found.items()}


def locate(
    built: Built,
    images: np.ndarray,
    sample: int,
    index: int,
    engine: str,
    against: str,
    expected: Results,
    got: Results,
) -> Mismatch:
    """Find where one mismatching sample first differs: between the two engines, every
    intermediate tensor of every graph on the sample's path; against the model, every weight
    layer's integer output (built-in backbones), then the head's integer logits."""
    upto = max(int(expected.exit[index]), int(got.exit[index]))
    base = dict(
        sample=sample, engine=engine, against=against, expected=_triple(expected, index), got=_triple(got, index)
    )
    image = images[index]
    if against != "model":
        reference, candidate = _trace(built, image, against, upto), _trace(built, image, engine, upto)
        for graph in _path(built, upto):
            order = [n.name for n in graph.model.graph.node]
            diff = first_difference(reference[graph.name], candidate[graph.name], order)
            if diff:
                return Mismatch(
                    **base,
                    graph=graph.label,
                    node=diff.node,
                    layer=graph.layers.get(diff.node),
                    element=list(diff.index),
                    element_expected=diff.expected,
                    element_got=diff.got,
                )
        return Mismatch(**base)
    trace = _trace(built, image, engine, upto)
    golden = _layer_outputs(built, image)
    for graph in _path(built, upto):
        for node, layer in graph.layers.items():
            want = golden.get((graph.index, graph.kind, layer))
            have = trace[graph.name].get(node)
            if want is None or have is None or want.size != have.size:
                continue
            want = want.reshape(have.shape)
            if not np.array_equal(want, have):
                where = tuple(int(i) for i in np.argwhere(want != have)[0])
                return Mismatch(
                    **base,
                    graph=graph.label,
                    node=node,
                    layer=layer,
                    element=list(where[1:]),
                    element_expected=int(want[where]),
                    element_got=int(have[where]),
                )
    logits, _, _ = model_logits(built, image[None])
    for k, (_, head) in enumerate(built.graphs[: upto + 1]):
        ctu_input = head.model.graph.node[-1].input[0]
        producer = head.model.find_producer(ctu_input)
        have = trace[head.name][producer.name].reshape(-1)
        want = logits[0, k]
        if not np.array_equal(want, have):
            j = int(np.argwhere(want != have)[0][0])
            return Mismatch(
                **base,
                graph=head.label,
                node=producer.name,
                layer=head.layers.get(producer.name),
                element=[j],
                element_expected=int(want[j]),
                element_got=int(have[j]),
            )
    # the logits agree: the difference is in the decision itself
    head = built.graphs[min(int(expected.exit[index]), int(got.exit[index]))][1]
    return Mismatch(**base, graph=head.label, node=head.model.graph.node[-1].name, layer="confidence-threshold unit")


# ------------------------------------------------------------------------------ the report


@dataclass
class EngineRun:
    name: str
    samples: int
    seconds: float
    matches_model: int  # samples equal to the Brevitas model + policy
    results: Results = field(repr=False)

    @property
    def images_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class CosimReport:
    run_dir: str
    design: str
    exits: list[str]
    samples: int
    engines: list[EngineRun]
    engines_compared: int  # samples both engines ran
    mismatches: list[Mismatch]
    mismatch_count: int  # all of them; ``mismatches`` holds the first few, located
    measured_fractions: list[float]
    model_fractions: list[float]
    predicted_fractions: list[float] | None  # from DIR/profile.npz (the whole test split)
    prediction_note: str

    @property
    def bit_exact(self) -> bool:
        return self.mismatch_count == 0

    def to_data(self) -> dict:
        return {
            "run_dir": self.run_dir,
            "design": self.design,
            "exits": self.exits,
            "samples": self.samples,
            "bit_exact": self.bit_exact,
            "engines": {
                e.name: {
                    "samples": e.samples,
                    "seconds": round(e.seconds, 4),
                    "images_per_s": round(e.images_per_s, 2),
                    "matches_model": e.matches_model,
                }
                for e in self.engines
            },
            "engines_compared": self.engines_compared,
            "mismatch_count": self.mismatch_count,
            "mismatches": [{**asdict(m), "description": m.describe()} for m in self.mismatches],
            "exit_fractions": {
                "measured": self.measured_fractions,
                "model": self.model_fractions,
                "predicted": self.predicted_fractions,
                "predicted_from": self.prediction_note,
            },
        }

    def summary(self) -> str:
        engines = ", ".join(f"{e.name} {e.samples} samples ({e.images_per_s:,.0f}/s)" for e in self.engines)
        verdict = "bit-exact" if self.bit_exact else f"{self.mismatch_count} MISMATCHES"
        return f"{verdict}: {engines}; exit fractions measured {self.measured_fractions}"


def _fractions(exits: np.ndarray, count: int) -> list[float]:
    return (np.bincount(exits, minlength=count) / max(1, len(exits))).round(6).tolist()


def predicted_fractions(built: Built) -> tuple[list[float] | None, str]:
    """Exit fractions at the design's thresholds from DIR/profile.npz (the test split), as the
    design search predicted them."""
    # torch at import (quant.profile): cosim refuses bad input before it
    from exitflow.quant.profile import load_profile

    path = RunDir(built.run_dir).profile
    if not path.is_file():
        return None, f"no {path} (run `exitflow profile {built.run_dir}` for the prediction)"
    npz = load_profile(built.run_dir)  # checked: one line for a damaged or foreign file
    names = [str(n) for n in npz["exit_names"]]
    if names != list(built.model.exit_names):
        raise ConfigError(
            f"{path}: profiled exits {names} are not the model's {list(built.model.exit_names)}; "
            f"run `exitflow profile {built.run_dir}` again"
        )
    codes, classes, _, columns = profile_columns(npz, built.design, "test", str(path))
    early = [stage.head for stage in built.design.stages[:-1]]
    constants = [
        policies.threshold_code(h.policy, h.threshold, float(npz["scales"][j]))
        for h, j in zip(early, columns, strict=True)
    ]
    # the final exit's column is never read: every sample left over takes it
    codes = np.concatenate([codes, np.zeros((len(codes), 1), dtype=codes.dtype)], axis=1)
    taken = policies.route([h.policy for h in early], codes, constants, classes)
    return _fractions(taken, len(built.exits)), f"{path} (test split, {len(taken)} samples)"


def cosimulate(
    run_dir: str | Path,
    design: str | Path | None = None,
    samples: int | None = None,
    engine: str = "both",
    reference_samples: int = DEFAULT_REFERENCE_SAMPLES,
    progress: Callable[[int], None] | None = None,
    max_located: int = 20,
) -> CosimReport:
    """Cosimulate the first ``samples`` test samples (all by default) of the design built in
    ``run_dir``. ``engine``: "vectorised" (all samples), "finn" (FINN's reference, all samples:
    slow) or "both" (vectorised on all, FINN on the first ``reference_samples``)."""
    if engine not in ENGINES:
        raise ConfigError(f"engine: {engine!r} is not one of {', '.join(ENGINES)}")
    built = load_built(run_dir, design)
    predicted, note = predicted_fractions(built)  # first: a damaged profile.npz is refused before any work
    test = load_splits(built.config.data).test
    total = len(test)
    if samples is None:
        samples = total
    if not 1 <= samples <= total:
        raise ConfigError(f"--samples: {samples} is not in 1..{total}, the size of the test split")
    if engine == "both" and reference_samples < 1:
        raise ConfigError(f"reference samples: {reference_samples} must be >= 1")
    images = test.x[:samples]
    logits, scales, bits = model_logits(built, images)
    expected = expected_results(built, logits, scales, bits)
    plan = {
        "vectorised": [("vectorised", samples)],
        "finn": [("finn", samples)],
        "both": [("vectorised", samples), ("finn", min(reference_samples, samples))],
    }[engine]
    runs: list[EngineRun] = []
    mismatches: list[tuple[int, str, str, Results, Results]] = []
    for name, count in plan:
        for pair in built.graphs:  # built before the clock starts: reading weights is not execution
            for graph in pair:
                graph.engine(name)
        start = time.perf_counter()
        got = run_design(built, images[:count], name, progress)
        seconds = time.perf_counter() - start
        want = expected.__class__(expected.exit[:count], expected.cls[:count], expected.code[:count])
        bad = np.flatnonzero(got.differs(want))
        runs.append(EngineRun(name, count, seconds, int(count - len(bad)), got))
        mismatches += [(int(i), name, "model", want, got) for i in bad]
    compared = 0
    if len(runs) == 2:
        vec, ref = runs
        compared = ref.samples
        head = Results(vec.results.exit[:compared], vec.results.cls[:compared], vec.results.code[:compared])
        mismatches += [
            (int(i), "vectorised", "finn", ref.results, head) for i in np.flatnonzero(head.differs(ref.results))
        ]
    located = [
        locate(built, images, i, i, name, against, want, got)
        for i, name, against, want, got in mismatches[:max_located]
    ]
    measured = runs[0].results.exit
    return CosimReport(
        run_dir=str(built.run_dir),
        design=str(built.design_path),
        exits=built.names,
        samples=samples,
        engines=runs,
        engines_compared=compared,
        mismatches=located,
        mismatch_count=len(mismatches),
        measured_fractions=_fractions(measured, len(built.exits)),
        model_fractions=_fractions(expected.exit, len(built.exits)),
        predicted_fractions=predicted,
        prediction_note=note,
    )


def assert_bit_exact(
    run_dir: str | Path,
    design: str | Path | None = None,
    samples: int | None = None,
    engine: str = "vectorised",
    reference_samples: int = DEFAULT_REFERENCE_SAMPLES,
) -> CosimReport:
    """Assert that the design built in ``run_dir`` cosimulates bit-exactly against the Brevitas
    model and the policy function (and, with ``engine="both"``, against FINN's own execution)
    on the first ``samples`` test samples. Raises AssertionError describing the mismatches."""
    report = cosimulate(run_dir, design, samples, engine, reference_samples)
    if not report.bit_exact:
        lines = [m.describe() for m in report.mismatches[:5]]
        more = report.mismatch_count - len(lines)
        raise AssertionError(
            f"{report.mismatch_count} of {report.samples} samples do not cosimulate bit-exactly:\n  "
            + "\n  ".join(lines)
            + (f"\n  ... and {more} more" if more > 0 else "")
        )
    return report

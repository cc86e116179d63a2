"""FINN's folding rules, the pooling and window-generator folds, and the record FIFO sizing: the one
definition of each. The build (:mod:`exitflow.hw.build`, :mod:`exitflow.hw.finn_flow`) applies
them; the design search (:mod:`exitflow.dse`) and the cycle simulation (:mod:`exitflow.cosim.cycle`)
model them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from exitflow.core.artifacts import WeightLayer
from exitflow.core.errors import ConfigError

ID_BITS = 16  # the sample id in every exit record (the block design and the search size records with it)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def folding_violation(
    name: str,
    pe: int,
    simd: int,
    mw: int,
    mh: int,
    cin: int | None = None,
    wbits: int | None = None,
    depthwise: bool = False,
) -> tuple[str, str] | None:
    """The first of FINN's folding rules (PE, SIMD) breaks for a layer of MW inputs and MH
    outputs, as (key suffix, message), or None when FINN can build it. The one definition of the
    rules: `exitflow build` reports them, the design search enumerates what passes them. (A
    convolution's window generator takes its own SIMD, a divisor of ``cin``, with a width
    converter to the MVAU, so ``cin`` adds no rule.) A depthwise layer (VVAU; ``mw`` = k*k, ``mh``
    = channels) folds its channels by PE and its window by SIMD: 1, or the whole k*k window,
    which FINN's depthwise window generator then delivers in its parallel-window mode."""
    if depthwise:
        if mh % pe:
            return ".pe", (
                f"{pe} does not divide the {mh} channels of {name} (FINN's VVAU needs Channels % PE == 0); "
                f"legal PE: {', '.join(map(str, divisors(mh)))}"
            )
        if simd not in (1, mw):
            return ".simd", (
                f"{simd} is neither 1 nor the {mw} weights of {name}'s window (a depthwise layer takes its window "
                f"one weight or all {mw} per cycle); legal SIMD: 1, {mw}"
            )
        return None
    if mh % pe:
        return ".pe", (
            f"{pe} does not divide the {mh} outputs of {name} (FINN needs MH % PE == 0); "
            f"legal PE: {', '.join(map(str, divisors(mh)))}"
        )
    if mw % simd:
        return ".simd", (
            f"{simd} does not divide the {mw} inputs of {name} (FINN needs MW % SIMD == 0); "
            f"legal SIMD: {', '.join(map(str, divisors(mw)))}"
        )
    if wbits is not None and pe * simd * wbits > 8191:
        return "", (
            f"PE x SIMD x weight bits = {pe} x {simd} x {wbits} = {pe * simd * wbits} exceeds 8191, "
            "the widest ap_int FINN's HLS MVAU can use"
        )
    if simd * 1024 < mw:
        return ".simd", (
            f"{simd} is below MW/1024 = {mw / 1024:g} for {name} "
            "(FINN's HLS MVAU code generation needs SIMD >= MW/1024)"
        )
    return None


def check_folding(where: str, folding, layers: Sequence[WeightLayer], owner: str) -> None:
    """FINN's folding rules (:func:`folding_violation`), checked before FINN runs; errors name the
    layer and the rule."""
    by_name = {layer.name: layer for layer in layers}
    for name, fold in folding.items():
        if name not in by_name:
            raise ConfigError(
                f"{where}.{name}: no weight layer {name!r} in {owner} (layers: {', '.join(by_name) or 'none'})"
            )
        layer = by_name[name]
        problem = folding_violation(
            name, fold.pe, fold.simd, layer.mw, layer.mh, layer.cin, layer.wbits, bool(layer.depthwise)
        )
        if problem:
            raise ConfigError(f"{where}.{name}{problem[0]}: {problem[1]}")


def pick_pool(cycles: np.ndarray, limit) -> np.ndarray:
    """The fold a pooling unit takes: the narrowest (options ascending) whose cycles are at most
    ``limit``, the cycles of the MVAU governing it (:func:`pool_units`); the widest when none is.
    One definition: the build applies it, the search models it."""
    limit = np.asarray(limit, dtype=np.float64)
    fits = np.asarray(cycles, dtype=np.float64) <= limit[..., None]
    return np.where(fits.any(axis=-1), fits.argmax(axis=-1), len(cycles) - 1)


def pool_units(model) -> list[tuple]:
    """(window generator, Pool node, governing MVAU node, the pool's stream leaves the graph) for
    every Pool fed by a window generator. The governing MVAU is the nearest one upstream (the
    convolution whose output the pool reduces) or, for a pool at the graph's input (an exit
    head), the nearest one downstream; None when the graph has no MVAU on that path (the pool
    then keeps the folding it was built with)."""
    out = []
    for pool in model.graph.node:
        if not pool.op_type.startswith("Pool"):
            continue
        swg = model.find_producer(pool.input[0])
        if swg is None or not swg.op_type.startswith("ConvolutionInputGenerator"):
            continue
        governor = model.find_producer(swg.input[0])
        while governor is not None and not governor.op_type.startswith("MVAU"):
            governor = model.find_producer(governor.input[0])
        ends = model.find_consumer(pool.output[0]) is None
        if governor is None:
            governor = model.find_consumer(pool.output[0])
            while governor is not None and not governor.op_type.startswith("MVAU"):
                governor = model.find_consumer(governor.output[0])
        out.append((swg, pool, governor, ends))
    return out


def _pool_folds(pool_inst) -> list[int]:
    channels = pool_inst.get_nodeattr("Channels")
    return [d for d in range(1, channels + 1) if channels % d == 0]


def _set_pool_fold(swg_inst, pool_inst, d: int) -> None:
    swg_inst.set_nodeattr("SIMD", d)
    pool_inst.set_nodeattr("PE", d)


def scratch_op(node, attrs: dict | None = None):
    """FINN's op for a copy of ``node`` with ``attrs`` set: what FINN would estimate for a fold,
    asked without touching the graph (the graph gets its folding through ApplyConfig)."""
    from onnx import NodeProto
    from qonnx.custom_op.registry import getCustomOp

    copy = NodeProto()
    copy.CopyFrom(node)
    inst = getCustomOp(copy)
    for name, value in (attrs or {}).items():
        inst.set_nodeattr(name, value)
    return inst


def pool_folding(model, config: dict, buffer_styles: dict | None = None) -> dict:
    """The folding of every pooling unit with a governing MVAU, by :func:`pick_pool` (the build's
    step), as FINN folding-config entries {node name: {attribute: value}}: its window generator's
    SIMD and the Pool's PE, the generator's line buffer in the governing layer's style
    (``buffer_styles``: MVAU node name -> a :data:`BUFFER_STYLES` entry; default: as built).
    ``config`` holds the folding of the MVAUs (node name -> attributes), whose cycles govern."""
    out = {}
    for swg, pool, governor, _ in pool_units(model):
        if governor is None:
            continue
        entry = {}
        if buffer_styles and governor.name in buffer_styles:
            entry["ram_style"] = buffer_styles[governor.name]
        folds = _pool_folds(scratch_op(pool))
        cycles = [
            max(scratch_op(swg, {**entry, "SIMD": d}).get_exp_cycles(), scratch_op(pool, {"PE": d}).get_exp_cycles())
            for d in folds
        ]
        limit = scratch_op(governor, config.get(governor.name)).get_exp_cycles()
        d = folds[int(pick_pool(np.array(cycles), limit))]
        out[swg.name] = {**entry, "SIMD": d}
        out[pool.name] = {"PE": d}
    return out


#: Stream units whose fold follows a weight layer, and the attribute that folds them: the fork
#: and the add of a residual block, a threshold unit of its own (a skip branch's quantiser, the
#: activation after an add), global accumulation pooling and the padding before a window generator.
STREAM_UNITS = {
    "DuplicateStreams": "PE",
    "ElementwiseAdd": "PE",
    "Thresholding": "PE",
    "GlobalAccPool": "PE",
    "FMPadding": "SIMD",
}
WEIGHT_OPS = ("MVAU", "VVAU")


def generic_op(op_type: str) -> str:
    """``MVAU_hls`` -> ``MVAU``: the layer a specialised FINN node implements."""
    for suffix in ("_hls", "_rtl"):
        if op_type.endswith(suffix):
            return op_type[: -len(suffix)]
    return op_type


def _nearest_weight_node(model, node):
    """The weight layer (MVAU, VVAU) a stream unit keeps up with: the nearest one in the graph,
    counting hops along streams in either direction (upstream first at equal distance); None
    when the graph has none."""
    seen, frontier = {node.name}, [node]
    while frontier:
        step = []
        for current in frontier:
            neighbours = [model.find_producer(t) for t in current.input]
            neighbours += [c for t in current.output for c in model.find_consumers(t) or []]
            for n in neighbours:
                if n is None or n.name in seen:
                    continue
                if n.op_type.startswith(WEIGHT_OPS):
                    return n
                seen.add(n.name)
                step.append(n)
        frontier = step
    return None


def stream_units(model) -> list[tuple]:
    """(node, folding attribute, governing weight node) for every :data:`STREAM_UNITS` node; the
    governor as :func:`_nearest_weight_node` finds it (None: the unit keeps its built fold)."""
    return [
        (node, STREAM_UNITS[generic_op(node.op_type)], _nearest_weight_node(model, node))
        for node in model.graph.node
        if generic_op(node.op_type) in STREAM_UNITS
    ]


def stream_folds(inst) -> list[int]:
    """The folds of a stream unit: the divisors of its channels (the last axis of its stream)."""
    channels = int(inst.get_normal_output_shape()[-1])
    return divisors(channels)


def stream_folding(model, config: dict) -> dict:
    """The fold of every stream unit with a governing weight layer, by :func:`pick_pool` (the
    narrowest that keeps up with the governor at its folding in ``config``), as FINN folding-config
    entries. One definition: the build applies it, the search models it (``exitflow.dse.finn_model``)."""
    out = {}
    for node, attr, governor in stream_units(model):
        if governor is None:
            continue
        folds = stream_folds(scratch_op(node))
        cycles = [scratch_op(node, {attr: d}).get_exp_cycles() for d in folds]
        limit = scratch_op(governor, config.get(governor.name)).get_exp_cycles()
        out[node.name] = {attr: folds[int(pick_pool(np.array(cycles), limit))]}
    return out


def _window_attrs(inst) -> dict:
    if inst.get_nodeattr("depthwise"):
        raise NotImplementedError(f"{inst.onnx_node.name}: depthwise window generators are not modelled")
    if inst.get_nodeattr("ram_style") == "ultra":
        raise NotImplementedError(f"{inst.onnx_node.name}: URAM line buffers are not modelled")
    return {
        "node": inst.onnx_node.name,
        "ifm_ch": inst.get_nodeattr("IFMChannels"),
        "k": list(inst.get_nodeattr("ConvKernelDim")),
        "ifm": list(inst.get_nodeattr("IFMDim")),
        "ofm": list(inst.get_nodeattr("OFMDim")),
        "stride": list(inst.get_nodeattr("Stride")),
        "dilation": list(inst.get_nodeattr("Dilation")),
        "in_bits": inst.get_input_datatype().bitwidth(),
        "ram_style": inst.get_nodeattr("ram_style"),
    }


def _window_cycles(w: dict, simd: np.ndarray, parallel: np.ndarray) -> np.ndarray:
    """FINN's ``get_exp_cycles`` of the generator (default or parallel implementation)."""
    (k_h, k_w), (h, wd), (oh, ow) = w["k"], w["ifm"], w["ofm"]
    s_w, (d_h, d_w) = w["stride"][1], w["dilation"]
    cf = (w["ifm_ch"] // simd).astype(np.int64)
    buffer_min = ((k_h - 1) * d_h * wd + (k_w - 1) * d_w + 1) * cf
    default = buffer_min + oh * np.maximum(ow * k_w * k_h * cf, s_w * wd * cf)
    return np.where(parallel, h * wd * cf + 2, default)


def window_fold(w: dict, mvau_cycles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the generator's SIMD, its ``parallel_window`` flag) for an MVAU taking ``mvau_cycles``
    per sample: the smallest SIMD (a divisor of the input channels) at which the generator keeps
    up with the MVAU; when even SIMD = channels does not, FINN's parallel-window mode (a whole
    k x k x channels window per cycle). A width converter joins the two where their streams
    differ, as FINN's InsertDWC does. A 1x1 kernel always runs FINN's parallel implementation
    (``select_impl_style``) and has no window mode. One definition: the build applies it, the
    search models it."""
    k_h, k_w = w["k"]
    pointwise = k_h * k_w == 1
    mvau_cycles = np.asarray(mvau_cycles, dtype=np.float64)
    simd = np.full(mvau_cycles.shape, w["ifm_ch"], dtype=np.int64)
    wide = np.full(mvau_cycles.shape, not pointwise)
    for d in sorted((d for d in range(1, w["ifm_ch"] + 1) if w["ifm_ch"] % d == 0), reverse=True):
        d_arr = np.full(mvau_cycles.shape, d, dtype=np.int64)
        fits = _window_cycles(w, d_arr, np.full(mvau_cycles.shape, pointwise)) <= mvau_cycles
        simd = np.where(fits, d, simd)
        wide = np.where(fits, False, wide)
    return simd, wide


def stream_words(node) -> int:
    """Stream words per feature map out of a FINN layer (``node``: its custom op): its folded output
    shape without the last axis, the values of one word (the PE / SIMD fold)."""
    return int(np.prod(node.get_folded_output_shape()[:-1]))


def record_fifo_depth(design) -> int:
    """Records each CTU -> gate and exit -> merge stream holds in the block design: an AXI-stream
    FIFO at least as deep as the deepest gate (a gate waiting for the next stage stops reading
    records; with only a stream register in between, the head then stalls the duplicate before
    the gate's feature-map FIFO is full, and depth beyond the head's own storage buys nothing:
    found by the cycle simulation), and 16 at least (``axis_data_fifo``'s minimum). The cycle
    simulation (``exitflow.cosim.cycle``) uses the same depth."""
    return record_fifo_for(max([stage.gate_depth or 1 for stage in design.stages]))


def record_fifo_for(deepest_gate: int) -> int:
    """:func:`record_fifo_depth` for a design whose deepest gate holds ``deepest_gate`` feature maps."""
    return 1 << max(4, (max(1, deepest_gate) - 1).bit_length())

"""FINN's resource and cycle estimates, vectorised over foldings.

The design search evaluates many foldings at once; calling FINN's per-node estimators for each
would be slow. :func:`inventory` reads a built graph (``DIR/hw/<name>/model_hw.onnx``) once and
keeps what stays fixed while the folding changes: for every weight layer (MVAU) and the sliding
window generator that feeds it (its SIMD follows the MVAU's), the attributes FINN's formulas
use; for every other node, FINN's own numbers. :func:`layer_costs` then evaluates FINN's formulas
(finn-plus 1.6.1: ``MVAU.bram_estimation``/``uram_estimation``/``get_exp_cycles``,
``MVAU_hls.lut_estimation``/``dsp_estimation``, ``MVAU_rtl.dsp_estimation``,
``ConvolutionInputGenerator_rtl`` in its default and parallel implementations) on arrays of PE and SIMD.
``tests/dse/test_finn_model.py`` checks equality with FINN on random legal foldings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exitflow.core.design import BUFFER_STYLES
from exitflow.core.resources import NAMES, Resources
from exitflow.hls_templates.registry import register_finn_ops
from exitflow.hw.folding import (
    WEIGHT_OPS,
    _pool_folds,
    _set_pool_fold,
    _window_attrs,
    _window_cycles,
    divisors,
    folding_violation,
    pool_units,
    scratch_op,
    stream_folds,
    stream_units,
    window_fold,
)

#: Nodes that only pass a stream on: an edge between units looks through them (a FIFO's own
#: cost is FINN's estimate at its built depth, a fixed node).
PASSING = ("StreamingDataWidthConverter", "StreamingFIFO")

# BUFFER_STYLES (exitflow.core.design): a search variable of every layer with a window generator in
# front of it or a pooling unit after it (the layer's ``buffer_style``).


@dataclass(frozen=True)
class WeightLayer:
    """One MVAU (and its window generator), with FINN's fixed attributes."""

    layer: str  # exitflow layer name (folding key)
    node: str
    impl: str  # "hls" or "rtl"
    mw: int
    mh: int
    wbits: int
    abits: int
    signed_input: bool
    acc_bits: int  # accumulator datatype width
    out_bits: int
    no_activation: bool
    mem_mode: str
    ram_style: str
    ram_style_thresholds: str
    res_type: str
    vectors: int  # product of numInputVectors
    th: int
    dsp_block: str
    window: dict | None = None  # the feeding ConvolutionInputGenerator_rtl's attributes
    # a depthwise layer (VVAU; mw = k*k, mh = channels): FINN's own estimates of it and its
    # depthwise window generator per (PE, SIMD, ram_style, resType, line-buffer style), as
    # {option: {node: {lut, bram18, uram, dsp, cycles}}}, and the generator's node and input bits
    depthwise: bool = False
    table: dict | None = None
    window_node: str | None = None
    in_bits: int = 0


@dataclass(frozen=True, eq=False)
class PoolUnit:
    """Nodes whose fold follows a weight layer (the governor), with FINN's own estimates per
    candidate fold (ascending divisors of the channels) and line-buffer style
    (:data:`BUFFER_STYLES`, the governing layer's ``buffer_style``). Either a pooling window
    generator and the Pool node it feeds (FINN's ``InferPool``), folded together (the generator's
    SIMD equals the Pool's PE, as FINN's SetFolding sets them), or one stream unit
    (:data:`~exitflow.hw.folding.STREAM_UNITS`: a fork, an add, a threshold unit, global
    pooling, padding; ``window`` and ``pool`` name the same node). Cycles and stream widths do
    not depend on the style."""

    window: str  # the unit's first node (a pooling unit's depthwise ConvolutionInputGenerator)
    pool: str  # its last node (the Pool)
    governor: int  # the weight layer whose cycles set the fold (index into Inventory.layers)
    ends: bool  # the pool's stream leaves the graph
    fold: np.ndarray  # SIMD = PE of each option
    resources: np.ndarray  # (styles, folds, 4): lut, bram18, uram, dsp of both nodes
    cycles: np.ndarray  # the slower node's cycles, per fold
    latency: np.ndarray  # both nodes' cycles added up
    in_width: np.ndarray
    out_width: np.ndarray
    nodes: dict = field(default_factory=dict)  # node -> {lut, ...: (styles, folds)}, for tests


def _pool_unit(model, part: str, swg, pool, governor: int, ends: bool) -> PoolUnit:
    """FINN's estimates of a pooling unit at every fold and line-buffer style (the nodes are
    restored afterwards)."""
    from qonnx.custom_op.registry import getCustomOp

    swg_inst, pool_inst = getCustomOp(swg), getCustomOp(pool)
    built = (swg_inst.get_nodeattr("SIMD"), pool_inst.get_nodeattr("PE"), swg_inst.get_nodeattr("ram_style"))
    folds = _pool_folds(pool_inst)
    keys = (*NAMES, "cycles")
    nodes = {n.name: {k: np.zeros((len(BUFFER_STYLES), len(folds))) for k in keys} for n in (swg, pool)}
    in_width, out_width = [], []
    for s, style in enumerate(BUFFER_STYLES):
        swg_inst.set_nodeattr("ram_style", style)
        for f, d in enumerate(folds):
            _set_pool_fold(swg_inst, pool_inst, d)
            for node, inst in ((swg, swg_inst), (pool, pool_inst)):
                r = Resources.from_finn(inst.node_res_estimation(part))
                for key, value in r.as_dict().items():
                    nodes[node.name][key][s, f] = float(value)
                nodes[node.name]["cycles"][s, f] = float(inst.get_exp_cycles())
            if s == 0:
                in_width.append(swg_inst.get_instream_width())
                out_width.append(pool_inst.get_outstream_width())
    swg_inst.set_nodeattr("SIMD", built[0])
    pool_inst.set_nodeattr("PE", built[1])
    swg_inst.set_nodeattr("ram_style", built[2])
    a, b = nodes[swg.name], nodes[pool.name]
    return PoolUnit(
        swg.name,
        pool.name,
        governor,
        ends,
        np.array(folds),
        np.stack([a[k] + b[k] for k in NAMES], axis=-1),
        np.maximum(a["cycles"][0], b["cycles"][0]),
        a["cycles"][0] + b["cycles"][0],
        np.array(in_width),
        np.array(out_width),
        nodes,
    )


def _stream_unit(part: str, node, attr: str, governor: int, ends: bool) -> PoolUnit:
    """FINN's estimates of one stream unit (:func:`~exitflow.hw.folding.stream_units`) at every
    fold; the same for every line-buffer style (it has none)."""
    folds = stream_folds(scratch_op(node))
    keys = (*NAMES, "cycles")
    values = {k: np.zeros(len(folds)) for k in keys}
    in_width, out_width = [], []
    for f, d in enumerate(folds):
        inst = scratch_op(node, {attr: d})
        for key, value in Resources.from_finn(inst.node_res_estimation(part)).as_dict().items():
            values[key][f] = float(value)
        values["cycles"][f] = float(inst.get_exp_cycles())
        in_width.append(inst.get_instream_width())
        out_width.append(inst.get_outstream_width())
    per_style = {k: np.broadcast_to(v, (len(BUFFER_STYLES), len(folds))).copy() for k, v in values.items()}
    return PoolUnit(
        node.name,
        node.name,
        governor,
        ends,
        np.array(folds),
        np.stack([per_style[k] for k in NAMES], axis=-1),
        values["cycles"],
        values["cycles"],
        np.array(in_width),
        np.array(out_width),
        {node.name: per_style},
    )


def _depthwise_table(model, part: str, node, window) -> dict:
    """FINN's estimates of a VVAU and its depthwise window generator at every legal folding
    (:func:`~exitflow.hw.folding.folding_violation`), weight memory, multiplier and line-buffer
    style; the generator takes SIMD = the VVAU's PE and FINN's parallel-window mode for a
    whole-window SIMD, as the build sets it (:func:`exitflow.hw.finn_flow.folding_config`)."""
    inst = scratch_op(node)
    kh, kw = inst.get_nodeattr("Kernel")
    channels = inst.get_nodeattr("Channels")
    types = inst.get_nodeattr_types()
    rams = (inst.get_nodeattr("ram_style"),) if "ram_style" in types else ("",)
    mults = ("lut", "dsp") if node.op_type.endswith("_hls") and "resType" in types else ("",)
    styles = BUFFER_STYLES if window is not None else BUFFER_STYLES[:1]
    table = {}
    for pe in divisors(channels):
        for simd in divisors(kh * kw):
            if folding_violation("", pe, simd, kh * kw, channels, depthwise=True) is not None:
                continue
            for ram in rams:
                for mult in mults:
                    for style in styles:
                        attrs = {"PE": pe, "SIMD": simd}
                        attrs.update({"ram_style": ram} if ram else {})
                        attrs.update({"resType": mult} if mult else {})
                        vvau = scratch_op(node, attrs)
                        costs = {node.name: _estimate(vvau, part)}
                        if window is not None:
                            wattrs = {"SIMD": pe, "ram_style": style}
                            if window.op_type.endswith("_rtl"):
                                wattrs["parallel_window"] = int(simd > 1)
                            costs[window.name] = _estimate(scratch_op(window, wattrs), part)
                        table[pe, simd, ram or "auto", mult or "lut", style] = costs
    return table


def _estimate(inst, part: str) -> dict:
    return {
        **{k: float(v) for k, v in Resources.from_finn(inst.node_res_estimation(part)).as_dict().items()},
        "cycles": float(inst.get_exp_cycles()),
        "in_width": float(inst.get_instream_width()),
        "out_width": float(inst.get_outstream_width()),
    }


@dataclass(frozen=True)
class Inventory:
    name: str
    part: str
    layers: tuple[WeightLayer, ...]
    fixed: dict = field(default_factory=dict)  # node -> {lut, bram18, uram, dsp, cycles} from FINN
    # streams between units: (source kind, source, destination kind, destination); kind "layer"
    # (index into layers: its output / its input stream), "pool" (index into pools) or "fixed"
    # (a stream width)
    edges: tuple = ()
    pools: tuple[PoolUnit, ...] = ()  # pooling units whose fold follows a weight layer


def inventory(model_path: str | Path, part: str, layers: Mapping[str, str] | list[str], name: str = "") -> Inventory:
    """What the search needs of one built graph (see the module docstring). ``layers``: the
    build's map of layer name -> weight node (``layers.json``), or the layer names in the order of
    the graph's weight nodes."""
    from finn.analysis.fpgadataflow.exp_cycles_per_layer import exp_cycles_per_layer
    from finn.analysis.fpgadataflow.res_estimation import res_estimation
    from finn.util.basic import get_dsp_block
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    register_finn_ops()

    model = ModelWrapper(str(model_path))
    res = model.analysis(lambda m: res_estimation(m, part))
    cycles = model.analysis(exp_cycles_per_layer)
    weights = [n for n in model.graph.node if n.op_type.startswith(WEIGHT_OPS)]
    if isinstance(layers, Mapping):
        by_name = {n.name: n for n in weights}
        if sorted(layers.values()) != sorted(by_name):
            raise ValueError(f"{model_path}: weight nodes {sorted(by_name)} for layers {dict(layers)}")
        layer_nodes = [(layer, by_name[node]) for layer, node in layers.items()]
    else:
        if len(weights) != len(layers):
            raise ValueError(f"{model_path}: {len(weights)} weight nodes for layers {layers}")
        layer_nodes = list(zip(layers, weights, strict=True))

    def producer_of(tensor):  # the unit feeding ``tensor``, past FINN's width converters and FIFOs
        producer = model.find_producer(tensor)
        while producer is not None and producer.op_type.startswith(PASSING):
            producer = model.find_producer(producer.input[0])
        return producer

    out_layers, tied = [], set()
    for layer, node in layer_nodes:
        inst = getCustomOp(node)
        idt = inst.get_input_datatype(0)
        producer = producer_of(node.input[0])
        window = None
        feeds = producer is not None and producer.op_type.startswith("ConvolutionInputGenerator")
        if feeds:
            tied.add(producer.name)
        types = inst.get_nodeattr_types()
        common = dict(
            layer=layer,
            node=node.name,
            impl="rtl" if node.op_type.endswith("_rtl") else "hls",
            wbits=inst.get_input_datatype(1).bitwidth(),
            abits=idt.bitwidth(),
            signed_input=bool(idt.signed()),
            acc_bits=inst.get_accumulator_datatype().bitwidth(),
            out_bits=inst.get_output_datatype().bitwidth(),
            no_activation=bool(inst.get_nodeattr("noActivation")),
            mem_mode=inst.get_nodeattr("mem_mode") if "mem_mode" in types else "",
            ram_style=inst.get_nodeattr("ram_style") if "ram_style" in types else "auto",
            ram_style_thresholds=inst.get_nodeattr("ram_style_thresholds") if "ram_style_thresholds" in types else "",
            res_type=inst.get_nodeattr("resType") if "resType" in types else "lut",
            th=inst.get_nodeattr("TH") if "TH" in types else 1,
            dsp_block=get_dsp_block(part),
        )
        if node.op_type.startswith("VVAU"):
            kh, kw = inst.get_nodeattr("Kernel")
            dim_h, dim_w = inst.get_nodeattr("Dim")
            out_layers.append(
                WeightLayer(
                    **common,
                    mw=kh * kw,
                    mh=inst.get_nodeattr("Channels"),
                    vectors=dim_h * dim_w,
                    depthwise=True,
                    table=_depthwise_table(model, part, node, producer if feeds else None),
                    window_node=producer.name if feeds else None,
                    in_bits=getCustomOp(producer).get_input_datatype().bitwidth() if feeds else idt.bitwidth(),
                )
            )
            continue
        if feeds:
            window = _window_attrs(getCustomOp(producer))
        out_layers.append(
            WeightLayer(
                **common,
                mw=inst.get_nodeattr("MW"),
                mh=inst.get_nodeattr("MH"),
                vectors=int(np.prod(inst.get_nodeattr("numInputVectors"))),
                window=window,
            )
        )
    # units whose fold follows a weight layer: pooling units (pick_pool) and stream units
    index = {node.name: k for k, (_, node) in enumerate(layer_nodes)}
    pools = tuple(
        _pool_unit(model, part, swg, pool, index[governor.name], ends)
        for swg, pool, governor, ends in pool_units(model)
        if governor is not None
    ) + tuple(
        _stream_unit(part, node, attr, index[governor.name], model.find_consumer(node.output[0]) is None)
        for node, attr, governor in stream_units(model)
        if governor is not None
    )
    unit_in = {u.window: k for k, u in enumerate(pools)}
    unit_out = {u.pool: k for k, u in enumerate(pools)}
    tied |= set(unit_in) | set(unit_out)
    # streams between units: where a converter sits (or would sit at another folding)
    window_of = {L.window["node"]: k for k, L in enumerate(out_layers) if L.window}
    window_of.update({L.window_node: k for k, L in enumerate(out_layers) if L.window_node})
    edges = []
    for node in model.graph.node:
        if node.op_type.startswith(PASSING):
            continue
        for tensor in node.input:
            producer = producer_of(tensor)
            if producer is None:
                continue  # the graph input, or an initializer
            if node.name in index and producer.name in window_of:
                continue  # a generator and the weight layer it feeds share a fold
            if node.name != producer.name and unit_out.get(node.name, -1) == unit_in.get(producer.name, -2):
                continue  # a pooling unit's generator and its Pool share a fold
            if producer.name in index:
                src = ("layer", index[producer.name])
            elif producer.name in unit_out:
                src = ("pool", unit_out[producer.name])
            else:
                src = ("fixed", getCustomOp(producer).get_outstream_width())
            if node.name in index:
                dst = ("layer", index[node.name])
            elif node.name in window_of:
                dst = ("layer", window_of[node.name])
            elif node.name in unit_in:
                dst = ("pool", unit_in[node.name])
            else:
                dst = ("fixed", getCustomOp(node).get_instream_width())
            edges.append((*src, *dst))
    fixed = {}
    for node in model.graph.node:
        if node.op_type.startswith((*WEIGHT_OPS, "StreamingDataWidthConverter")) or node.name in tied:
            continue
        fixed[node.name] = {**Resources.from_finn(res[node.name]).as_dict(), "cycles": cycles[node.name]}
    return Inventory(name, part, tuple(out_layers), fixed, tuple(edges), pools)


# ------------------------------------------------------------------------------ formulas


def _mvau(
    L: WeightLayer, pe: np.ndarray, simd: np.ndarray, ram_style: np.ndarray, res_type: np.ndarray
) -> dict[str, np.ndarray]:
    P, Q = pe.astype(np.float64), simd.astype(np.float64)
    dsp_mult = res_type == "dsp"
    W, A = L.wbits, L.abits
    wmem = (L.mw * L.mh) // (pe * simd)
    omega = (L.mw * L.mh) / (Q * P)
    mem_width = simd * W * pe
    distributed = ram_style == "distributed"
    # bram_estimation (FINN-R; SDP RAMB18)
    if L.mem_mode == "internal_embedded":
        no_bram_arr = wmem <= 128
    elif L.mem_mode in ("external", "external_mem"):
        no_bram_arr = np.ones(pe.shape, dtype=bool)
    else:
        no_bram_arr = (
            distributed | (ram_style == "ultra")
            if L.mem_mode == "internal_decoupled"
            else np.zeros(pe.shape, dtype=bool)
        )
    bram = np.select(
        [mem_width == 1, mem_width == 2, mem_width <= 4, mem_width <= 9, (mem_width <= 18) | (omega > 512)],
        [
            np.ceil(omega / 16384),
            np.ceil(omega / 8192),
            np.ceil(omega / 4096) * np.ceil(mem_width / 4),
            np.ceil(omega / 2048) * np.ceil(mem_width / 9),
            np.ceil(omega / 1024) * np.ceil(mem_width / 18),
        ],
        np.ceil(omega / 512) * np.ceil(mem_width / 36),
    )
    bram = np.where(no_bram_arr, 0, bram)
    # uram_estimation
    if L.mem_mode in ("external", "external_mem"):
        no_uram = np.ones(pe.shape, dtype=bool)
    elif L.mem_mode == "internal_decoupled":
        no_uram = ram_style != "ultra"
    else:
        no_uram = np.zeros(pe.shape, dtype=bool)
    uram = np.where(no_uram, 0, np.ceil(mem_width / 72) * np.ceil(omega / 4096))
    if L.mem_mode == "internal_embedded":
        uram = np.where(wmem <= 128, 0, uram)
    cycles = np.floor((L.mh / P) * (L.mw / Q) * L.vectors * L.th)
    if L.impl == "rtl":
        lut = np.zeros(pe.shape)
        dsp = P * np.ceil(Q / 3) if L.dsp_block == "DSP58" else np.ceil(P / 4) * Q
    else:
        c2 = (P * Q * W) * np.ceil(wmem / 64)
        if L.mem_mode == "internal_embedded":
            c2 = np.where(wmem <= 128, c2, 0)
        elif L.mem_mode == "internal_decoupled":
            c2 = np.where(distributed, c2, 0)
        else:
            c2 = np.zeros(pe.shape)
        mult = np.where(dsp_mult, 0.0, Q * (2 * math.ceil((W + A) / 6) - 1) * (W + A))
        adder = (W + A) * (2 * Q - 1)
        alpha = math.log(L.mw, 2) + W + A - 1 - int(L.signed_input)
        acc_bits = min(L.acc_bits, np.ceil(alpha + math.log(1 + pow(2, -alpha), 2) + 1))
        thr = comp = np.zeros(pe.shape)
        if not L.no_activation and L.ram_style_thresholds == "distributed":
            tmem = L.mh // pe
            thr = (2**L.out_bits - 1) * acc_bits * np.ceil(tmem / 64)
            comp = np.full(pe.shape, (2**L.out_bits - 1) * acc_bits, dtype=np.float64)
        lut = np.floor(300 + 1.1 * (P * (mult + adder + acc_bits + thr + comp)) + c2)
        dsp = np.where(dsp_mult, P * Q * np.ceil((W + A) / 48), 0.0)
    return {"lut": lut, "bram18": bram, "uram": uram, "dsp": dsp, "cycles": cycles}


def _ram_width(depth: np.ndarray) -> np.ndarray:
    return np.select([depth <= 512, depth <= 1024, depth <= 2048, depth <= 4096, depth <= 8192], [36, 18, 9, 4, 2], 1)


def _window(w: dict, simd: np.ndarray, wide: np.ndarray, style: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """ConvolutionInputGenerator_rtl, non-depthwise, default or parallel implementation, at the
    generator's own SIMD and parallel-window flag, its line buffer in ``style`` (FINN's
    ``ram_style`` per entry; default: as built)."""
    (k_h, k_w), (h, wd) = w["k"], w["ifm"]
    (s_h, s_w), (d_h, d_w) = w["stride"], w["dilation"]
    parallel = wide | (k_h * k_w == 1)
    cf = (w["ifm_ch"] // simd).astype(np.int64)
    if (h == 1 or wd == 1) and not parallel.all():
        raise NotImplementedError(f"{w['node']}: 1-D window generators are not modelled")
    # default implementation
    buffer_min = ((k_h - 1) * d_h * wd + (k_w - 1) * d_w + 1) * cf
    depth_default = (
        buffer_min + np.maximum(0, ((s_w - 1) - k_h * k_w) * cf) + np.maximum(0, ((s_h - 1) * wd - k_h * k_w) * cf)
    )
    # parallel implementation: one input word per cycle, k_h - 1 line buffers
    depth_parallel = ((k_h - 1) * d_h * wd + (k_w - 1) * d_w) * cf + 2
    depth = np.where(parallel, depth_parallel, depth_default)
    cycles = _window_cycles(w, simd, parallel)
    width = simd * w["in_bits"]
    style = np.full(simd.shape, w["ram_style"], dtype=object) if style is None else np.asarray(style, dtype=object)
    lut = 300 + np.where(style == "distributed", width * np.ceil(depth / 38), 0)
    # block RAM where the style asks for it ("block" or "auto")
    line = (wd - ((k_w - 1) * d_w + 1)) + wd * (d_h - 1)
    ram_depth = np.where(parallel, line, depth)
    count = np.where(parallel, 0 if h == 1 or wd == 1 else k_h - 1, 1)
    ram_width = _ram_width(ram_depth)
    cascade_depth = np.ceil(ram_depth / 16384)
    cascade_width = np.ceil(width / ram_width)
    remainder = _ram_width(ram_depth % 16384)
    savings = np.where(ram_depth > 16384, cascade_width - np.ceil(width / remainder), 0)
    bram = np.where((style == "block") | (style == "auto"), (cascade_depth * cascade_width - savings) * count, 0.0)
    return {"lut": lut, "bram18": bram, "uram": np.zeros(simd.shape), "dsp": np.zeros(simd.shape), "cycles": cycles}


def dwc_luts(in_width, out_width) -> np.ndarray:
    """FINN's ``StreamingDataWidthConverter.lut_estimation``, vectorised (0 where the widths
    agree: no converter)."""
    inw, outw = np.asarray(in_width, dtype=np.int64), np.asarray(out_width, dtype=np.int64)
    minw, maxw = np.minimum(inw, outw), np.maximum(inw, outw)
    intw = maxw * minw // np.gcd(maxw, minw)
    with np.errstate(divide="ignore"):
        up = np.where(inw != intw, np.abs(np.ceil(np.log2(inw / intw))) + intw, 0)
        down = np.where(intw != outw, np.abs(np.ceil(np.log2(intw / outw))) + outw, 0)
    return np.where(inw == outw, 0, up + down).astype(np.float64)


def layer_costs(
    layer: WeightLayer, pe, simd, ram_style=None, res_type=None, buffer_style=None
) -> dict[str, dict[str, np.ndarray]]:
    """{node name: {lut, bram18, uram, dsp, cycles}} of the MVAU, its window generator and the
    width converter between them (key ``<MVAU node>:dwc``) for every (PE, SIMD[, weight
    ram_style[, multiplier resType[, line-buffer style]]]) of the arrays ``pe``, ``simd``,
    ``ram_style``, ``res_type`` and ``buffer_style`` (default: what the graph was built with)."""
    pe, simd = np.asarray(pe, dtype=np.int64), np.asarray(simd, dtype=np.int64)
    styles = (
        np.full(pe.shape, layer.ram_style, dtype=object) if ram_style is None else np.asarray(ram_style, dtype=object)
    )
    mults = np.full(pe.shape, layer.res_type, dtype=object) if res_type is None else np.asarray(res_type, dtype=object)
    if layer.depthwise:
        return _depthwise_costs(layer, pe, simd, styles, mults, buffer_style)
    mvau = _mvau(layer, pe, simd, styles, mults)
    out = {layer.node: mvau}
    if layer.window is not None:
        w = layer.window
        swg_simd, wide = window_fold(w, mvau["cycles"])
        out[w["node"]] = _window(w, swg_simd, wide, buffer_style)
        k = w["k"][0] * w["k"][1]
        lut = dwc_luts(swg_simd * w["in_bits"] * np.where(wide, k, 1), simd * layer.abits)
        zero = np.zeros(pe.shape)
        out[f"{layer.node}:dwc"] = {"lut": lut, "bram18": zero, "uram": zero, "dsp": zero, "cycles": zero}
    return out


def _depthwise_costs(layer: WeightLayer, pe, simd, ram_style, res_type, buffer_style) -> dict:
    """:func:`layer_costs` of a depthwise layer: FINN's own estimates, looked up in its table."""
    style = (
        np.full(pe.shape, BUFFER_STYLES[0], dtype=object)
        if buffer_style is None
        else np.asarray(buffer_style, dtype=object)
    )
    if layer.window_node is None:
        style = np.full(pe.shape, BUFFER_STYLES[0], dtype=object)
    keys = (*NAMES, "cycles")
    nodes = [layer.node] + ([layer.window_node] if layer.window_node else [])
    out = {n: {k: np.zeros(pe.shape) for k in keys} for n in nodes}
    for i in np.ndindex(pe.shape):
        option = (int(pe[i]), int(simd[i]), str(ram_style[i]), str(res_type[i]), str(style[i]))
        entry = layer.table.get(option)
        if entry is None:
            raise KeyError(f"{layer.layer}: no depthwise folding {option}")
        for n in nodes:
            for k in keys:
                out[n][k][i] = entry[n][k]
    return out


def stream_widths(layer: WeightLayer, pe, simd, mvau_cycles) -> tuple[np.ndarray, np.ndarray]:
    """(input stream width, output stream width) of the layer (with its window generator), given
    the MVAU's cycles (from :func:`layer_costs`) that set the generator's SIMD."""
    pe, simd = np.asarray(pe, dtype=np.int64), np.asarray(simd, dtype=np.int64)
    out = pe * layer.out_bits
    if layer.depthwise:  # the depthwise generator takes SIMD = PE input values per cycle
        return pe * layer.in_bits, out
    if layer.window is None:
        return simd * layer.abits, out
    return window_fold(layer.window, mvau_cycles)[0] * layer.window["in_bits"], out

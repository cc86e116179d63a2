"""exitflow's vectorised model gives exactly FINN's estimates (LUT, BRAM18, URAM, DSP, cycles)
on random legal foldings of lenet, cnv, resnet8 and mobilenet stages and heads: MVAUs and window
generators by exitflow's formulas, VVAUs from FINN's own tabulated numbers, pooling and stream
units (forks, adds, thresholds, global pooling, padding) at the fold the build gives them."""

import json

import numpy as np
import pytest
import yaml
from qonnx.custom_op.registry import getCustomOp

from exitflow.dse.finn_model import BUFFER_STYLES, inventory, layer_costs
from exitflow.dse.folding import buffer_styles, mult_styles, weight_styles
from exitflow.hw.build import build

SAMPLES_PER_GRAPH = 17  # 12 graphs: 204 random foldings


def _legal(layer, rng):
    def divisors(n):
        return [d for d in range(1, n + 1) if n % d == 0]

    if layer.depthwise:  # channels by PE, the k x k window one weight or all at once
        pairs = [(p, s) for p in divisors(layer.mh) for s in (1, layer.mw)]
        return pairs[rng.integers(len(pairs))]
    simds = [s for s in divisors(layer.mw) if s * 1024 >= layer.mw]
    pairs = [(p, s) for p in divisors(layer.mh) for s in simds if p * s * layer.wbits <= 8191]
    return pairs[rng.integers(len(pairs))]


def _finn_numbers(folder, part, layers, folding, tmp):
    """FINN's estimates after exitflow's own folding steps (apply_folding, minimize_bit_width,
    insert_width_converters) on the graph as it was before folding. ``layers``: the build's map of
    layer name -> weight node (a residual block's projection comes first in FINN's graph)."""
    from finn.analysis.fpgadataflow.exp_cycles_per_layer import exp_cycles_per_layer
    from finn.analysis.fpgadataflow.res_estimation import res_estimation
    from qonnx.core.modelwrapper import ModelWrapper

    from exitflow.core.design import LayerFolding
    from exitflow.hw.finn_flow import (
        FlowState,
        apply_folding,
        insert_width_converters,
        layer_signature,
        minimize_bit_width,
    )

    model = ModelWrapper(str(folder / "model_specialized.onnx"))
    nodes = {n.name: n for n in model.graph.node}
    state = FlowState(
        name=folder.name,
        part=part,
        clock_ns=10.0,
        layers=list(layers),
        signatures={layer: layer_signature(nodes[node]) for layer, node in layers.items()},
        out=tmp,
        folding={
            layer: LayerFolding(pe=pe, simd=simd, ram_style=style, res_type=mult, buffer_style=buffer)
            for layer, (pe, simd, style, mult, buffer) in zip(layers, folding, strict=False)
        },
    )
    for step in (apply_folding, minimize_bit_width, insert_width_converters):
        model = step(model, state)
    res = model.analysis(lambda m: res_estimation(m, part))
    cycles = model.analysis(exp_cycles_per_layer)
    nodes = {
        n: {"lut": r["LUT"], "bram18": r["BRAM_18K"], "uram": r["URAM"], "dsp": r["DSP"], "cycles": cycles[n]}
        for n, r in res.items()
    }
    return model, nodes


def _check(run, tmp_path, model_name, stages, seed):
    import exitflow.hls_templates.ctu_op  # noqa: F401
    from exitflow.dse.search import graph_cost

    path = tmp_path / f"{model_name}.yaml"
    data = {"model": model_name, "board": "Pynq-Z2", "stages": []}
    for k, blocks in enumerate(stages):
        stage = {"name": f"s{k}", "blocks": blocks, "head": {"name": f"h{k}"}}
        if k < len(stages) - 1:
            stage.update(gate_depth=2)
            stage["head"]["threshold"] = 0.9
        data["stages"].append(stage)
    path.write_text(yaml.safe_dump(data))
    build(run, path, log=lambda line: None)
    rng = np.random.default_rng(seed)
    summary = json.loads((run / "hw" / "build.json").read_text())
    budget = np.array([53200, 280, 0, 220], dtype=float)
    compared = parallel = lutram = converters = narrowed = dsp = block_buffers = depthwise = 0
    for graph in summary["graphs"]:
        folder = run / "hw" / graph["name"]
        layers = json.loads((folder / "layers.json").read_text())["layers"]
        inv = inventory(folder / "model_hw.onnx", summary["part"], layers, graph["name"])
        cost = graph_cost(folder, summary["part"], budget)
        for _ in range(SAMPLES_PER_GRAPH):
            folding = [
                (
                    *_legal(layer, rng),
                    str(rng.choice(weight_styles(layer))),
                    str(rng.choice(mult_styles(layer))),
                    str(rng.choice(buffer_styles(layer, tuple(u for u in inv.pools if u.governor == k)))),
                )
                for k, layer in enumerate(inv.layers)
            ]
            model, finn = _finn_numbers(folder, summary["part"], layers, folding, tmp_path / "flow")
            dwcs = [n.name for n in model.graph.node if n.op_type.startswith("StreamingDataWidthConverter")]
            # units folding does not change; a FIFO (skip branch or plain stream) is counted at its
            # built depth (the graph here is before insert_fifos)
            skip_fifos = {n: c for n, c in inv.fixed.items() if n.startswith("StreamingFIFO")}
            for node, fixed in inv.fixed.items():
                if node not in skip_fifos:
                    assert finn[node] == pytest.approx(fixed, abs=0), node
            ours_dwc = 0.0
            for k, layer in enumerate(inv.layers):
                pe, simd, style, mult, buffer = folding[k]
                ours = layer_costs(
                    layer,
                    np.array([pe]),
                    np.array([simd]),
                    np.array([style], dtype=object),
                    np.array([mult], dtype=object),
                    np.array([buffer], dtype=object),
                )
                for node, costs in ours.items():
                    if node.endswith(":dwc"):
                        ours_dwc += costs["lut"][0]
                        continue
                    for key in ("lut", "bram18", "uram", "dsp", "cycles"):
                        assert costs[key][0] == finn[node][key], (graph["name"], node, key, folding[k])
                if layer.window or layer.window_node:
                    name = layer.window["node"] if layer.window else layer.window_node
                    swg = getCustomOp(next(n for n in model.graph.node if n.name == name))
                    parallel += swg.get_nodeattr("parallel_window")
                depthwise += bool(layer.depthwise)
            # the graph as a whole, width converters between layers included, through the search's
            # own GraphCost: every resource and the interval exactly as FINN estimates them
            picks = [np.array([[t.index(*f)]]) for t, f in zip(cost.tables, folding, strict=False)]
            # pooling units: their fold follows the layer they pool (pick_pool), their line buffer
            # its buffer_style, as the build's
            for unit, k in zip(cost.pools, cost.pool_folds(picks), strict=False):
                style = BUFFER_STYLES.index(folding[unit.governor][4])
                for node, costs in unit.nodes.items():
                    for key in ("lut", "bram18", "uram", "dsp", "cycles"):
                        assert costs[key][style, k[0, 0]] == finn[node][key], (graph["name"], node, key, folding)
                narrowed += int(unit.fold[k[0, 0]] < unit.fold[-1])
            resources, cycles, _ = cost.combine(picks, (1, 1))
            totals = [
                sum(v[key] for v in finn.values()) + sum(f[key] for f in skip_fifos.values())
                for key in ("lut", "bram18", "uram", "dsp")
            ]
            assert resources[0, 0].tolist() == totals, (graph["name"], folding)
            assert cycles[0, 0] == max(v["cycles"] for v in finn.values())
            assert sum(finn[d]["lut"] for d in dwcs) >= ours_dwc
            converters += len(dwcs)
            lutram += sum(1 for f in folding if f[2] == "distributed")
            block_buffers += sum(1 for f in folding if f[4] == "block")
            dsp += sum(1 for f in folding if f[3] == "dsp")
            compared += 1
    assert parallel > 0, "no folding exercised the parallel-window generator"
    assert lutram > 0, "no folding kept weights in LUTRAM"
    assert dsp > 0, "no folding multiplied in DSP slices"
    assert block_buffers > 0, "no folding kept line buffers in block RAM"
    assert converters > 0, "no folding needed a width converter"
    return compared, narrowed, depthwise


@pytest.mark.slow
def test_lenet_stages_and_heads(digits_run, tmp_path):
    n, _, _ = _check(digits_run, tmp_path, "lenet", [["conv0"], ["conv1", "fc0"], ["fc1"]], seed=0)
    assert n == 6 * SAMPLES_PER_GRAPH


@pytest.mark.slow
def test_cnv_stages_and_heads(tmp_path, tiny_trainer):
    tiny_trainer(tmp_path, "cnv", "w2a2")
    blocks = ["conv0", "conv1", "conv2", "conv3", "conv4", "conv5", "fc0", "fc1"]
    n, narrowed, _ = _check(tmp_path / "run", tmp_path, "cnv", [blocks[:2], blocks[2:6], blocks[6:]], seed=1)
    assert n == 6 * SAMPLES_PER_GRAPH  # with lenet's: 204 random foldings compared with FINN
    assert narrowed > 0, "no folding let a pooling unit take a narrower fold"


@pytest.mark.slow
def test_resnet8_stages_and_heads(tmp_path, tiny_trainer):
    """Forks, adds, standalone thresholds, 1x1 projections (first in FINN's graph), padding and
    global accumulation pooling in the final head."""
    run = tiny_trainer(tmp_path, "resnet8", "w4a4", width=0.5)
    n, narrowed, _ = _check(run, tmp_path, "resnet8", [["stem", "stack1"], ["stack2"], ["stack3"]], seed=2)
    assert n == 6 * SAMPLES_PER_GRAPH
    assert narrowed > 0, "no folding let a stream unit take a narrower fold"


@pytest.mark.slow
def test_mobilenet_stages_and_heads(tmp_path, tiny_trainer):
    """VVAUs with their depthwise window generators (parallel-window mode for a whole-window SIMD)."""
    run = tiny_trainer(tmp_path, "mobilenet", "w4a4", width=0.5)
    stages = [["stem", "sep1"], ["sep2", "sep3"], ["sep4", "sep5", "sep6"]]
    n, _, depthwise = _check(run, tmp_path, "mobilenet", stages, seed=3)
    assert n == 6 * SAMPLES_PER_GRAPH  # with resnet8's: 204 random foldings compared with FINN
    assert depthwise >= 3 * SAMPLES_PER_GRAPH

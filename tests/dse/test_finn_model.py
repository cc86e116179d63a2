"""exitflow's vectorised model gives exactly FINN's estimates (LUT, BRAM18, URAM, DSP, cycles)
on random legal foldings of lenet and cnv stages and heads."""

import json

import numpy as np
import pytest
import yaml

from exitflow.build import build
from exitflow.dse.finn_model import inventory, layer_costs
from exitflow.dse.folding import weight_styles

SAMPLES_PER_GRAPH = 25


def _legal(layer, rng):
    def divisors(n):
        return [d for d in range(1, n + 1) if n % d == 0]

    simds = [s for s in divisors(layer.mw) if s * 1024 >= layer.mw
             and (layer.window is None or layer.window["ifm_ch"] % s == 0)]
    pairs = [(p, s) for p in divisors(layer.mh) for s in simds if p * s * layer.wbits <= 8191]
    wide = [(p, layer.mw) for p in divisors(layer.mh) if p * layer.mw * layer.wbits <= 8191]
    if layer.window and layer.window["ifm_ch"] != layer.mw and wide and rng.random() < 0.4:
        return wide[rng.integers(len(wide))]  # a whole window per cycle: the parallel-window mode
    return pairs[rng.integers(len(pairs))]


def _finn_numbers(model, part, folding, inv):
    from finn.analysis.fpgadataflow.exp_cycles_per_layer import exp_cycles_per_layer
    from finn.analysis.fpgadataflow.res_estimation import res_estimation
    from qonnx.custom_op.registry import getCustomOp

    nodes = {n.name: n for n in model.graph.node}
    for layer, (pe, simd, style) in zip(inv.layers, folding):
        getCustomOp(nodes[layer.node]).set_nodeattr("PE", pe)
        getCustomOp(nodes[layer.node]).set_nodeattr("SIMD", simd)
        getCustomOp(nodes[layer.node]).set_nodeattr("ram_style", style)
        if layer.window:  # as FINN's SetFolding configures a generator feeding a whole window per cycle
            swg = getCustomOp(nodes[layer.window["node"]])
            wide = simd == layer.mw and layer.window["ifm_ch"] != layer.mw
            swg.set_nodeattr("parallel_window", int(wide))
            swg.set_nodeattr("SIMD", layer.window["ifm_ch"] if wide else simd)
    res = model.analysis(lambda m: res_estimation(m, part))
    cycles = model.analysis(exp_cycles_per_layer)
    return {n: {"lut": r["LUT"], "bram18": r["BRAM_18K"], "uram": r["URAM"], "dsp": r["DSP"], "cycles": cycles[n]}
            for n, r in res.items()}


def _check(run, tmp_path, model_name, stages, seed):
    from qonnx.core.modelwrapper import ModelWrapper

    import exitflow.hw_ops.ctu_op  # noqa: F401

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
    compared = parallel = lutram = 0
    for graph in summary["graphs"]:
        folder = run / "hw" / graph["name"]
        layers = list(json.loads((folder / "layers.json").read_text())["layers"])
        inv = inventory(folder / "model_hw.onnx", summary["part"], layers, graph["name"])
        foldings = [[(*_legal(layer, rng), str(rng.choice(weight_styles(layer)))) for layer in inv.layers]
                    for _ in range(SAMPLES_PER_GRAPH)]
        model = ModelWrapper(str(folder / "model_hw.onnx"))
        for i, folding in enumerate(foldings):
            finn = _finn_numbers(model, summary["part"], folding, inv)
            for node, fixed in inv.fixed.items():
                assert finn[node] == pytest.approx(fixed, abs=0), node
            for k, layer in enumerate(inv.layers):
                pe = np.array([f[k][0] for f in foldings])
                simd = np.array([f[k][1] for f in foldings])
                ours = layer_costs(layer, pe, simd, np.array([f[k][2] for f in foldings], dtype=object))
                for node, costs in ours.items():
                    for key in ("lut", "bram18", "uram", "dsp", "cycles"):
                        assert costs[key][i] == finn[node][key], (graph["name"], node, key, folding[k])
            compared += 1
            parallel += sum(1 for layer, (pe, simd, _) in zip(inv.layers, folding)
                            if layer.window and simd == layer.mw != layer.window["ifm_ch"])
            lutram += sum(1 for (_, _, style) in folding if style == "distributed")
    assert parallel > 0, "no folding exercised the parallel-window generator"
    assert lutram > 0, "no folding kept weights in LUTRAM"
    return compared


@pytest.mark.slow
def test_lenet_stages_and_heads(digits_run, tmp_path):
    n = _check(digits_run, tmp_path, "lenet", [["conv0"], ["conv1", "fc0"], ["fc1"]], seed=0)
    assert n == 6 * SAMPLES_PER_GRAPH


@pytest.mark.slow
def test_cnv_stages_and_heads(tmp_path):
    from exitflow.data import DataSpec
    from exitflow.quant.config import ModelConfig, RunConfig, TrainConfig
    from exitflow.quant.train import train

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tiny.npz", x=rng.integers(0, 256, (64, 3, 32, 32), dtype=np.uint8), y=np.arange(64) % 10)
    config = RunConfig(data=DataSpec(name="npz", path=str(tmp_path / "tiny.npz")),
                       model=ModelConfig(backbone="cnv", preset="w2a2"), train=TrainConfig(epochs=1, batch_size=32))
    train(config, tmp_path / "run", log=lambda line: None)
    blocks = ["conv0", "conv1", "conv2", "conv3", "conv4", "conv5", "fc0", "fc1"]
    n = _check(tmp_path / "run", tmp_path, "cnv", [blocks[:2], blocks[2:6], blocks[6:]], seed=1)
    assert n == 6 * SAMPLES_PER_GRAPH  # with lenet's: 300 random foldings compared with FINN

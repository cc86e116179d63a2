"""`exitflow build`: every stage and head through FINN up to code generation, the folding as a
FINN folding config, and the checks that run before FINN does."""

import json
import shutil
import subprocess

import numpy as np
import pytest
import yaml
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.custom_op.registry import getCustomOp

from exitflow.core.artifacts import WeightLayer
from exitflow.core.errors import ConfigError
from exitflow.hw.build import build


def _design(model, stages, board="Pynq-Z2"):
    data = {"model": model, "board": board, "stages": []}
    for k, (name, blocks, folding, head_folding) in enumerate(stages):
        last = k == len(stages) - 1
        stage = {
            "name": name,
            "blocks": blocks,
            "folding": folding,
            "head": {"name": f"{name}_exit", "folding": head_folding},
        }
        if not last:
            stage["gate_depth"] = 4
            stage["head"]["threshold"] = 0.9
        data["stages"].append(stage)
    return data


def _write(tmp_path, data):
    path = tmp_path / "design.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _check_graph(folder, folding):
    """The HW graph carries the design's folding on the named layers, and FINN's ApplyConfig with
    the written folding_config.json turns the unfolded graph into exactly that."""
    hw = ModelWrapper(str(folder / "model_hw.onnx"))
    layers = json.loads((folder / "layers.json").read_text())["layers"]
    nodes = {n.name: n for n in hw.graph.node}
    from exitflow.hw.folding import pool_units

    for layer, fold in folding.items():
        inst = getCustomOp(nodes[layers[layer]])
        assert (inst.get_nodeattr("PE"), inst.get_nodeattr("SIMD")) == (fold["pe"], fold["simd"])
    # every window generator's line buffer where the layer it feeds, or the layer a pooling unit
    # follows, asks for it (FINN's default: LUTRAM)
    by_node = {node: folding.get(layer, {}) for layer, node in layers.items()}
    generators = {}
    for node in hw.graph.node:
        producer = hw.find_producer(node.input[0])
        while producer is not None and producer.op_type.startswith("StreamingDataWidthConverter"):
            producer = hw.find_producer(producer.input[0])
        if node.name in by_node and producer is not None and producer.op_type.startswith("ConvolutionInputGenerator"):
            generators[producer.name] = by_node[node.name].get("buffer_style", "distributed")
    for swg, _, governor, _ in pool_units(hw):
        if governor is not None:
            generators[swg.name] = by_node[governor.name].get("buffer_style", "distributed")
    for name, style in generators.items():
        assert getCustomOp(nodes[name]).get_nodeattr("ram_style") == style, (folder.name, name)
    from finn.transformation.general import ApplyConfig

    config = json.loads((folder / "folding_config.json").read_text())
    fresh = ModelWrapper(str(folder / "model_specialized.onnx")).transform(
        ApplyConfig(str(folder / "folding_config.json"))
    )
    for node in fresh.graph.node:
        for attr, value in config[node.name].items():
            assert getCustomOp(node).get_nodeattr(attr) == value
    resources = json.loads((folder / "estimate_layer_resources.json").read_text())
    cycles = json.loads((folder / "estimate_layer_cycles.json").read_text())
    assert set(resources) == set(cycles) == set(nodes)
    assert all(node.domain.startswith("finn.custom_op.fpgadataflow") for node in hw.graph.node)
    for node in hw.graph.node:  # HLS/RTL code was generated for every node
        code = getCustomOp(node).get_nodeattr("code_gen_dir_ipgen")
        assert code and any((folder / "codegen").rglob("*")) and list(__import__("pathlib").Path(code).iterdir())


LENET_SUBSETS = [
    [
        (
            "all",
            ["conv0", "conv1", "fc0", "fc1"],
            {"conv0": {"pe": 4, "simd": 1}, "conv1": {"pe": 4, "simd": 8}},
            {"classifier": {"pe": 2, "simd": 4}},
        )
    ],
    # SIMD = MW: parallel-window generator; line buffers (conv0's generator and pooling unit) in block RAM
    [
        ("early", ["conv0"], {"conv0": {"pe": 16, "simd": 9, "buffer_style": "block"}}, {}),
        (
            "rest",
            ["conv1", "fc0", "fc1"],
            {"conv1": {"pe": 8, "simd": 16, "buffer_style": "block"}, "fc0": {"pe": 4, "simd": 4}},
            {"classifier": {"pe": 5, "simd": 8}},
        ),
    ],
    [
        ("a", ["conv0", "conv1"], {}, {"classifier": {"pe": 10, "simd": 32}}),
        ("b", ["fc0"], {"fc0": {"pe": 2, "simd": 32}}, {}),
        ("c", ["fc1"], {"fc1": {"pe": 16, "simd": 64}}, {}),
    ],
]


@pytest.mark.slow
@pytest.mark.parametrize("stages", LENET_SUBSETS, ids=["final-only", "conv0", "conv1+fc0"])
def test_lenet_builds_for_every_subset(digits_run, tmp_path, stages):
    design = _write(tmp_path, _design("lenet", stages))
    reports = build(digits_run, design, log=lambda line: None)
    hw = digits_run / "hw"
    assert [r.name for r in reports] == [n for s in stages for n in (s[0], f"{s[0]}_exit")]
    for name, _, folding, head_folding in stages:
        _check_graph(hw / name, folding)
        _check_graph(hw / f"{name}_exit", head_folding)
    summary = json.loads((hw / "build.json").read_text())
    assert summary["part"] == "xc7z020clg400-1" and summary["bitfile"]["tools"].startswith("Vivado and Vitis HLS")
    assert all(g["interval_cycles"] > 0 and g["lut"] >= 0 for g in summary["graphs"])


def test_integer_streams_between_stages(digits_run, tmp_path):
    design = _write(tmp_path, _design("lenet", LENET_SUBSETS[1]))
    build(digits_run, design, log=lambda line: None)
    # conv0 at PE 16, SIMD = MW = 9 takes one of the 6 x 6 output pixels per cycle; its 1-channel
    # window generator cannot keep up in its default mode, so it runs FINN's parallel-window mode
    # (one pixel in per cycle, a whole 3x3 window out): digits' 8 x 8 image in 8 x 8 + 2 cycles
    early = ModelWrapper(str(digits_run / "hw" / "early" / "model_hw.onnx"))
    swg = getCustomOp(early.graph.node[0])
    assert (swg.get_nodeattr("parallel_window"), swg.get_nodeattr("SIMD"), swg.select_impl_style()) == (
        1,
        1,
        "parallel",
    )
    cycles = json.loads((digits_run / "hw" / "early" / "estimate_layer_cycles.json").read_text())
    assert cycles[early.graph.node[0].name] == 8 * 8 + 2 and cycles[early.graph.node[1].name] == 6 * 6
    first = json.loads((digits_run / "hw" / "early" / "layers.json").read_text())
    second = json.loads((digits_run / "hw" / "rest" / "layers.json").read_text())
    assert first["input_datatype"] == "UINT8" and first["input_scale"] == pytest.approx(1 / 255)
    assert second["input_datatype"] == "UINT4"  # w4a4: the stage receives 4-bit activations
    # the leading requantiser of an integer stream is the identity and is not built
    for name in ("early", "rest", "rest_exit"):
        hw = ModelWrapper(str(digits_run / "hw" / name / "model_hw.onnx"))
        assert hw.graph.node[0].op_type.startswith(("ConvolutionInputGenerator", "MVAU"))
    # every head ends in the confidence-threshold unit, with the design's policy and threshold
    # and exactly the logit scale of the exported head
    manifest = json.loads((digits_run / "hw" / "stages" / "manifest.json").read_text())
    for k, (name, threshold) in enumerate((("early_exit", 0.9), ("rest_exit", None))):
        hw = ModelWrapper(str(digits_run / "hw" / name / "model_hw.onnx"))
        ctu = hw.graph.node[-1]
        assert ctu.op_type == "ConfidenceThreshold_hls"
        params = getCustomOp(ctu).params()
        assert (params.policy, params.threshold, params.scale) == ("max_prob", threshold, manifest["heads"][k]["scale"])
        mvau = getCustomOp(hw.graph.node[-2])
        assert params.logit_bits >= mvau.get_output_datatype().bitwidth()


# attributes the steps after folding set: bit widths (minimize_bit_width, and the CTU's input type
# the datatype inference takes from it) and code generation's paths and module names
LATER_ATTRS = {
    "weightDataType",
    "accDataType",
    "outputDataType",
    "inputDataType",
    "code_gen_dir_ipgen",
    "ipgen_path",
    "ip_path",
    "ip_vlnv",
    "gen_top_module",
}


@pytest.mark.slow
def test_written_folding_config_is_what_was_applied(digits_run, tmp_path):
    """folding_config.json, applied with FINN's ApplyConfig to each graph as it was before folding,
    names every node (no warning about missing or unused entries) and gives exactly the node
    attributes of the built graph; the built graph differs only by its width converters."""
    from finn.transformation.general import ApplyConfig
    from finn.util.config import extract_model_config

    from exitflow.hw.finn_flow import HW_ATTRS, finn_chatter

    design = _write(tmp_path, _design("lenet", LENET_SUBSETS[1]))
    build(digits_run, design, log=lambda line: None)
    folders = [digits_run / "hw" / n for s in LENET_SUBSETS[1] for n in (s[0], f"{s[0]}_exit")]
    for folder in folders:
        config = json.loads((folder / "folding_config.json").read_text())
        before = ModelWrapper(str(folder / "model_specialized.onnx"))
        assert config["Defaults"] == {} and set(config) - {"Defaults"} == {n.name for n in before.graph.node}
        with finn_chatter(tmp_path / f"{folder.name}.log", "w"):
            applied = before.transform(ApplyConfig(str(folder / "folding_config.json")))
        assert "HW configuration" not in (tmp_path / f"{folder.name}.log").read_text()
        assert extract_model_config(applied, None, HW_ATTRS) == config
        built = {n.name: n for n in ModelWrapper(str(folder / "model_hw.onnx")).graph.node}
        for node in applied.graph.node:
            mine = {a.name: a for a in node.attribute if a.name not in LATER_ATTRS}
            theirs = {a.name: a for a in built[node.name].attribute if a.name not in LATER_ATTRS}
            assert mine == theirs, (folder.name, node.name)
        extra = set(built) - {n.name for n in applied.graph.node}
        assert all(built[n].op_type.startswith("StreamingDataWidthConverter") for n in extra)
        assert "HW configuration" not in (folder / "finn.log").read_text()


@pytest.fixture(scope="module")
def cnv_run(tmp_path_factory, tiny_trainer):
    """A quarter-width cnv w2a2 (16..64 channels): the same FINN nodes and stage boundaries as the
    full width, built in a fraction of the time (dse/test_finn_model builds the full width)."""
    return tiny_trainer(tmp_path_factory.mktemp("cnv"), "cnv", "w2a2", 0.25)


CNV_BLOCKS = ["conv0", "conv1", "conv2", "conv3", "conv4", "conv5", "fc0", "fc1"]
CNV_SUBSETS = [["conv0"], ["conv1", "conv5"], ["conv3", "fc0"]]


@pytest.mark.slow
@pytest.mark.parametrize("exits", CNV_SUBSETS, ids=["+".join(e) for e in CNV_SUBSETS])
def test_cnv_builds_for_every_subset(cnv_run, tmp_path, exits):
    stages, start = [], 0
    for k, end in enumerate([*exits, "fc1"]):
        blocks = CNV_BLOCKS[start : CNV_BLOCKS.index(end) + 1]
        folding = {"conv1": {"pe": 16, "simd": 16}} if "conv1" in blocks else {}  # quarter width: 16 channels
        stages.append((f"s{k}", blocks, folding, {}))
        start = CNV_BLOCKS.index(end) + 1
    build(cnv_run, _write(tmp_path, _design("cnv", stages)), log=lambda line: None)
    for name, _, folding, _ in stages:
        _check_graph(cnv_run / "hw" / name, folding)
        _check_graph(cnv_run / "hw" / f"{name}_exit", {})


@pytest.mark.slow
def test_users_own_backbone_builds(tmp_path):
    from exitflow.core.data import DataSpec
    from exitflow.core.schema import FrozenMap
    from exitflow.quant.config import ModelConfig, RunConfig, TrainConfig
    from exitflow.quant.train import train

    rng = np.random.default_rng(1)
    np.savez(tmp_path / "tiny.npz", x=rng.integers(0, 256, (40, 3, 32, 32), dtype=np.uint8), y=np.arange(40) % 10)
    model = ModelConfig(
        backbone="custom",
        factory="brevitas_examples.bnn_pynq.models.CNV:CNV",
        factory_args=FrozenMap(
            {"num_classes": 10, "weight_bit_width": 2, "act_bit_width": 2, "in_bit_width": 8, "in_ch": 3}
        ),
        exits=("conv_features.7",),
        classifier="linear_features.6",
        preset="w2a2",
    )
    config = RunConfig(
        data=DataSpec(name="npz", path=str(tmp_path / "tiny.npz")),
        model=model,
        train=TrainConfig(epochs=1, batch_size=20),
    )
    train(config, tmp_path / "run", log=lambda line: None)
    stages = [
        ("front", ["conv_features.7"], {"conv_features.1": {"pe": 16, "simd": 3}}, {}),
        ("back", ["linear_features.6"], {}, {"classifier": {"pe": 10, "simd": 8}}),
    ]
    build(tmp_path / "run", _write(tmp_path, _design("custom", stages)), log=lambda line: None)
    _check_graph(tmp_path / "run" / "hw" / "front", stages[0][2])
    _check_graph(tmp_path / "run" / "hw" / "back_exit", stages[1][3])


BAD = [
    (
        {"conv0": {"pe": 5, "simd": 1}},
        "stages[0].folding.conv0.pe: 5 does not divide the 16 outputs of conv0 (FINN needs MH % PE == 0); legal PE: 1, 2, 4, 8, 16",  # noqa: E501 (the exact text)
    ),
    (
        {"conv0": {"pe": 1, "simd": 2}},
        "stages[0].folding.conv0.simd: 2 does not divide the 9 inputs of conv0 (FINN needs MW % SIMD == 0); legal SIMD: 1, 3, 9",  # noqa: E501 (the exact text)
    ),
    ({"conv9": {"pe": 1}}, "stages[0].folding.conv9: no weight layer 'conv9' in stage 'early' (layers: conv0)"),
]


@pytest.mark.parametrize("folding, message", BAD)
def test_illegal_folding_is_rejected_before_finn_runs(digits_run, tmp_path, folding, message):
    stages = [("early", ["conv0"], folding, {}), ("rest", ["conv1", "fc0", "fc1"], {}, {})]
    with pytest.raises(ConfigError) as err:
        build(digits_run, _write(tmp_path, _design("lenet", stages)), log=lambda line: None)
    assert message in str(err.value)
    assert not (digits_run / ".hw.previous").exists()


def test_weight_stream_wider_than_ap_int_max(tmp_path):
    from exitflow.core.design import LayerFolding
    from exitflow.hw.folding import check_folding

    with pytest.raises(ConfigError, match=r"fc: PE x SIMD x weight bits = 64 x 64 x 4 = 16384 exceeds 8191"):
        check_folding(
            "d.yaml: stages[0].folding",
            {"fc": LayerFolding(pe=64, simd=64)},
            [WeightLayer(name="fc", mw=64, mh=64, wbits=4)],
            "stage 's'",
        )


def test_simd_below_mw_over_1024(tmp_path):
    from exitflow.core.design import LayerFolding
    from exitflow.hw.folding import check_folding

    with pytest.raises(
        ConfigError,
        match=r"fc\.simd: 1 is below MW/1024 = 2 for fc \(FINN's HLS MVAU code generation needs SIMD >= MW/1024\)",
    ):
        check_folding(
            "d.yaml: stages[0].folding",
            {"fc": LayerFolding(simd=1)},
            [WeightLayer(name="fc", mw=2048, mh=10, wbits=1)],
            "stage 's'",
        )


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(model="cnv"), "model: the design is for 'cnv', the run folder holds a 'lenet' model"),
        (lambda d: d["stages"][1].update(blocks=["conv1", "fc0"]), "the last stage must end with the final exit 'fc1'"),
        (
            lambda d: d["stages"][0].update(blocks=["conv0", "fc0"]) or d["stages"][1].update(blocks=["conv1", "fc1"]),
            "stages: the blocks ['conv0', 'fc0', 'conv1', 'fc1'] must be the model's blocks in order",
        ),
        (
            lambda d: d["stages"][0].update(blocks=["conv0", "conv1", "fc0", "fc1"])
            or d["stages"][1].update(blocks=["extra"]),
            "stages[0].blocks: the model has no exit after 'fc1'",
        ),
        (lambda d: d.update(board="Pynq-Z9"), "board: unknown board 'Pynq-Z9'"),
    ],
)
def test_design_that_does_not_match_the_model(digits_run, tmp_path, mutate, message):
    data = _design("lenet", [("early", ["conv0"], {}, {}), ("rest", ["conv1", "fc0", "fc1"], {}, {})])
    mutate(data)
    with pytest.raises(ConfigError) as err:
        build(digits_run, _write(tmp_path, data), log=lambda line: None)
    assert message in str(err.value)


def test_bad_design_leaves_earlier_outputs_alone(digits_run, tmp_path, exitflow_cmd):
    good = _write(tmp_path, _design("lenet", LENET_SUBSETS[0]))
    assert (
        subprocess.run([*exitflow_cmd, "build", str(digits_run), "--design", str(good)], capture_output=True).returncode
        == 0
    )
    before = {p: p.stat().st_mtime_ns for p in (digits_run / "hw").rglob("*.json")}
    bad = _design(
        "lenet", [("early", ["conv0"], {"conv0": {"pe": 3, "simd": 1}}, {}), ("rest", ["conv1", "fc0", "fc1"], {}, {})]
    )
    out = subprocess.run(
        [*exitflow_cmd, "build", str(digits_run), "--design", str(_write(tmp_path, bad))],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "conv0.pe: 3 does not divide" in out.stderr
    assert {p: p.stat().st_mtime_ns for p in (digits_run / "hw").rglob("*.json")} == before


def test_a_gate_deeper_than_the_board_can_hold_is_refused(digits_run, tmp_path, exitflow_cmd):
    """Within the config-time bound (one bit a map) but not with the stage's real feature maps:
    the build refuses it, names the key and the deepest gate that fits, and keeps the last hw/."""
    from exitflow.core.catalogue import get_board
    from exitflow.core.design import gate_depth_limit

    good = _write(tmp_path, _design("lenet", LENET_SUBSETS[1]))
    assert (
        subprocess.run([*exitflow_cmd, "build", str(digits_run), "--design", str(good)], capture_output=True).returncode
        == 0
    )
    before = {p: p.stat().st_mtime_ns for p in (digits_run / "hw").rglob("*.json")}
    data = _design("lenet", LENET_SUBSETS[1])
    data["stages"][0]["gate_depth"] = gate_depth_limit(get_board("Pynq-Z2")) // 2
    deep = tmp_path / "deep"
    deep.mkdir()
    out = subprocess.run(
        [*exitflow_cmd, "build", str(digits_run), "--design", str(_write(deep, data))], capture_output=True, text=True
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "stages[0].gate_depth" in out.stderr and "feature maps of" in out.stderr and "so at most" in out.stderr
    assert {p: p.stat().st_mtime_ns for p in (digits_run / "hw").rglob("*.json")} == before


def test_cli_says_what_the_bitfile_needs(digits_run, tmp_path, exitflow_cmd):
    design = _write(tmp_path, _design("lenet", LENET_SUBSETS[0]))
    out = subprocess.run(
        [*exitflow_cmd, "build", str(digits_run), "--design", str(design)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert (
        "bitfile: needs Vivado 2024.2 (vivado) and Vitis HLS 2024.2 (vitis_hls or vitis-run) (not on PATH); "
        f"on a machine with them run: exitflow build {digits_run} --design {design}"
    ) in out.stdout
    fresh = tmp_path / "fresh_run"  # a run folder without a sweep: no default design to fall back on
    shutil.copytree(digits_run, fresh, ignore=shutil.ignore_patterns("hw", "stages", "sweep"))
    missing = subprocess.run([*exitflow_cmd, "build", str(fresh)], capture_output=True, text=True)
    assert missing.returncode == 2 and "sweep/design.yaml: design not found; pass --design FILE" in missing.stderr


def test_missing_or_corrupt_stage_file(tmp_path):
    from exitflow.core.errors import ExitflowError
    from exitflow.hw.finn_flow import FlowState, run_flow

    state = FlowState(name="s", part="xc7z020clg400-1", clock_ns=10.0, layers=[], folding={}, out=tmp_path / "out")
    with pytest.raises(ExitflowError, match="stage0.onnx: stage file not found"):
        run_flow(tmp_path / "stage0.onnx", tmp_path / "out", state)
    (tmp_path / "stage0.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(ExitflowError, match="stage0.onnx: corrupt QONNX file"):
        run_flow(tmp_path / "stage0.onnx", tmp_path / "out", state)


def test_unsupported_layer(tmp_path):
    import torch
    from brevitas.nn import QuantIdentity, QuantLinear

    from exitflow.hw.finn_flow import FlowState, UnsupportedLayerError, run_flow
    from exitflow.quant.export import _export

    model = torch.nn.Sequential(
        QuantIdentity(bit_width=4, return_quant_tensor=True),
        QuantLinear(8, 8, bias=False, weight_bit_width=4),
        torch.nn.Softsign(),
        QuantIdentity(bit_width=4, return_quant_tensor=True),
        QuantLinear(8, 4, bias=False, weight_bit_width=4),
    )
    _export(model, torch.rand(1, 8), tmp_path / "g.onnx")
    state = FlowState(
        name="stage0", part="xc7z020clg400-1", clock_ns=10.0, layers=["a", "b"], folding={}, out=tmp_path / "out"
    )
    with pytest.raises(
        UnsupportedLayerError, match=r"stage0: unsupported layer type \w+ \(node .*\): FINN cannot map it to hardware"
    ):
        run_flow(tmp_path / "g.onnx", tmp_path / "out", state)
    named = FlowState(
        name="seg0",
        part="xc7z020clg400-1",
        clock_ns=10.0,
        layers=["a", "b"],
        folding={},
        out=tmp_path / "out2",
        where="the stage of blocks conv0, conv1",
    )
    with pytest.raises(
        UnsupportedLayerError, match=r"^the stage of blocks conv0, conv1: unsupported layer type"
    ) as err:
        run_flow(tmp_path / "g.onnx", tmp_path / "out2", named)
    assert "seg0" not in str(err.value)  # messages name the user's blocks, never the internal graph name


def test_failure_inside_finn_puts_earlier_outputs_back(digits_run, tmp_path, monkeypatch):
    from exitflow.core.errors import ExitflowError
    from exitflow.hw import finn_flow

    build(digits_run, _write(tmp_path, _design("lenet", LENET_SUBSETS[0])), log=lambda line: None)
    before = sorted(str(p.relative_to(digits_run)) for p in (digits_run / "hw").rglob("*"))
    real, calls = finn_flow.run_flow, []

    def fail_on_second(src, out, state, log=None, codegen=True):
        calls.append(state.name)
        if len(calls) == 2:
            raise ExitflowError("simulated FINN failure")
        return real(src, out, state, codegen=codegen)

    monkeypatch.setattr(finn_flow, "run_flow", fail_on_second)
    with pytest.raises(ExitflowError, match="simulated FINN failure"):
        build(digits_run, _write(tmp_path, _design("lenet", LENET_SUBSETS[1])), log=lambda line: None)
    assert sorted(str(p.relative_to(digits_run)) for p in (digits_run / "hw").rglob("*")) == before
    assert not (digits_run / ".hw.previous").exists()

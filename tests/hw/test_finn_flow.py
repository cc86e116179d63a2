"""hw/finn_flow.py: exitflow's FINN steps on a tiny two-layer QONNX graph, the per-layer folding,
the confidence-threshold unit of heads, the checked layers.json reader and the log redirection."""

import json
import logging
import warnings

import numpy as np
import pytest
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.custom_op.registry import getCustomOp

from exitflow.core.design import LayerFolding
from exitflow.core.errors import INTERRUPTED, ConfigError, ExitflowError
from exitflow.hw import finn_flow
from exitflow.hw.finn_flow import FlowState, UnsupportedLayerError, default_folding, read_layers, run_flow

from ..conftest import tiny_mlp

PART = "xc7z020clg400-1"


def _state(out, **kw):
    return FlowState(
        **{"name": "s0", "part": PART, "clock_ns": 10.0, "layers": ["a", "b"], "folding": {}, "out": out, **kw}
    )


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """Two exported graphs: int4 input -> 8x16 -> relu4 -> 16x4, and the same without its
    input quantiser (so it starts with a Gemm)."""
    folder = tmp_path_factory.mktemp("finn_flow")
    net = tiny_mlp(folder, bare=True)
    return folder, net


def test_run_flow_writes_every_output_and_applies_the_folding(graphs, tmp_path):
    folder, net = graphs
    state = _state(tmp_path, folding={"a": LayerFolding(pe=4, simd=2, ram_style="block")})
    model = run_flow(folder / "g.onnx", tmp_path, state)
    for name in ("model_hw.onnx", "model_specialized.onnx", "folding_config.json", "finn.log", "parent.onnx"):
        assert (tmp_path / name).is_file(), name
    assert set(state.layer_nodes) == {"a", "b"}
    nodes = {n.name: n for n in model.graph.node}
    a, b = (getCustomOp(nodes[state.layer_nodes[k]]) for k in "ab")
    assert (a.get_nodeattr("PE"), a.get_nodeattr("SIMD"), a.get_nodeattr("ram_style")) == (4, 2, "block")
    assert (a.get_nodeattr("MW"), a.get_nodeattr("MH")) == (8, 16)
    assert (b.get_nodeattr("PE"), b.get_nodeattr("SIMD")) == (1, 1)  # not folded: default_folding(16)
    config = json.loads((tmp_path / "folding_config.json").read_text())
    assert config[state.layer_nodes["a"]]["PE"] == 4 and config[state.layer_nodes["a"]]["SIMD"] == 2
    resources = json.loads((tmp_path / "estimate_layer_resources.json").read_text())
    cycles = json.loads((tmp_path / "estimate_layer_cycles.json").read_text())
    assert set(resources) == set(cycles) == set(nodes)
    assert cycles[state.layer_nodes["a"]] == 8 * 16 // (4 * 2)  # MW*MH / (PE*SIMD) for one vector
    # the graph's input is the integer stream of the leading int4 quantiser, times its scale
    assert state.input_datatype == "INT4"
    assert np.isclose(state.input_scale, float(net[0].act_quant.scale()))
    hw = ModelWrapper(str(tmp_path / "model_hw.onnx"))
    assert hw.get_tensor_datatype(hw.graph.input[0].name).name == "INT4"
    assert all(n.domain.startswith("finn.custom_op.fpgadataflow") for n in hw.graph.node)


def test_image_input_is_uint8_pixels_and_a_head_ends_in_the_ctu(graphs, tmp_path):
    folder, _ = graphs
    state = _state(tmp_path, image_input=True, ctu={"policy": "max_prob", "threshold": 0.75, "scale": 0.5})
    model = run_flow(folder / "g.onnx", tmp_path, state)
    assert state.input_datatype == "UINT8" and np.isclose(state.input_scale, 1 / 255)
    last = model.graph.node[-1]
    assert last.op_type.startswith("ConfidenceThreshold")
    ctu = getCustomOp(last)
    assert ctu.get_nodeattr("Policy") == "max_prob" and float(ctu.get_nodeattr("Threshold")) == 0.75
    assert ctu.get_nodeattr("FinalExit") == 0 and ctu.get_nodeattr("Classes") == 4
    assert list(last.output) == [model.graph.output[0].name]
    assert model.get_tensor_shape(model.graph.output[0].name)[-1] == 1  # one decision record per sample


def test_a_folding_that_names_another_number_of_layers_is_refused(graphs, tmp_path):
    folder, _ = graphs
    state = _state(tmp_path, layers=["conv0"], where="the stage of blocks conv0")
    with pytest.raises(ExitflowError) as err:
        run_flow(folder / "g.onnx", tmp_path, state)
    assert str(err.value) == (
        "the stage of blocks conv0: the graph has 2 weight layers but the model lists 1 (conv0); "
        "was the stage exported from this model?"
    )


def test_a_graph_without_an_input_quantiser_is_refused(graphs, tmp_path):
    folder, _ = graphs
    with pytest.raises(
        UnsupportedLayerError, match=r"^head h: the graph must start with a quantiser; it starts with Gemm$"
    ):
        finn_flow.integerize_input(ModelWrapper(str(folder / "bare.onnx")), _state(tmp_path, where="head h"))


def test_a_graph_with_no_hw_layer_is_refused(tmp_path):
    from onnx import TensorProto, helper
    from qonnx.util.basic import qonnx_make_model

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="Relu_0")], "g", [x], [y])
    model = ModelWrapper(qonnx_make_model(graph))
    with pytest.raises(UnsupportedLayerError, match=r"^the stage of blocks fc0: FINN mapped no layer to hardware$"):
        finn_flow.take_dataflow_partition(model, _state(tmp_path, where="the stage of blocks fc0"))
    assert finn_flow.append_ctu(model, _state(tmp_path)) is model  # not a head: unchanged


@pytest.mark.parametrize(
    "scale,quant_scale",
    # found by search: float32 division puts one threshold of each on the wrong side of an integer
    [(0.006134501192718744, 0.8588302135467529), (0.023013731464743614, 0.5983570218086243)],
)
def test_streamlined_thresholds_equal_the_quantiser_on_every_integer(tmp_path, scale, quant_scale):
    """INT8 integers times a scale into a 4-bit quantiser: after exitflow's streamlining, the
    MultiThreshold on the integers gives the quantiser's level (float64) for every input, where
    thresholds kept in float32 would move one across an integer."""
    from onnx import TensorProto, helper
    from qonnx.core.datatype import DataType
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.util.basic import qonnx_make_model

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])
    nodes = [
        helper.make_node("Mul", ["x", "s"], ["xs"]),
        helper.make_node(
            "Quant",
            ["xs", "q", "z", "b"],
            ["y"],
            domain="qonnx.custom_op.general",
            narrow=0,
            signed=1,
            rounding_mode="ROUND",
        ),
    ]
    inits = {"s": scale, "q": quant_scale, "z": 0.0, "b": 4.0}
    graph = helper.make_graph(
        nodes, "g", [x], [y], [helper.make_tensor(k, TensorProto.FLOAT, [], [v]) for k, v in inits.items()]
    )
    model = ModelWrapper(qonnx_make_model(graph))
    model.set_tensor_datatype("x", DataType["INT8"])
    state = _state(tmp_path)
    for step in (finn_flow.qonnx_to_finn, finn_flow.tidy_up, finn_flow.streamline):
        model = step(model, state)
    assert [n.op_type for n in model.graph.node][0] == "MultiThreshold"  # the scale absorbed
    ints = np.arange(-128, 128, dtype=np.float32)[None]
    out = execute_onnx(model, {model.graph.input[0].name: ints})[model.graph.output[0].name]
    levels = np.round(out / np.float32(quant_scale))
    expected = np.clip(np.round(ints.astype(np.float64) * scale / quant_scale), -8, 7)
    assert np.array_equal(levels, expected)


def test_a_pending_interrupt_stops_the_flow(graphs, tmp_path):
    folder, _ = graphs
    INTERRUPTED.set()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_flow(folder / "g.onnx", tmp_path, _state(tmp_path))
    finally:
        INTERRUPTED.clear()
    assert not (tmp_path / "model_hw.onnx").exists()


def test_default_folding_is_pe_1_and_the_smallest_legal_simd():
    assert default_folding(16) == LayerFolding(pe=1, simd=1)
    assert default_folding(2048) == LayerFolding(pe=1, simd=2)  # SIMD >= MW/1024
    assert default_folding(3000).simd == 3  # 3000/1024 = 2.9, and 3 divides 3000
    assert 3000 % default_folding(3000).simd == 0


REBUILD = "run exitflow build again"


@pytest.mark.parametrize(
    "text, message",
    [
        (None, r"layers\.json: missing; run exitflow build again$"),
        ("{not json", r"layers\.json: unreadable or not JSON \(JSONDecodeError\); run exitflow build again$"),
        ("[1]", r'layers\.json: expected \{"layers": \{layer name: FINN node name\}\}, got a JSON list; run'),
        ("{}", r"got no 'layers' key; run exitflow build again$"),
        ('{"layers": [1]}', r"got 'layers' of type list; run"),
        ('{"layers": {"a": ""}}', r"got 'a': ''; run exitflow build again$"),
        ('{"layers": {"a": "N0", "b": 3}}', r"got 'b': 3; run"),
        ('{"layers": {"a": "N0", "b": "N0"}}', r"layers\.json: two layers name the same FINN node; run exitflow build"),
    ],
)
def test_read_layers_refuses_what_the_build_does_not_write(tmp_path, text, message):
    path = tmp_path / "layers.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_layers(path, REBUILD)


def test_read_layers_reads_what_the_build_writes(tmp_path):
    path = tmp_path / "layers.json"
    path.write_text(json.dumps({"layers": {"conv0": "MVAU_hls_0", "fc0": "MVAU_rtl_1"}}))
    assert read_layers(path, REBUILD) == {"conv0": "MVAU_hls_0", "fc0": "MVAU_rtl_1"}
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match=r"unreadable or not JSON \(UnicodeDecodeError\)"):
        read_layers(path, REBUILD)


def test_finn_chatter_sends_everything_to_the_log_and_puts_loggers_back(tmp_path, capsys):
    logger = logging.getLogger("finn_logger")
    own = logging.NullHandler()
    logger.addHandler(own)
    before = (logger.handlers[:], logger.propagate, logger.level)
    try:
        with finn_flow.finn_chatter(tmp_path / "log" / "finn.log", "w") as log_file:
            print("printed line")
            warnings.warn("a warning", UserWarning, stacklevel=1)
            logger.warning("logged line")
            logging.getLogger("qonnx").info("below the level")
            log_file.write("written line\n")
        assert (logger.handlers[:], logger.propagate, logger.level) == before
    finally:
        logger.removeHandler(own)
    text = (tmp_path / "log" / "finn.log").read_text()
    for line in ("printed line", "a warning", "WARNING finn_logger: logged line", "written line"):
        assert line in text
    assert "below the level" not in text
    out = capsys.readouterr()
    assert "printed line" not in out.out and "a warning" not in out.err
    with finn_flow.finn_chatter(tmp_path / "log" / "finn.log") as log_file:  # "a": appends
        print("second")
    assert (tmp_path / "log" / "finn.log").read_text() == text + "second\n"

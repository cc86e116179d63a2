"""The CTU as a FINN layer: Python execution is the policy function, FINN's passes treat it as
one of theirs, and the HLS top function FINN generates compiles with g++ and agrees."""

import numpy as np
import pytest
from onnx import TensorProto, helper
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.custom_op.registry import getCustomOp
from qonnx.transformation.general import GiveUniqueNodeNames
from qonnx.transformation.infer_datatypes import InferDataTypes
from qonnx.transformation.infer_shapes import InferShapes
from qonnx.util.basic import qonnx_make_model

from exitflow.hls_templates import ap_types_include_dir
from exitflow.hls_templates.csim import compile_cpp, run
from exitflow.hls_templates.ctu import CTUParams

PART = "xc7z020clg400-1"


@pytest.fixture(autouse=True)
def finn_build_dir(tmp_path, monkeypatch):
    from exitflow.hw.finn_flow import finn_settings

    with finn_settings(tmp_path / "finn"):
        yield tmp_path / "finn"


def ctu_model(policy, threshold, dtype="INT16", classes=10, pe=2, scale=0.05, final=0, class_input=0):
    import exitflow.hls_templates.ctu_op  # noqa: F401

    inp = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, classes])
    prev = helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 1])
    out = helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 1])
    node = helper.make_node(
        "ConfidenceThreshold",
        ["z", "c"] if class_input else ["z"],
        ["r"],
        domain="finn.custom_op.fpgadataflow",
        backend="fpgadataflow",
        Classes=classes,
        PE=pe,
        Policy=policy,
        Scale=repr(scale),
        Threshold=repr(threshold),
        FinalExit=final,
        ClassInput=class_input,
        inputDataType=dtype,
    )
    inputs = [inp, prev] if class_input else [inp]
    model = ModelWrapper(qonnx_make_model(helper.make_graph([node], "ctu", inputs, [out])))
    model.set_tensor_datatype("z", DataType[dtype])
    return model.transform(InferShapes()).transform(InferDataTypes()).transform(GiveUniqueNodeNames())


def logits(n, bits=16, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.integers(-200, 200, (n, classes))
    z[::3, 3] = z[::3].max(axis=1)  # ties with the maximum
    return z.clip(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)


@pytest.mark.parametrize("policy, threshold", [("max_prob", 0.9), ("margin", 2.0)])
def test_execution_is_the_policy_function(policy, threshold):
    from finn.core.onnx_exec import execute_onnx
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers

    model = ctu_model(policy, threshold)
    params = getCustomOp(model.graph.node[0]).params()
    assert params == CTUParams(policy=policy, classes=10, logit_bits=16, scale=0.05, threshold=threshold, pe=2)
    hls = model.transform(SpecializeLayers(PART))
    assert hls.graph.node[0].op_type == "ConfidenceThreshold_hls"
    for z in logits(200):
        expected = params.pack(params.decide(z[None, :]))
        for m in (model, hls):
            got = execute_onnx(m, {"z": z[None, :].astype(np.float32)})["r"]
            assert np.array_equal(np.asarray(got, dtype=np.int64).ravel(), expected)


def test_final_exit_always_leaves():
    params = getCustomOp(ctu_model("max_prob", 0.0, final=1).graph.node[0]).params()
    assert params.threshold is None and params.decide(logits(100)).exit.all()


def test_finn_estimates_and_datatypes():
    from finn.analysis.fpgadataflow.exp_cycles_per_layer import exp_cycles_per_layer
    from finn.analysis.fpgadataflow.res_estimation import res_estimation
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers

    model = ctu_model("max_prob", 0.9, dtype="INT8").transform(SpecializeLayers(PART))
    (name,) = [n.name for n in model.graph.node]
    res = model.analysis(lambda m: res_estimation(m, PART))[name]
    params = getCustomOp(model.graph.node[0]).params()
    assert (res["LUT"], res["BRAM_18K"], res["DSP"]) == (params.lut(), 0, 0)
    assert model.analysis(exp_cycles_per_layer)[name] == 10
    assert model.get_tensor_datatype("r") == DataType[f"UINT{params.record_bits}"]
    # unsigned logits are widened by a bit so the unit can compare them as signed
    assert getCustomOp(ctu_model("margin", 1.0, dtype="UINT8").graph.node[0]).get_input_datatype() == DataType["INT9"]


DRIVER = r"""
#include <cstdio>
void {top}(hls::stream<ap_uint<{win}>> &in0_V, hls::stream<ap_uint<{wout}>> &out0_V);
int main() {{
    unsigned n; if (std::scanf("%u", &n) != 1) return 2;
    for (unsigned s = 0; s < n; s++) {{
        hls::stream<ap_uint<{win}>> in; hls::stream<ap_uint<{wout}>> out;
        for (unsigned f = 0; f < {folds}; f++) {{
            ap_uint<{win}> w = 0;
            for (unsigned p = 0; p < {pe}; p++) {{
                long long v; std::scanf("%lld", &v); w(({bits})*(p+1)-1, {bits}*p) = ap_int<{bits}>(v); }}
            in.write(w);
        }}
        {top}(in, out);
        std::printf("%s\n", out.read().to_string(10).c_str());
    }}
    return 0;
}}
"""


@pytest.mark.parametrize("policy, threshold", [("max_prob", 0.8), ("margin", 3.0)])
def test_generated_hls_top_compiles_and_agrees(tmp_path, policy, threshold):
    """FINN's PrepareIP writes the top function around exitflow_ctu.hpp; with an empty stand-in
    for finn-hlslib's bnn-library.h (nothing of it is used), g++ builds it."""
    from finn.transformation.fpgadataflow.prepare_ip import PrepareIP
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers

    model = ctu_model(policy, threshold).transform(SpecializeLayers(PART)).transform(GiveUniqueNodeNames())
    model = model.transform(PrepareIP(PART, 10.0))
    inst = getCustomOp(model.graph.node[0])
    folder = __import__("pathlib").Path(inst.get_nodeattr("code_gen_dir_ipgen"))
    top = (folder / f"top_{model.graph.node[0].name}.cpp").read_text()
    (tmp_path / "stub").mkdir()
    (tmp_path / "stub" / "bnn-library.h").write_text("#include <ap_int.h>\n#include <hls_stream.h>\n")
    source = (
        f'#include "{folder}/exitflow_ctu.hpp"\n'
        + top.replace('#include "exitflow_ctu.hpp"', "").replace(
            '#include "bnn-library.h"', f'#include "{tmp_path}/stub/bnn-library.h"'
        )
        + DRIVER.format(
            top=model.graph.node[0].name,
            win=inst.get_instream_width(),
            wout=inst.get_outstream_width(),
            folds=5,
            pe=2,
            bits=16,
        )
    )
    binary = compile_cpp(source, tmp_path / "build", name="top")
    z = logits(300, seed=4)
    out = run(binary, f"{len(z)}\n" + "\n".join(" ".join(map(str, r)) for r in z) + "\n")
    params = inst.params()
    assert np.array_equal(np.array([int(v) for v in out.split()]), params.pack(params.decide(z)))
    assert ap_types_include_dir().is_dir()


def test_agreement_execution_reads_the_previous_class():
    """With a class input, the record is the policy function's given each sample's previous
    class: the same logits exit or stay by that class alone."""
    from finn.core.onnx_exec import execute_onnx
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers

    model = ctu_model("agreement", 0.3, class_input=1)
    inst = getCustomOp(model.graph.node[0])
    params = inst.params()
    assert params.class_input and params.policy == "agreement" and inst.verify_node() == []
    assert model.get_tensor_datatype("c") == DataType["UINT4"] and inst.get_instream_width(1) == 4
    assert inst.get_normal_input_shape(1) == (1, 1) and inst.get_folded_input_shape(1) == (1, 1, 1)
    hls = model.transform(SpecializeLayers(PART))
    assert hls.graph.node[0].op_type == "ConfidenceThreshold_hls"
    rng = np.random.default_rng(2)
    flags = []
    for z in logits(120, seed=5):
        for previous in (int(np.argmax(z)), int(rng.integers(10))):
            expected = params.pack(params.decide(z[None, :], np.array([previous])))
            flags.append(int(expected[0]) >> (params.record_bits - 1))
            feed = {"z": z[None, :].astype(np.float32), "c": np.array([[previous]], dtype=np.float32)}
            for m in (model, hls):
                got = execute_onnx(m, feed)["r"]
                assert np.array_equal(np.asarray(got, dtype=np.int64).ravel(), expected)
    assert 0 < sum(flags) < len(flags)
    # at the first kept exit the unit is max_prob's: one input, the same records
    first = getCustomOp(ctu_model("agreement", 0.3).graph.node[0]).params()
    plain = getCustomOp(ctu_model("max_prob", 0.3).graph.node[0]).params()
    z = logits(200, seed=6)
    assert np.array_equal(first.pack(first.decide(z)), plain.pack(plain.decide(z)))
    # a node whose inputs do not match ClassInput is reported
    broken = ctu_model("agreement", 0.3, class_input=1)
    broken.graph.node[0].input.pop()
    assert getCustomOp(broken.graph.node[0]).verify_node() == ["ClassInput 1 needs 2 inputs"]


def test_agreement_estimates():
    from finn.analysis.fpgadataflow.exp_cycles_per_layer import exp_cycles_per_layer
    from finn.analysis.fpgadataflow.res_estimation import res_estimation
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers

    lut = {}
    for policy, class_input in (("max_prob", 0), ("agreement", 0), ("agreement", 1)):
        model = ctu_model(policy, 0.9, dtype="INT8", class_input=class_input).transform(SpecializeLayers(PART))
        name = model.graph.node[0].name
        lut[policy, class_input] = model.analysis(lambda m: res_estimation(m, PART))[name]["LUT"]
        assert model.analysis(exp_cycles_per_layer)[name] == 10
    assert lut["agreement", 0] == lut["max_prob", 0]
    assert lut["agreement", 1] == lut["max_prob", 0] + 4 + 2  # 4-bit class comparator, AND and handshake


AGREEMENT_DRIVER = r"""
#include <cstdio>
void {top}(hls::stream<ap_uint<{win}>> &in0_V, hls::stream<ap_uint<{wcls}>> &in1_V,
           hls::stream<ap_uint<{wout}>> &out0_V);
int main() {{
    unsigned n; if (std::scanf("%u", &n) != 1) return 2;
    for (unsigned s = 0; s < n; s++) {{
        hls::stream<ap_uint<{win}>> in; hls::stream<ap_uint<{wcls}>> prev; hls::stream<ap_uint<{wout}>> out;
        for (unsigned f = 0; f < {folds}; f++) {{
            ap_uint<{win}> w = 0;
            for (unsigned p = 0; p < {pe}; p++) {{
                long long v; std::scanf("%lld", &v); w(({bits})*(p+1)-1, {bits}*p) = ap_int<{bits}>(v); }}
            in.write(w);
        }}
        unsigned c; std::scanf("%u", &c); prev.write(c);
        {top}(in, prev, out);
        std::printf("%s\n", out.read().to_string(10).c_str());
    }}
    return 0;
}}
"""


def _generated_top(tmp_path, model):
    """FINN's generated top function of the only node, with the template header and an empty
    stand-in for finn-hlslib's bnn-library.h included by absolute path."""
    from finn.transformation.fpgadataflow.prepare_ip import PrepareIP
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers

    model = model.transform(SpecializeLayers(PART)).transform(GiveUniqueNodeNames())
    model = model.transform(PrepareIP(PART, 10.0))
    inst = getCustomOp(model.graph.node[0])
    folder = __import__("pathlib").Path(inst.get_nodeattr("code_gen_dir_ipgen"))
    top = (folder / f"top_{model.graph.node[0].name}.cpp").read_text()
    (tmp_path / "stub").mkdir(parents=True, exist_ok=True)
    (tmp_path / "stub" / "bnn-library.h").write_text("#include <ap_int.h>\n#include <hls_stream.h>\n")
    source = f'#include "{folder}/exitflow_ctu.hpp"\n' + top.replace('#include "exitflow_ctu.hpp"', "").replace(
        '#include "bnn-library.h"', f'#include "{tmp_path}/stub/bnn-library.h"'
    )
    return model, inst, top, source


def test_generated_agreement_top_reads_the_class_stream_and_agrees(tmp_path):
    """The agreement unit's top function has the class stream as ``in1_V`` (an AXI stream, the
    stitched IP's second input), calls ctu_agreement, compiles with g++ and agrees with the
    policy function; at the first kept exit the top is max_prob's."""
    model, inst, top, source = _generated_top(tmp_path, ctu_model("agreement", 0.3, class_input=1))
    name = model.graph.node[0].name
    assert "exitflow::ctu_agreement<" in top and "(in0_V, in1_V, out0_V, ROM, THRESHOLD, SAMPLES)" in top
    assert "#pragma HLS INTERFACE axis port=in1_V" in top and "hls::stream<ap_uint<4>> &in1_V" in top
    intf = inst.get_verilog_top_module_intf_names()["s_axis"]
    assert [n for n, _ in intf] == ["in0_V", "in1_V"] and intf[1][1] == 8  # 4 bits, padded to a byte
    source += AGREEMENT_DRIVER.format(
        top=name, win=inst.get_instream_width(), wcls=4, wout=inst.get_outstream_width(), folds=5, pe=2, bits=16
    )
    binary = compile_cpp(source, tmp_path / "build", name="agreement_top")
    z = logits(300, seed=7)
    previous = np.where(np.arange(300) % 2 == 0, np.argmax(z, axis=1), (np.argmax(z, axis=1) + 1) % 10)
    text = f"{len(z)}\n" + "\n".join(" ".join(map(str, [*r, c])) for r, c in zip(z, previous, strict=True)) + "\n"
    out = np.array([int(v) for v in run(binary, text).split()])
    params = inst.params()
    expected = params.pack(params.decide(z, previous))
    assert np.array_equal(out, expected)
    assert 0 < (expected >> (params.record_bits - 1)).sum() < (previous == np.argmax(z, axis=1)).sum()
    _, first, first_top, _ = _generated_top(tmp_path / "first", ctu_model("agreement", 0.3))
    assert "exitflow::ctu_max_prob<" in first_top and "in1_V" not in first_top

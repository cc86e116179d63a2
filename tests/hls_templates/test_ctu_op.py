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
void {top}(hls::stream<ap_uint<{win}>> &in0_V, hls::stream<ap_uint<{wout}>> &out0_V{reg_param});
int main() {{
    unsigned n; if (std::scanf("%u", &n) != 1) return 2;
    for (unsigned s = 0; s < n; s++) {{
        hls::stream<ap_uint<{win}>> in; hls::stream<ap_uint<{wout}>> out;
        unsigned long long r; if (std::scanf("%llu", &r) != 1) return 2;
        for (unsigned f = 0; f < {folds}; f++) {{
            ap_uint<{win}> w = 0;
            for (unsigned p = 0; p < {pe}; p++) {{
                long long v; std::scanf("%lld", &v); w(({bits})*(p+1)-1, {bits}*p) = ap_int<{bits}>(v); }}
            in.write(w);
        }}
        {top}(in, out{reg_arg});
        std::printf("%s\n", out.read().to_string(10).c_str());
    }}
    return 0;
}}
"""


def register_driver(params):
    """The driver's parts for the top's AXI-lite ``threshold`` (an early exit's) or none (the
    final exit's): the register value read before each sample's logits is its argument."""
    if params.has_threshold_register:
        return {"reg_param": ", ap_uint<CODE_BITS + 1> threshold", "reg_arg": ", ap_uint<CODE_BITS + 1>(r)"}
    return {"reg_param": "", "reg_arg": ""}


@pytest.mark.parametrize("policy, threshold, final", [("max_prob", 0.8, 0), ("margin", 3.0, 0), ("max_prob", 0.0, 1)])
def test_generated_hls_top_compiles_and_agrees(tmp_path, policy, threshold, final, threshold_registers):
    """FINN's PrepareIP writes the top function around exitflow_ctu.hpp; with an empty stand-in
    for finn-hlslib's bnn-library.h (nothing of it is used), g++ builds it. Called once per sample
    with that sample's threshold register (an early exit's; the final exit has none), it gives the
    policy function's records with the constant the register selects."""
    model, inst, top, source = _generated_top(tmp_path, ctu_model(policy, threshold, final=final))
    params = inst.params()
    source += DRIVER.format(
        top=model.graph.node[0].name,
        win=inst.get_instream_width(),
        wout=inst.get_outstream_width(),
        folds=5,
        pe=2,
        bits=16,
        **register_driver(params),
    )
    binary = compile_cpp(source, tmp_path / "build", name="top")
    rng = np.random.default_rng(4)
    z = logits(300, seed=4)
    registers = threshold_registers(rng, params.code_bits, len(z)) if not final else np.zeros(len(z), dtype=np.int64)
    text = f"{len(z)}\n" + "\n".join(" ".join(map(str, [reg, *r])) for reg, r in zip(registers, z, strict=True)) + "\n"
    out = np.array([int(v) for v in run(binary, text).split()])
    assert np.array_equal(out, params.pack(params.decide(z, threshold_register=registers)))
    if final:
        assert (out >> (params.record_bits - 1)).all()
    else:  # the overrides do change records
        assert (out != params.pack(params.decide(z))).any()
    assert ap_types_include_dir().is_dir()


def test_threshold_register_interface():
    """An early exit's top has the scalar ``threshold`` of CODE_BITS + 1 bits on the AXI-lite
    bundle ``control`` at offset 0x20 (FINN makes ``s_axi_control`` the stitched IP's
    ``s_axi_control_0``), next to ap_ctrl_none; the final exit's has no register and no AXI-lite
    port."""
    from finn.transformation.fpgadataflow.prepare_ip import PrepareIP
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers

    for policy, final, class_input in (
        ("max_prob", 0, 0),
        ("margin", 0, 0),
        ("agreement", 0, 1),
        ("max_prob", 1, 0),
        ("margin", 1, 0),
    ):
        model = ctu_model(policy, 0.0 if final else 0.7, final=final, class_input=class_input)
        model = model.transform(SpecializeLayers(PART)).transform(GiveUniqueNodeNames())
        model = model.transform(PrepareIP(PART, 10.0))
        inst = getCustomOp(model.graph.node[0])
        name = model.graph.node[0].name
        folder = __import__("pathlib").Path(inst.get_nodeattr("code_gen_dir_ipgen"))
        top = (folder / f"top_{name}.cpp").read_text()
        signature = top[top.index(f"void {name}(") :].split("\n")[0]
        assert "#pragma HLS INTERFACE ap_ctrl_none port=return" in top
        if final:
            assert "threshold" not in signature and "s_axilite" not in top
            assert "THRESHOLD, ap_uint<CODE_BITS + 1>(0), SAMPLES)" in top
            assert inst.get_verilog_top_module_intf_names()["axilite"] == []
        else:
            assert signature.endswith(", ap_uint<CODE_BITS + 1> threshold)")
            assert top.count("#pragma HLS INTERFACE s_axilite port=threshold bundle=control offset=0x20") == 1
            assert top.count("s_axilite") == 1 and "THRESHOLD, threshold, SAMPLES)" in top
            assert inst.get_verilog_top_module_intf_names()["axilite"] == ["s_axi_control"]


CPPSIM_NPY = r"""
// stand-in for FINN's npy2stream headers: each .npy is a text file of packed words, in decimal
#include <ap_int.h>
#include <hls_stream.h>
#include <cstdio>
#include <string>
#include <vector>
template <typename PackedT, typename ElemT, typename NpyT>
void npy2apintstream(const char *npy, hls::stream<PackedT> &out, bool = true, size_t = 1) {
    FILE *f = std::fopen((std::string(npy) + ".txt").c_str(), "r");
    char word[256];
    while (std::fscanf(f, "%255s", word) == 1) out.write(PackedT(word, 10));
    std::fclose(f);
}
template <typename PackedT, typename ElemT, typename NpyT>
void apintstream2npy(hls::stream<PackedT> &in, const std::vector<size_t> &, const char *npy, bool = true,
                     size_t = 1, size_t = 1) {
    FILE *f = std::fopen((std::string(npy) + ".txt").c_str(), "w");
    while (!in.empty()) std::fprintf(f, "%s\n", in.read().to_string(10).c_str());
    std::fclose(f);
}
"""


@pytest.mark.parametrize(
    "policy, final, class_input", [("max_prob", 0, 0), ("agreement", 0, 1), ("margin", 0, 0), ("margin", 1, 0)]
)
def test_cppsim_program_compiles_with_the_design_threshold(tmp_path, policy, final, class_input):
    """FINN's cppsim program (PrepareCppSim) has no AXI-lite source for ``threshold``: it is 0,
    the design's constant. Built with g++ (stand-ins for the npy readers and finn-hlslib) on a
    batch of samples, it gives today's records."""
    from pathlib import Path

    from finn.transformation.fpgadataflow.prepare_cppsim import PrepareCppSim
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers

    n = 60
    model = ctu_model(policy, 0.0 if final else 0.5, final=final, class_input=class_input)
    model = model.transform(SpecializeLayers(PART)).transform(GiveUniqueNodeNames())
    getCustomOp(model.graph.node[0]).set_nodeattr("numInputVectors", [n])
    model = model.transform(PrepareCppSim())
    inst = getCustomOp(model.graph.node[0])
    params = inst.params()
    folder = Path(inst.get_nodeattr("code_gen_dir_cppsim"))
    assert (folder / "exitflow_ctu.hpp").is_file()  # the header travels with the program
    program = (folder / "execute_ConfidenceThreshold_hls.cpp").read_text()
    assert ("static const ap_uint<CODE_BITS + 1> threshold = 0;" in program) != bool(final)
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "npy.hpp").write_text(CPPSIM_NPY)
    source = f'#include "{stub}/npy.hpp"\n' + program.replace(
        '#include "exitflow_ctu.hpp"', f'#include "{folder}/exitflow_ctu.hpp"'
    )
    for header in ("cnpy.h", "npy2apintstream.hpp", "npy2vectorstream.hpp", "bnn-library.h"):
        source = source.replace(f'#include "{header}"', "")
    binary = compile_cpp(source, tmp_path / "build", name="cppsim")
    z = logits(n, seed=9)
    words = [
        sum((int(v) & 0xFFFF) << (16 * p) for p, v in enumerate(row[f : f + 2])) for row in z for f in range(0, 10, 2)
    ]
    (folder / "input_0.npy.txt").write_text("\n".join(map(str, words)) + "\n")
    previous = None
    if class_input:
        previous = np.where(np.arange(n) % 2 == 0, np.argmax(z, axis=1), (np.argmax(z, axis=1) + 1) % 10)
        (folder / "input_1.npy.txt").write_text("\n".join(map(str, previous)) + "\n")
    run(binary, "")
    out = np.array([int(v) for v in (folder / "output_0.npy.txt").read_text().split()])
    assert np.array_equal(out, params.pack(params.decide(z, previous)))


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
           hls::stream<ap_uint<{wout}>> &out0_V, ap_uint<CODE_BITS + 1> threshold);
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
        unsigned long long r; std::scanf("%llu", &r);
        {top}(in, prev, out, ap_uint<CODE_BITS + 1>(r));
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


def test_generated_agreement_top_reads_the_class_stream_and_agrees(tmp_path, threshold_registers):
    """The agreement unit's top function has the class stream as ``in1_V`` (an AXI stream, the
    stitched IP's second input), calls ctu_agreement, compiles with g++ and agrees with the
    policy function (each sample with its threshold register); at the first kept exit the top is
    max_prob's."""
    model, inst, top, source = _generated_top(tmp_path, ctu_model("agreement", 0.3, class_input=1))
    name = model.graph.node[0].name
    assert "exitflow::ctu_agreement<" in top and "(in0_V, in1_V, out0_V, ROM, THRESHOLD, threshold, SAMPLES)" in top
    assert "#pragma HLS INTERFACE axis port=in1_V" in top and "hls::stream<ap_uint<4>> &in1_V" in top
    intf = inst.get_verilog_top_module_intf_names()["s_axis"]
    assert [n for n, _ in intf] == ["in0_V", "in1_V"] and intf[1][1] == 8  # 4 bits, padded to a byte
    source += AGREEMENT_DRIVER.format(
        top=name, win=inst.get_instream_width(), wcls=4, wout=inst.get_outstream_width(), folds=5, pe=2, bits=16
    )
    binary = compile_cpp(source, tmp_path / "build", name="agreement_top")
    z = logits(300, seed=7)
    previous = np.where(np.arange(300) % 2 == 0, np.argmax(z, axis=1), (np.argmax(z, axis=1) + 1) % 10)
    params = inst.params()
    for registers in (
        np.zeros(300, dtype=np.int64),
        threshold_registers(np.random.default_rng(8), params.code_bits, 300),
    ):
        rows = zip(z, previous, registers, strict=True)
        text = f"{len(z)}\n" + "\n".join(" ".join(map(str, [*r, c, reg])) for r, c, reg in rows) + "\n"
        out = np.array([int(v) for v in run(binary, text).split()])
        assert np.array_equal(out, params.pack(params.decide(z, previous, threshold_register=registers)))
    expected = params.pack(params.decide(z, previous))
    assert not np.array_equal(out, expected)  # the overrides change records
    assert 0 < (expected >> (params.record_bits - 1)).sum() < (previous == np.argmax(z, axis=1)).sum()
    _, first, first_top, _ = _generated_top(tmp_path / "first", ctu_model("agreement", 0.3))
    assert "exitflow::ctu_max_prob<" in first_top and "in1_V" not in first_top

"""Gate and merge as FINN layers: execution agrees with the models, FINN specialises them,
estimates them and generates HLS code that g++ compiles."""

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper
from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.custom_op.registry import getCustomOp
from qonnx.transformation.general import GiveUniqueNodeNames
from qonnx.util.basic import qonnx_make_model

from exitflow.hls_templates.csim import compile_cpp
from exitflow.hls_templates.routing import TagFormat, gate_class_model, gate_model, gate_resources, merge_model

PART = "xc7z020clg400-1"
FMT = TagFormat(16, 2, 19)


@pytest.fixture(autouse=True)
def finn_build_dir(tmp_path):
    from exitflow.hw.finn_flow import finn_settings

    with finn_settings(tmp_path / "finn"):
        yield


def gate_graph(samples=40, elements=12, pe=4, depth=8, class_bits=0, class_lsb=0):
    import exitflow.hls_templates.routing_ops  # noqa: F401

    ins = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
        for n, s in (("fm", [samples, elements]), ("ids", [samples, 1]), ("rec", [samples, 1]))
    ]
    names = ["fm_out", "ids_out", "tagged"] + (["cls_out"] if class_bits else [])
    outs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, [samples, elements if n == "fm_out" else 1]) for n in names
    ]
    node = helper.make_node(
        "ExitGate",
        ["fm", "ids", "rec"],
        names,
        domain="finn.custom_op.fpgadataflow",
        backend="fpgadataflow",
        Samples=samples,
        Elements=elements,
        PE=pe,
        ExitIndex=1,
        IdBits=16,
        ExitBits=2,
        RecordBits=19,
        Depth=depth,
        fmDataType="UINT4",
        ClassBits=class_bits,
        ClassLsb=class_lsb,
    )
    model = ModelWrapper(qonnx_make_model(helper.make_graph([node], "gate", ins, outs)))
    model.set_tensor_datatype("fm", DataType["UINT4"])
    return model.transform(GiveUniqueNodeNames())


def test_gate_execution_matches_the_model():
    from finn.core.onnx_exec import execute_onnx

    rng = np.random.default_rng(0)
    n = 40
    fm = rng.integers(0, 16, (n, 12)).astype(np.float32)
    ids = np.arange(100, 100 + n)
    rec = rng.integers(0, 1 << 18, n) | (rng.integers(0, 2, n) << 18)
    out = execute_onnx(
        gate_graph(), {"fm": fm, "ids": ids[:, None].astype(np.float32), "rec": rec[:, None].astype(np.float32)}
    )
    go_ids, go_fms, tagged = gate_model(ids.tolist(), rec.tolist(), fm.astype(int).tolist(), 1, FMT)
    kept = out["ids_out"].ravel() != -1
    assert out["ids_out"].ravel()[kept].tolist() == go_ids
    assert out["fm_out"][kept].astype(int).tolist() == go_fms
    assert [int(t) for t in out["tagged"].ravel() if t != -1] == tagged


def test_merge_execution_matches_the_model():
    from finn.core.onnx_exec import execute_onnx

    import exitflow.hls_templates.routing_ops  # noqa: F401

    ins = [helper.make_tensor_value_info(f"t{k}", TensorProto.FLOAT, [6, 1]) for k in range(3)]
    out = helper.make_tensor_value_info("merged", TensorProto.FLOAT, [6, 1])
    node = helper.make_node(
        "ExitMerge",
        [i.name for i in ins],
        ["merged"],
        domain="finn.custom_op.fpgadataflow",
        backend="fpgadataflow",
        Samples=6,
        Exits=3,
        IdBits=16,
        ExitBits=2,
        RecordBits=19,
    )
    model = ModelWrapper(qonnx_make_model(helper.make_graph([node], "merge", ins, [out])))
    streams = [[11, 12, -1, -1, -1, -1], [21, -1, -1, -1, -1, -1], [31, 32, 33, -1, -1, -1]]
    got = execute_onnx(model, {f"t{k}": np.array(s, dtype=np.int64)[:, None] for k, s in enumerate(streams)})["merged"]
    assert got.ravel().tolist() == merge_model([[v for v in s if v != -1] for s in streams])


def test_gate_specialises_estimates_and_generates_code(tmp_path):
    from finn.analysis.fpgadataflow.exp_cycles_per_layer import exp_cycles_per_layer
    from finn.analysis.fpgadataflow.res_estimation import res_estimation
    from finn.transformation.fpgadataflow.prepare_ip import PrepareIP
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers

    model = gate_graph(depth=64).transform(SpecializeLayers(PART)).transform(GiveUniqueNodeNames())
    node = model.graph.node[0]
    assert node.op_type == "ExitGate_hls"
    res = model.analysis(lambda m: res_estimation(m, PART))[node.name]
    assert res["DSP"] == 0 and res["LUT"] > 0 and res["BRAM_18K"] == 0  # 64 x 3 words x 16 bits fit LUTRAM
    assert model.analysis(exp_cycles_per_layer)[node.name] == 40 * 3
    assert getCustomOp(gate_graph(depth=4096).graph.node[0]).bram_estimation() > 0
    model = model.transform(PrepareIP(PART, 10.0))
    folder = Path(getCustomOp(model.graph.node[0]).get_nodeattr("code_gen_dir_ipgen"))
    top = (folder / f"top_{node.name}.cpp").read_text()
    assert "exitflow::gate<3, 16, ID_BITS, EXIT_BITS, REC_BITS, REC_BITS - 1>" in top
    (tmp_path / "stub").mkdir()
    (tmp_path / "stub" / "bnn-library.h").write_text("#include <ap_int.h>\n#include <hls_stream.h>\n")
    source = (
        top.replace('#include "bnn-library.h"', f'#include "{tmp_path}/stub/bnn-library.h"').replace(
            '#include "exitflow_gate.hpp"', f'#include "{folder}/exitflow_gate.hpp"'
        )
        + "\nint main() { return 0; }\n"
    )
    assert compile_cpp(source, tmp_path / "build", name="gate_top").exists()


def test_gate_before_an_agreement_head_sends_the_classes(tmp_path):
    """With ClassBits, the gate's fourth output is the class field of every record that goes on
    (masked where a sample leaves): execution, estimates and the generated top."""
    from finn.analysis.fpgadataflow.res_estimation import res_estimation
    from finn.core.onnx_exec import execute_onnx
    from finn.transformation.fpgadataflow.prepare_ip import PrepareIP
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers

    rng = np.random.default_rng(1)
    n = 40
    fm = rng.integers(0, 16, (n, 12)).astype(np.float32)
    ids = np.arange(200, 200 + n)
    rec = rng.integers(0, 1 << 18, n) | (rng.integers(0, 2, n) << 18)
    model = gate_graph(class_bits=4, class_lsb=14)
    assert getCustomOp(model.graph.node[0]).verify_node() == []
    out = execute_onnx(
        model, {"fm": fm, "ids": ids[:, None].astype(np.float32), "rec": rec[:, None].astype(np.float32)}
    )
    go_ids, go_fms, tagged, classes = gate_class_model(
        ids.tolist(), rec.tolist(), fm.astype(int).tolist(), 1, FMT, 14, 4
    )
    kept = out["ids_out"].ravel() != -1
    assert out["ids_out"].ravel()[kept].tolist() == go_ids and out["fm_out"][kept].astype(int).tolist() == go_fms
    assert [int(t) for t in out["tagged"].ravel() if t != -1] == tagged
    assert out["cls_out"].ravel()[kept].astype(int).tolist() == classes and (out["cls_out"].ravel()[~kept] == -1).all()
    assert 1 < len(set(classes)) and 0 < len(classes) < n
    hls = model.transform(SpecializeLayers(PART)).transform(GiveUniqueNodeNames())
    node = hls.graph.node[0]
    inst = getCustomOp(node)
    assert inst.get_outstream_width(3) == 4 and inst.get_output_datatype(3) == DataType["UINT4"]
    lut = hls.analysis(lambda m: res_estimation(m, PART))[node.name]["LUT"]
    assert lut == gate_resources(16, 3, 8, 16, 4)[0] == gate_resources(16, 3, 8)[0] + 4 + 2
    hls = hls.transform(PrepareIP(PART, 10.0))
    folder = Path(getCustomOp(hls.graph.node[0]).get_nodeattr("code_gen_dir_ipgen"))
    top = (folder / f"top_{node.name}.cpp").read_text()
    assert "exitflow::gate_class<3, 16, ID_BITS, EXIT_BITS, REC_BITS, REC_BITS - 1, 4, 14>" in top
    assert "(fm_in, id_in, rec_in, fm_out, id_out, cls_out, exit_out, 1, SAMPLES)" in top
    assert "#pragma HLS INTERFACE axis port=cls_out" in top and "hls::stream<ap_uint<4>> &cls_out" in top
    (tmp_path / "stub").mkdir()
    (tmp_path / "stub" / "bnn-library.h").write_text("#include <ap_int.h>\n#include <hls_stream.h>\n")
    source = (
        top.replace('#include "bnn-library.h"', f'#include "{tmp_path}/stub/bnn-library.h"').replace(
            '#include "exitflow_gate.hpp"', f'#include "{folder}/exitflow_gate.hpp"'
        )
        + "\nint main() { return 0; }\n"
    )
    assert compile_cpp(source, tmp_path / "build", name="gate_class_top").exists()
    broken = gate_graph(class_bits=4, class_lsb=15)
    assert getCustomOp(broken.graph.node[0]).verify_node() == ["the class field must lie below the record's exit flag"]
    broken.graph.node[0].output.pop()
    assert "ClassBits 4 needs 4 outputs" in getCustomOp(broken.graph.node[0]).verify_node()

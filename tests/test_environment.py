"""The pinned environment does what exitflow needs of it, without Vivado."""

import numpy as np
import pytest


def test_finn_imports_without_vivado(tmp_path, monkeypatch):
    monkeypatch.setenv("FINN_BUILD_DIR", str(tmp_path))
    from finn.util.settings import initialize_dummy_settings

    initialize_dummy_settings()
    import finn.core.onnx_exec  # noqa: F401
    import finn.transformation.fpgadataflow.specialize_layers  # noqa: F401
    from finn.util.basic import pynq_part_map

    assert pynq_part_map["Pynq-Z2"] == "xc7z020clg400-1"


def test_brevitas_exports_qonnx_that_qonnx_executes(tmp_path):
    """torch 2.13 + brevitas 0.13.4 + qonnx 1.0.0 work together: export and execute agree."""
    import torch
    from brevitas.export import export_qonnx
    from brevitas.nn import QuantIdentity, QuantLinear
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        QuantIdentity(bit_width=4, return_quant_tensor=True),
        QuantLinear(8, 3, bias=False, weight_bit_width=4),
    ).eval()
    x = torch.rand(2, 8)
    path = tmp_path / "tiny.onnx"
    export_qonnx(model, input_t=x, export_path=str(path))
    wrapper = ModelWrapper(str(path)).transform(InferShapes())
    inp = wrapper.graph.input[0].name
    out = execute_onnx(wrapper, {inp: x.numpy()})[wrapper.graph.output[0].name]
    expected = model(x).detach().numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("module", ["matplotlib", "jinja2", "psutil", "tqdm", "yaml", "sklearn", "mlxtend"])
def test_library_imports(module):
    __import__(module)

"""Per-stage QONNX export: linear graphs whose chained execution reproduces every exit's
integer logits bit for bit."""

import json

import numpy as np
import pytest
import torch
from qonnx.core.modelwrapper import ModelWrapper

from exitflow.core.data import DataSpec, load_splits
from exitflow.core.errors import ConfigError
from exitflow.core.schema import to_data
from exitflow.quant.config import ModelConfig
from exitflow.quant.export import export_run, export_stages, is_linear_graph, run_stages
from exitflow.quant.network import build_model
from exitflow.quant.train import to_input

from .conftest import randomise_batch_norm

SAMPLES = 100


def _brevitas_logits(model, x):
    with torch.no_grad():
        return [o.int().numpy().astype(np.int64) for o in model(x)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "backbone, exits",
    [
        ("lenet", ["conv0", "fc0"]),
        ("lenet", ["conv1"]),
        ("lenet", []),
        ("cnv", ["conv0", "conv3", "fc0"]),
        ("cnv", ["conv1"]),
        ("resnet8", ["stack1", "stack2"]),
        ("resnet8", ["stem"]),
        ("mobilenet", ["sep1", "sep4"]),
        ("mobilenet", ["stem", "sep2"]),
    ],
)
def test_chained_stages_reproduce_the_integer_logits(tmp_path, backbone, exits):
    shape = None if backbone == "lenet" else (3, 32, 32)
    test = load_splits(DataSpec(name="mnist5k", shape=shape)).test
    torch.manual_seed(1)
    preset = {"cnv": "w2a2", "resnet8": "w4a4", "mobilenet": "w4a4"}.get(backbone, "w4a4")
    model = build_model(ModelConfig(backbone=backbone, preset=preset), test.shape, 10)
    randomise_batch_norm(model)
    model.eval()
    x = to_input(test.x[:SAMPLES])
    manifest = to_data(export_stages(model, exits, tmp_path / "stages", x[:1]))
    kept = [e for e in model.exit_names if e in exits] + [model.exit_names[-1]]
    assert manifest["exits"] == kept
    for k in range(len(kept)):
        for kind in ("stage", "head"):
            graph = ModelWrapper(str(tmp_path / "stages" / f"{kind}{k}.onnx"))
            # a residual block forks and joins inside its stage; every other graph is one chain
            branches = (
                backbone == "resnet8"
                and kind == "stage"
                and any(b.startswith("stack") for b in manifest["stages"][k]["blocks"])
            )
            assert is_linear_graph(graph) != branches, f"{kind}{k}: linear graph {is_linear_graph(graph)}"
    expected = _brevitas_logits(model, x)
    produced = run_stages(tmp_path / "stages", x.numpy())
    assert len(produced) == len(kept)
    for name, logits in zip(kept, produced, strict=False):
        reference = expected[model.exit_names.index(name)]
        assert logits.shape == (SAMPLES, 10)
        assert np.array_equal(logits, reference), f"exit {name}: exported stages differ from Brevitas"
        assert len(np.unique(logits)) > 20  # real, varied logits, not a degenerate network


def test_export_run_writes_the_manifest(digits_run):
    manifest = to_data(export_run(digits_run, ["conv1"]))
    stages = digits_run / "stages"
    assert sorted(p.name for p in stages.iterdir()) == [
        "head0.onnx",
        "head1.onnx",
        "manifest.json",
        "stage0.onnx",
        "stage1.onnx",
    ]
    assert json.loads((stages / "manifest.json").read_text()) == manifest
    assert [s["blocks"] for s in manifest["stages"]] == [["conv0", "conv1"], ["fc0", "fc1"]]
    assert manifest["stages"][1]["input_shape"] == manifest["stages"][0]["output_shape"]
    assert all(h["scale"] > 0 and h["logit_bits"] > 8 and h["num_classes"] == 10 for h in manifest["heads"])


def test_unknown_exit_is_rejected_and_nothing_is_written(digits_run):
    before = sorted((digits_run).iterdir())
    with pytest.raises(
        ConfigError,
        match="exits: 'conv7' is not a candidate exit of this model; candidate exits: conv0, conv1, fc0, fc1",
    ):
        export_run(digits_run, ["conv7"])
    assert sorted(digits_run.iterdir()) == before

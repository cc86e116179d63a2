"""The residual and depthwise-separable backbones at the narrowest and the widest presets with
several bits (w2a2, w8a8): built through FINN and cosimulated bit-exactly, the vectorised engine on
the whole test split and FINN's execution on a few samples."""

import pytest

from exitflow.cosim import cosimulate

from .conftest import MOBILENET_BLOCKS, RESNET8_BLOCKS, built_run, design_data

CASES = [
    ("resnet8", "w2a2", RESNET8_BLOCKS, ["stack1"]),
    ("resnet8", "w8a8", RESNET8_BLOCKS, ["stack1"]),
    ("mobilenet", "w2a2", MOBILENET_BLOCKS, ["sep2"]),
    ("mobilenet", "w8a8", MOBILENET_BLOCKS, ["sep2"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("backbone, preset, blocks, exits", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_preset_builds_and_cosimulates_bit_exactly(tmp_path, tiny_trainer, backbone, preset, blocks, exits):
    source = tiny_trainer(tmp_path, backbone, preset, width=0.25, images=120)
    run, path = built_run(source, tmp_path / "built", design_data(source, backbone, blocks, exits, "max_prob"))
    report = cosimulate(run, path, engine="both", reference_samples=4)
    assert report.samples > 0 and report.engines[1].samples == 4
    assert report.mismatch_count == 0, [m.describe() for m in report.mismatches]
    assert report.engines[0].matches_model == report.samples

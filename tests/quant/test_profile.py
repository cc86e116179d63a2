"""Profiling: the files, and figures that follow from the one integer policy function."""

import json

import numpy as np
import pytest

from exitflow.quant.policies import confidence_code, decide, exits, route, threshold_code
from exitflow.quant.profile import MAX_PROB_GRID, load_profile, profile


@pytest.fixture(scope="module")
def profiled(digits_run):
    summary = profile(digits_run)
    return digits_run, summary, np.load(digits_run / "profile.npz")


def test_files_are_written(profiled):
    run, summary, arrays = profiled
    assert json.loads((run / "profile.json").read_text()) == summary
    assert (run / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names = list(arrays["exit_names"])
    assert names == ["conv0", "conv1", "fc0", "fc1"]
    for split in ("val", "test"):
        n = summary["splits"][split]["samples"]
        assert arrays[f"{split}_logits"].shape == (n, 4, 10)
        assert arrays[f"{split}_code_max_prob"].shape == (n, 4)
        assert arrays[f"{split}_correct"].dtype == bool


def test_codes_are_the_policy_function_of_the_logits(profiled):
    _, _, arrays = profiled
    for k in range(4):
        for policy in ("max_prob", "margin"):
            _, code = confidence_code(
                policy,
                arrays["test_logits"][:, k],
                float(arrays["scales"][k]),
                int(arrays["logit_bits"][k]),
                int(arrays["frac_bits"]),
            )
            assert np.array_equal(code, arrays[f"test_code_{policy}"][:, k])
    assert np.array_equal(arrays["test_pred"], arrays["test_logits"].argmax(axis=2))
    assert np.array_equal(arrays["test_correct"], arrays["test_pred"] == arrays["test_labels"][:, None])


def test_agreement_reads_the_max_prob_code_and_the_predictions(profiled):
    """profile.npz stores max_prob's code once; load_profile gives every policy its code, so the
    search and the cosimulation read ``{split}_code_agreement``, and the classes its test
    compares are ``{split}_pred``."""
    run, _, arrays = profiled
    assert "test_code_agreement" not in arrays.files  # not stored twice
    loaded = load_profile(run)
    for split in ("val", "test"):
        code = loaded[f"{split}_code_agreement"]
        assert np.array_equal(code, arrays[f"{split}_code_max_prob"])
        for k in range(4):
            cls, own = confidence_code(
                "agreement",
                arrays[f"{split}_logits"][:, k],
                float(arrays["scales"][k]),
                int(arrays["logit_bits"][k]),
                int(arrays["frac_bits"]),
            )
            assert np.array_equal(own, code[:, k]) and np.array_equal(cls, loaded[f"{split}_pred"][:, k])
    # a cascade of every exit with agreement, from the profile alone, against the CTU one sample at a time
    scales, logits = arrays["scales"], arrays["test_logits"]
    constants = [threshold_code("agreement", 0.8, float(s)) for s in scales[:-1]]
    taken = route("agreement", loaded["test_code_agreement"], constants, loaded["test_pred"])
    for i in range(len(taken)):
        want, previous = 3, None
        for k in range(3):
            d = decide(
                "agreement",
                logits[i : i + 1, k],
                float(scales[k]),
                int(arrays["logit_bits"][k]),
                constants[k],
                previous_class=previous,
            )
            if d.exit[0]:
                want = k
                break
            previous = d.cls
        assert taken[i] == want
    assert len(set(taken.tolist())) >= 2


def test_threshold_table_matches_a_direct_computation(profiled):
    _, summary, arrays = profiled
    table = summary["splits"]["test"]["max_prob"]
    assert table["thresholds"] == list(MAX_PROB_GRID)
    codes, correct = arrays["test_code_max_prob"], arrays["test_correct"]
    for i in (0, len(MAX_PROB_GRID) // 2, len(MAX_PROB_GRID) - 1):
        t = MAX_PROB_GRID[i]
        constants = [threshold_code("max_prob", t, float(s)) for s in arrays["scales"]]
        leave0 = exits("max_prob", codes[:, 0], constants[0])
        assert table["exits"]["conv0"]["exit_rate"][i] == pytest.approx(leave0.mean(), abs=0)
        taken = route("max_prob", codes, constants[:-1])
        assert table["cascade"]["accuracy"][i] == correct[np.arange(len(taken)), taken].mean()
        assert table["cascade"]["early_fraction"][i] == pytest.approx((taken < 3).mean(), abs=1e-12)
        assert sum(table["cascade"]["exit_fractions"][i]) == pytest.approx(1.0, abs=1e-5)
    rates = table["exits"]["fc0"]["exit_rate"]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))  # a stricter threshold never takes more


def test_profile_of_a_missing_run(tmp_path):
    from exitflow.quant.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="model.pt: checkpoint not found"):
        profile(tmp_path)


def test_reference_logits_do_not_depend_on_the_batch(tiny_trainer, tmp_path):
    """In float32 a Brevitas ResNet-8's integer outputs change with the batch size (the
    convolution library sums in another order; 4 of 750 mnist5k samples at one epoch): profiling
    and the cosimulation use the float64 reference, the same in every batch, and keep the float32
    model's scales (the export's, which the hardware's ROM is built from)."""
    import torch

    from exitflow.core.data import ImageSet
    from exitflow.quant import checkpoint as ckpt
    from exitflow.quant.profile import run_exits
    from exitflow.quant.train import to_input

    run = tiny_trainer(tmp_path, "resnet8", "w4a4")
    _, model, _ = ckpt.load_model(run)
    x = np.random.default_rng(1).integers(0, 256, (120, 3, 32, 32), dtype=np.uint8)
    data = ImageSet("random", x, np.zeros(len(x), dtype=np.int64), 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    whole, scales, bits = run_exits(model, data, batch_size=len(x))
    after = model.state_dict()  # back in float32, bit for bit
    assert all(v.dtype == after[k].dtype and torch.equal(v, after[k]) for k, v in before.items())
    single, scales1, bits1 = run_exits(model, data, batch_size=1)
    assert np.array_equal(whole.logits, single.logits)
    assert np.array_equal(scales, scales1) and np.array_equal(bits, bits1)
    with torch.no_grad():
        outs = model.eval()(to_input(x[:1]))
    assert scales.tolist() == [float(o.scale) for o in outs]
    assert whole.logits.dtype == np.int64 and np.abs(whole.logits).max() > 0

"""Profiling: the files, and figures that follow from the one integer policy function."""

import json

import numpy as np
import pytest

from exitflow.quant.policies import confidence_code, exits, route, threshold_code
from exitflow.quant.profile import MAX_PROB_GRID, profile


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

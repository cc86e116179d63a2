"""The CTU template under g++ is bit-exact against the policy function (the Python model) on
10,000 logit vectors per policy: random, ties, all-equal, saturated, extremes of each width."""

import numpy as np
import pytest

from exitflow.hls_templates.ctu import CTUParams, csim

CONFIGS = [  # classes, logit bits, PE, scale, threshold (max_prob; margin scales it)
    (10, 8, 1, 0.05, 0.9),
    (10, 16, 2, 0.003, 0.8),
    (2, 4, 1, 0.7, 0.95),
    (100, 12, 4, 0.02, 0.5),
    (10, 32, 5, 1e-6, 0.99),
    (7, 3, 7, 1.5, 0.6),
]


def vectors(rng, n, classes, bits):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    parts = [
        rng.integers(lo, hi + 1, (n // 5, classes)),  # anywhere in range
        rng.integers(-8, 9, (n // 5, classes)).clip(lo, hi),  # near each other: many ties
        np.repeat(rng.integers(lo, hi + 1, (n // 10, 1)), classes, axis=1),  # all equal
        rng.choice([lo, hi, lo + 1, hi - 1, 0], (n // 10, classes)),  # saturated / extremes
    ]
    tied = rng.integers(lo, hi + 1, (n - sum(len(p) for p in parts), classes))
    top = tied.max(axis=1)
    for row, t in zip(tied, top, strict=False):  # duplicate the maximum somewhere else
        row[rng.integers(classes)] = t
    return np.concatenate(parts + [tied]).astype(np.int64)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["max_prob", "margin"])
def test_ctu_is_bit_exact_against_the_policy_function(policy, tmp_path):
    rng = np.random.default_rng(7)
    total = 0
    for classes, bits, pe, scale, threshold in CONFIGS:
        z = vectors(rng, 1700, classes, bits)
        if policy == "margin":  # a threshold the data straddles: a high percentile of the margins
            probe = CTUParams(policy=policy, classes=classes, logit_bits=bits, scale=scale, threshold=0.0)
            threshold = (float(np.percentile(probe.decide(z).code, 70)) + 0.5) * scale
        params = CTUParams(policy=policy, classes=classes, logit_bits=bits, scale=scale, threshold=threshold, pe=pe)
        expected = params.decide(z)
        got = csim(params, z, tmp_path)
        assert np.array_equal(got.cls, expected.cls), (classes, bits)
        assert np.array_equal(got.code, expected.code), (classes, bits)
        assert np.array_equal(got.exit, expected.exit), (classes, bits)
        assert 0 < got.exit.sum() < len(z) or classes == 2  # the threshold actually splits the samples
        total += len(z)
    assert total >= 10_000


def test_threshold_constant_is_clamped_without_changing_decisions(tmp_path):
    params = CTUParams(policy="max_prob", classes=10, logit_bits=8, scale=0.05, threshold=0.01)
    assert params.threshold_constant == (1 << params.code_bits) - 1  # 1/t beyond every code: always exit
    z = np.random.default_rng(0).integers(-128, 128, (50, 10))
    assert params.decide(z).exit.all() and csim(params, z, tmp_path).exit.all()
    strict = CTUParams(policy="margin", classes=10, logit_bits=8, scale=0.05, threshold=1e6)
    assert not csim(strict, z, tmp_path).exit.any()


def test_cost_of_the_exit_logic():
    for policy in ("max_prob", "margin"):
        p = CTUParams(policy=policy, classes=10, logit_bits=8, scale=0.05, threshold=0.9)
        assert p.lut() <= 350 and p.dsp() == 0 and p.bram18() <= 1
        assert p.cycles_per_sample() <= 10

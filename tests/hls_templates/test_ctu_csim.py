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


def previous_classes(rng, z, classes):
    """Previous-exit classes that agree with the unit's own class for about half of the samples
    (the first maximum, as the hardware finds it) and differ for the rest."""
    own = np.argmax(z, axis=1)
    other = (own + rng.integers(1, classes, len(z))) % classes
    return np.where(rng.random(len(z)) < 0.5, own, other)


@pytest.mark.slow
def test_agreement_ctu_is_bit_exact_against_the_policy_function(tmp_path):
    """The agreement unit with its class stream, and at the first kept exit (no class stream:
    max_prob's unit), on every configuration of the max_prob test, 2 to 100 classes."""
    rng = np.random.default_rng(11)
    total = 0
    for classes, bits, pe, scale, threshold in CONFIGS:
        z = vectors(rng, 1700, classes, bits)
        previous = previous_classes(rng, z, classes)
        params = CTUParams(
            policy="agreement",
            classes=classes,
            logit_bits=bits,
            scale=scale,
            threshold=threshold,
            pe=pe,
            class_input=True,
        )
        expected = params.decide(z, previous)
        got = csim(params, z, tmp_path, previous)
        assert np.array_equal(got.cls, expected.cls), (classes, bits)
        assert np.array_equal(got.code, expected.code), (classes, bits)
        assert np.array_equal(got.exit, expected.exit), (classes, bits)
        # the class test decides: some pass the threshold and disagree, some agree and pass
        passes = params.threshold_constant >= got.code
        agrees = got.cls == previous
        assert np.array_equal(got.exit, passes & agrees)
        assert (passes & ~agrees).any() and (passes & agrees).any(), (classes, bits)
        first = CTUParams(policy="agreement", classes=classes, logit_bits=bits, scale=scale, threshold=threshold, pe=pe)
        plain = csim(first, z, tmp_path)
        assert np.array_equal(plain.exit, passes) and np.array_equal(plain.code, expected.code)
        assert np.array_equal(plain.exit, first.decide(z).exit)
        total += len(z)
    assert total >= 10_000


def test_agreement_ctu_on_ties_and_every_class(tmp_path):
    """Tied logits: the unit's class is the first maximum, so it agrees only with that index.
    Every class c of 2, 10 and 100 classes: agrees with c, not with c + 1."""
    for classes in (2, 10, 100):
        z = np.full((2 * classes, classes), -5, dtype=np.int64)
        for c in range(classes):
            z[c, c] = 20  # sample c: class c
            z[classes + c, c] = z[classes + c, (c + 1) % classes] = 20  # tie with the next index
        own = np.argmax(z, axis=1)
        assert own[classes + classes - 1] == 0  # the tie of the last and the first: index 0
        params = CTUParams(
            policy="agreement", classes=classes, logit_bits=8, scale=0.5, threshold=0.01, class_input=True
        )  # every code passes: the classes alone decide
        for previous in (own, (own + 1) % classes):
            got = csim(params, z, tmp_path, previous)
            want = params.decide(z, previous)
            assert np.array_equal(got.exit, want.exit) and np.array_equal(got.cls, want.cls)
            assert np.array_equal(got.code, want.code)
            assert got.exit.all() if previous is own else not got.exit.any()


def test_agreement_params_check_the_class_input(tmp_path):
    with pytest.raises(ValueError, match="only an agreement unit reads the previous exit's class; got policy max_prob"):
        CTUParams(policy="max_prob", classes=10, logit_bits=8, scale=0.05, threshold=0.9, class_input=True)
    with pytest.raises(ValueError, match="the final exit takes every sample: it reads no previous class"):
        CTUParams(policy="agreement", classes=10, logit_bits=8, scale=0.05, threshold=None, class_input=True)
    p = CTUParams(policy="agreement", classes=10, logit_bits=8, scale=0.05, threshold=0.9, class_input=True)
    z = np.zeros((3, 10), dtype=np.int64)
    with pytest.raises(ValueError, match="this unit reads the previous exit's class: pass previous_class"):
        p.decide(z)
    with pytest.raises(ValueError, match="previous_class needs one class of 4 bits per sample"):
        csim(p, z, tmp_path, np.array([0, 1]))
    first = CTUParams(policy="agreement", classes=10, logit_bits=8, scale=0.05, threshold=0.9)
    with pytest.raises(ValueError, match="this unit has no class input"):
        first.decide(z, np.zeros(3, dtype=np.int64))


def test_cost_of_the_agreement_unit():
    """max_prob's unit plus a class comparator, the AND into the exit flag and the class input
    register: a handful of LUTs and FFs, nothing else."""
    base = CTUParams(policy="max_prob", classes=10, logit_bits=8, scale=0.05, threshold=0.9)
    first = CTUParams(policy="agreement", classes=10, logit_bits=8, scale=0.05, threshold=0.9)
    later = CTUParams(policy="agreement", classes=10, logit_bits=8, scale=0.05, threshold=0.9, class_input=True)
    assert (first.lut(), first.ff(), first.cycles_per_sample()) == (base.lut(), base.ff(), base.cycles_per_sample())
    assert later.lut() - base.lut() == base.class_bits + 2 == 6
    assert later.ff() - base.ff() == base.class_bits + 1
    assert later.dsp() == later.bram18() == 0 and later.cycles_per_sample() == base.cycles_per_sample()
    assert later.code_bits == base.code_bits and np.array_equal(later.rom, base.rom)
    assert later.threshold_constant == base.threshold_constant


def test_cost_of_the_threshold_register():
    """An early exit's unit is the final exit's datapath plus the threshold register and its
    AXI-lite adapter, counted on their own (register_lut / register_ff); the final exit has none."""
    for policy, bits in (("max_prob", 8), ("margin", 8), ("margin", 32), ("agreement", 8)):
        early = CTUParams(policy=policy, classes=10, logit_bits=bits, scale=0.05, threshold=0.9)
        final = CTUParams(policy=policy, classes=10, logit_bits=bits, scale=0.05, threshold=None)
        assert early.lut() - final.lut() == early.register_lut() > 0
        assert early.ff() - final.ff() == early.register_ff() > 0
        assert final.register_lut() == final.register_ff() == 0
        r = early.register_bits
        assert r == early.code_bits + 1
        # at least the select mux and one read-data LUT per bit; at least the data register and
        # the read data; the adapter's fixed part is a few dozen at most
        assert early.code_bits + min(32, r) < early.register_lut() <= early.code_bits + min(32, r) + 30
        assert r + min(32, r) < early.register_ff() <= r + min(32, r) + 20
    later = CTUParams(policy="agreement", classes=10, logit_bits=8, scale=0.05, threshold=0.9, class_input=True)
    assert (
        later.register_lut()
        == CTUParams(policy="max_prob", classes=10, logit_bits=8, scale=0.05, threshold=0.9).register_lut()
    )

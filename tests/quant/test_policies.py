"""Exit policies: the one integer definition the CTU, profiling, DSE and cosim share."""

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from exitflow.quant.policies import code_bits, confidence_code, decide, exits, exp_rom, rom_shift, threshold_code

BITS = [2, 3, 4, 6, 8, 12, 16, 20, 24, 32]


@st.composite
def logit_batches(draw, bits=None):
    bits = draw(st.sampled_from(BITS)) if bits is None else bits
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    classes = draw(st.integers(2, 12))
    values = st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi, 0, lo + 1, hi - 1]))
    z = draw(hnp.arrays(np.int64, (draw(st.integers(1, 6)), classes), elements=values))
    return bits, z


scales = st.floats(1e-4, 8.0)


def float_max_prob(z, scale):
    x = scale * (z - z.max(axis=-1, keepdims=True)).astype(np.float64)
    return np.exp(x).sum(axis=-1)  # = 1 / max-softmax


@settings(max_examples=300, deadline=None)
@given(logit_batches(), scales, st.integers(4, 16))
def test_max_prob_code_matches_the_float_sum_within_rom_rounding(batch, scale, frac_bits):
    bits, z = batch
    assume(rom_shift(scale, frac_bits, bits) == 0)  # the coarse ROM of tiny scales is tested below
    cls, code = confidence_code("max_prob", z, scale, bits, frac_bits)
    exact = float_max_prob(z, scale) * (1 << frac_bits)
    # each of the N terms rounds by at most 1/2 LSB; a term below 1/2 LSB may be dropped
    assert np.all(np.abs(code - exact) <= 0.5 * z.shape[-1] + 1e-6)
    assert np.all(code >= 1 << frac_bits)  # the top logit always contributes exactly 1.0
    assert np.array_equal(cls, np.argmax(z, axis=-1))


@settings(max_examples=300, deadline=None)
@given(logit_batches(), scales, st.floats(0.0, 1.0, exclude_min=True), st.integers(4, 16))
def test_max_prob_decision_agrees_with_softmax_away_from_the_boundary(batch, scale, t, frac_bits):
    bits, z = batch
    assume(rom_shift(scale, frac_bits, bits) == 0)
    c = threshold_code("max_prob", t, scale, frac_bits)
    d = decide("max_prob", z, scale, bits, c, frac_bits)
    inv = float_max_prob(z, scale)
    slack = (0.5 * z.shape[-1] + 1) / (1 << frac_bits)
    clear_exit = inv + slack < 1.0 / t
    clear_stay = inv - slack > 1.0 / t
    assert np.all(d.exit[clear_exit])
    assert not np.any(d.exit[clear_stay])


@settings(max_examples=300, deadline=None)
@given(logit_batches(), scales)
def test_margin_is_top1_minus_top2(batch, scale):
    bits, z = batch
    cls, code = confidence_code("margin", z, scale, bits)
    srt = np.sort(z, axis=-1)
    assert np.array_equal(code, srt[:, -1] - srt[:, -2])
    assert np.all(code >= 0) and np.all(code < (1 << code_bits("margin", z.shape[-1], bits)))


@settings(max_examples=200, deadline=None)
@given(logit_batches(), scales, st.floats(0.0, 1.0, exclude_min=True), st.floats(0.0, 1.0, exclude_min=True))
def test_raising_the_threshold_never_adds_exits(batch, scale, t1, t2):
    bits, z = batch
    lo, hi = sorted((t1, t2))
    for policy, a, b in (("max_prob", lo, hi), ("margin", lo * 10, hi * 10)):
        strict = decide(policy, z, scale, bits, threshold_code(policy, b, scale)).exit
        loose = decide(policy, z, scale, bits, threshold_code(policy, a, scale)).exit
        assert np.all(loose[strict])


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("classes", [2, 10, 100])
def test_all_equal_logits(bits, classes):
    z = np.full((3, classes), [[-(1 << (bits - 1))], [0], [(1 << (bits - 1)) - 1]], dtype=np.int64)
    for policy in ("max_prob", "margin"):
        cls, code = confidence_code(policy, z, 0.25, bits)
        assert np.array_equal(cls, [0, 0, 0])  # ties go to the lowest index
    _, code = confidence_code("max_prob", z, 0.25, bits, 10)
    assert np.array_equal(code, [classes << 10] * 3)  # confidence exactly 1/classes
    # t just below 1/classes exits, anything clearly stricter does not
    assert decide("max_prob", z, 0.25, bits, threshold_code("max_prob", 0.999 / classes, 0.25)).exit.all()
    assert not decide("max_prob", z, 0.25, bits, threshold_code("max_prob", 1.01 / classes, 0.25)).exit.any()
    _, margin = confidence_code("margin", z, 0.25, bits)
    assert np.array_equal(margin, [0, 0, 0])
    assert decide("margin", z, 0.25, bits, threshold_code("margin", 0.0, 0.25)).exit.all()


@pytest.mark.parametrize("bits", BITS)
def test_extremes_of_each_bit_width(bits):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    z = np.array([[hi, lo], [lo, hi], [lo, lo + 1], [hi - 1, hi]], dtype=np.int64)
    cls, code = confidence_code("max_prob", z, 1.0, bits, 10)
    assert np.array_equal(cls, [0, 1, 1, 1])
    far = (1 << 10) + round(math.exp(-(hi - lo)) * (1 << 10))  # exactly 1.0 from 4 bits on
    near = (1 << 10) + round(math.exp(-1.0) * (1 << 10))
    assert np.array_equal(code, [far, far, near, near])
    assert bits < 4 or far == 1 << 10
    _, margin = confidence_code("margin", z, 1.0, bits)
    assert np.array_equal(margin, [hi - lo, hi - lo, 1, 1])


def test_ties_between_top_two():
    z = np.array([[3, 7, 7, 1]])
    cls, code = confidence_code("margin", z, 1.0, 8)
    assert cls[0] == 1 and code[0] == 0
    cls, code = confidence_code("max_prob", z, 1.0, 8, 10)
    assert cls[0] == 1 and code[0] == 2048 + round(math.exp(-4) * 1024) + round(math.exp(-6) * 1024)


def test_exp_rom():
    rom = exp_rom(0.5, 8, 16)
    assert rom[0] == 256 and rom[-1] > 0
    assert np.all(np.diff(rom) <= 0)
    assert round(math.exp(-0.5 * len(rom)) * 256) == 0
    assert len(exp_rom(1e-3, 10, 4)) == 16  # d = 0..15: the largest difference of 4-bit logits
    assert len(exp_rom(1e-6, 10, 32)) <= 1024 and rom_shift(1e-6, 10, 32) > 0  # capped depth
    assert rom_shift(0.05, 10, 8) == 0
    with pytest.raises(ValueError, match="scale must be a positive"):
        exp_rom(0.0)


def test_threshold_codes():
    assert threshold_code("max_prob", 1.0, 0.1, 10) == 1024
    assert threshold_code("max_prob", 0.5, 0.1, 10) == 2048
    assert threshold_code("margin", 1.0, 0.25) == 4
    assert threshold_code("margin", 1.1, 0.25) == 5
    with pytest.raises(ValueError, match=r"max_prob threshold must be in \(0, 1\]"):
        threshold_code("max_prob", 1.5, 0.1)
    with pytest.raises(ValueError, match="unknown exit policy 'entropy'"):
        threshold_code("entropy", 0.5, 0.1)
    assert exits("max_prob", np.array([1024, 1025]), 1024).tolist() == [True, False]
    assert exits("margin", np.array([3, 4]), 4).tolist() == [False, True]


def test_bad_logits():
    with pytest.raises(TypeError, match="integer logits"):
        confidence_code("max_prob", np.zeros((1, 3)), 1.0, 8)
    with pytest.raises(ValueError, match=r"outside the signed 4-bit range \[-8, 7\]"):
        confidence_code("max_prob", np.array([[8, 0]]), 1.0, 4)
    with pytest.raises(ValueError, match="class axis of at least 2"):
        confidence_code("margin", np.array([[1]]), 1.0, 4)


def test_coarse_rom_for_tiny_scales():
    """With a shifted ROM index the code still bounds the true sum: each term uses the exp of a
    difference rounded down to the shift grid, so it can only overestimate exp(-s*d)."""
    scale, bits, frac = 1e-6, 32, 10
    shift = rom_shift(scale, frac, bits)
    z = np.random.default_rng(3).integers(-(1 << 31), (1 << 31) - 1, (200, 10))
    _, code = confidence_code("max_prob", z, scale, bits, frac)
    exact = float_max_prob(z, scale) * (1 << frac)
    assert np.all(code + 0.5 * 10 >= exact)
    grid = ((z.max(axis=1, keepdims=True) - z) >> shift) << shift
    coarse = np.exp(-scale * grid.astype(np.float64)) * (1 << frac)
    assert np.all(np.abs(code - coarse.sum(axis=1)) <= 0.5 * 10 + 1e-6)

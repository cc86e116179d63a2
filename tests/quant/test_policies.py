"""Exit policies: the one integer definition the CTU, profiling, DSE and cosim share."""

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from exitflow.quant.policies import (
    code_bits,
    code_policy,
    confidence_code,
    decide,
    exits,
    exp_rom,
    rom_shift,
    route,
    threshold_code,
)

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


# ---- agreement (patience): max_prob's test and the previous kept exit's class


def reference_route(policies, codes, constants, classes):
    """The cascade one sample at a time, written out plainly: the first early exit whose test
    passes takes the sample; an agreement exit after the first also needs the class of the exit
    before it."""
    taken = []
    for i in range(len(codes)):
        chosen = len(constants)
        for j, p in enumerate(policies):
            if p == "margin":
                passes = codes[i][j] >= constants[j]
            else:
                passes = codes[i][j] <= constants[j]
            if p == "agreement" and j > 0 and classes[i][j] != classes[i][j - 1]:
                passes = False
            if passes:
                chosen = j
                break
        taken.append(chosen)
    return np.array(taken)


def test_agreement_uses_the_max_prob_code_width_and_constant():
    z = np.random.default_rng(0).integers(-128, 128, (50, 10))
    for scale in (0.05, 0.7):
        cls_a, code_a = confidence_code("agreement", z, scale, 8)
        cls_m, code_m = confidence_code("max_prob", z, scale, 8)
        assert np.array_equal(cls_a, cls_m) and np.array_equal(code_a, code_m)
    for t in (0.3, 0.9, 1.0):
        assert threshold_code("agreement", t, 0.05) == threshold_code("max_prob", t, 0.05)
    assert code_bits("agreement", 10, 8) == code_bits("max_prob", 10, 8) == (10 << 10).bit_length()
    assert code_policy("agreement") == "max_prob" and code_policy("margin") == "margin"
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"agreement threshold must be in \(0, 1\]"):
            threshold_code("agreement", bad, 0.05)
    assert exits("agreement", np.array([1024, 1025]), 1024).tolist() == [True, False]  # the threshold test alone
    with pytest.raises(ValueError, match="unknown exit policy 'patience'"):
        exits("patience", np.array([1]), 1)


def test_agreement_at_the_first_kept_exit_is_max_prob():
    rng = np.random.default_rng(1)
    codes = rng.integers(1024, 4096, (400, 3))
    classes = rng.integers(0, 10, (400, 3))
    constants = [2000, 2500]
    for first in ("agreement", ["agreement", "max_prob"]):
        taken = route(first, codes, constants, classes)
        assert np.array_equal(taken == 0, codes[:, 0] <= 2000)  # whatever the classes
    # a single early exit: agreement is max_prob, whatever the classes say
    shuffled = rng.permutation(classes[:, :2])
    assert np.array_equal(route("agreement", codes[:, :2], [2000], shuffled), route("max_prob", codes[:, :2], [2000]))
    z = rng.integers(-50, 50, (300, 10))
    a, m = decide("agreement", z, 0.1, 8, 1500), decide("max_prob", z, 0.1, 8, 1500)
    assert np.array_equal(a.exit, m.exit) and np.array_equal(a.code, m.code) and 0 < a.exit.sum() < 300


def test_agreement_needs_the_same_class_and_the_threshold():
    codes = np.array([[9999, 1100, 0]] * 4)
    classes = np.array([[3, 3, 0], [3, 4, 0], [3, 3, 0], [3, 4, 0]])
    constants = np.array([[1024, 1200], [1024, 1200], [1024, 1000], [1024, 1000]])
    # rows: same class and passing; other class; same class, failing; both wrong
    got = [int(route("agreement", codes[i : i + 1], constants[i], classes[i : i + 1])[0]) for i in range(4)]
    assert got == [1, 2, 2, 2]


def test_agreement_on_tied_logits_compares_the_first_maximum():
    """The class is the first index of the largest logit: two exits with the same tied top
    logits agree; a tie in another order does not, though both exits hold the same maximum."""
    scale, bits = 0.5, 8
    before = np.array([[6, 6, 1, 0], [6, 6, 1, 0], [1, 6, 6, 0], [0, 0, 0, 0]])
    here = np.array([[6, 6, 0, 1], [1, 6, 6, 0], [6, 6, 1, 0], [0, 0, 0, 0]])
    prev, _ = confidence_code("max_prob", before, scale, bits)
    assert prev.tolist() == [0, 0, 1, 0]
    always = threshold_code("agreement", 0.01, scale)  # every code passes: only the classes decide
    d = decide("agreement", here, scale, bits, always, previous_class=prev)
    assert d.cls.tolist() == [0, 1, 0, 0]
    assert d.exit.tolist() == [True, False, False, True]
    codes = np.stack([confidence_code("max_prob", z, scale, bits)[1] for z in (before, here, here)], axis=1)
    classes = np.stack([confidence_code("max_prob", z, scale, bits)[0] for z in (before, here, here)], axis=1)
    never = 0  # no max_prob code is 0: the first exit takes nothing
    assert route(["max_prob", "agreement"], codes, [never, always], classes).tolist() == [1, 2, 2, 1]


@pytest.mark.parametrize("classes", [2, 3, 10, 100])
def test_agreement_for_every_class(classes):
    """For every class c: a sample whose class is c exits when the previous class is c too, and
    stays for every other previous class."""
    scale, bits = 0.25, 8
    z = np.full((classes, classes), -40, dtype=np.int64)
    z[np.arange(classes), np.arange(classes)] = 60  # sample c: class c, very confident
    constant = threshold_code("agreement", 0.9, scale)
    same = decide("agreement", z, scale, bits, constant, previous_class=np.arange(classes))
    assert same.cls.tolist() == list(range(classes)) and same.exit.all()
    for shift in range(1, min(classes, 5)):
        other = decide("agreement", z, scale, bits, constant, previous_class=(np.arange(classes) + shift) % classes)
        assert not other.exit.any()
    # one previous class for all: only its own sample exits
    for c in range(classes):
        assert np.flatnonzero(decide("agreement", z, scale, bits, constant, previous_class=c).exit).tolist() == [c]


def test_mixed_policies_pass_on_the_previous_kept_exits_class():
    """An agreement exit compares with the kept exit just before it, whatever that one's policy."""
    codes = np.array([[5000, 3, 1100, 0]])  # max_prob fails, margin fails (3 < 4), agreement passes its threshold
    mixed = ["max_prob", "margin", "agreement"]
    constants = [1024, 4, 1200]
    assert route(mixed, codes, constants, np.array([[7, 2, 2, 0]])).tolist() == [2]  # agrees with the margin exit
    assert route(mixed, codes, constants, np.array([[2, 7, 2, 0]])).tolist() == [3]  # agrees only two exits back
    passing_margin = np.array([[5000, 9, 1100, 0]])
    assert route(mixed, passing_margin, constants, np.array([[2, 7, 2, 0]])).tolist() == [1]
    # agreement before a max_prob exit: the max_prob exit ignores classes
    assert route(
        ["agreement", "agreement", "max_prob"], codes, [1024, 1024, 1200], np.array([[1, 2, 3, 0]])
    ).tolist() == [2]


def test_route_checks_the_classes():
    codes = np.zeros((5, 3), dtype=np.int64)
    for policy in ("agreement", ["max_prob", "agreement"], ["agreement", "margin"]):
        with pytest.raises(ValueError, match="agreement policy needs each kept exit's class: pass classes"):
            route(policy, codes, [1, 1])
    with pytest.raises(ValueError, match=r"classes \(5, 2\) need one class per code \(5, 3\)"):
        route("agreement", codes, [1, 1], np.zeros((5, 2), dtype=np.int64))
    with pytest.raises(TypeError, match="classes must hold integer class indices"):
        route("agreement", codes, [1, 1], np.zeros((5, 3)))
    # the other policies need no classes, as before
    assert route("max_prob", codes, [1, 1]).tolist() == [0] * 5
    assert route(["margin", "max_prob"], codes, [1, 1]).tolist() == [1] * 5


def test_decide_checks_the_previous_class():
    z = np.zeros((4, 10), dtype=np.int64)
    with pytest.raises(ValueError, match="previous_class is read by the agreement policy only; got policy 'max_prob'"):
        decide("max_prob", z, 0.1, 8, 2000, previous_class=np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match=r"previous_class of shape \(3,\) does not give one class per sample"):
        decide("agreement", z, 0.1, 8, 20000, previous_class=np.zeros(3, dtype=np.int64))
    with pytest.raises(TypeError, match="previous_class must hold integer class indices"):
        decide("agreement", z, 0.1, 8, 20000, previous_class=np.zeros(4))


@pytest.mark.parametrize("seed", range(6))
def test_route_equals_a_per_sample_loop(seed):
    """Random cascades of 2..6 kept exits, random policies per early exit, codes and classes
    drawn so that thresholds and classes both split the samples."""
    rng = np.random.default_rng(seed)
    n, e = 3000, int(rng.integers(2, 7))
    codes = rng.integers(0, 40, (n, e))
    classes = rng.integers(0, int(rng.integers(2, 5)), (n, e))
    early = [str(p) for p in rng.choice(["max_prob", "margin", "agreement"], e - 1)]
    early[-1] = "agreement"  # at least one
    constants = rng.integers(5, 35, e - 1)
    got = route(early, codes, constants, classes)
    assert np.array_equal(got, reference_route(early, codes, constants, classes))
    assert len(np.unique(got)) > 1
    one = route("agreement", codes, constants, classes)
    assert np.array_equal(one, reference_route(["agreement"] * (e - 1), codes, constants, classes))
    for p in ("max_prob", "margin"):  # unchanged without agreement, with or without classes
        assert np.array_equal(route(p, codes, constants), reference_route([p] * (e - 1), codes, constants, classes))
        assert np.array_equal(route(p, codes, constants, classes), route(p, codes, constants))


@pytest.mark.parametrize("seed", range(3))
def test_route_equals_the_ctu_decisions_sample_by_sample(seed):
    """From integer logits: route over the kept exits' codes and classes is what a chain of CTUs
    decides, one sample at a time, each agreement CTU given the class of the exit before."""
    rng = np.random.default_rng(100 + seed)
    e, classes, bits, n = 4, int(rng.integers(2, 12)), 8, 300
    scales = rng.uniform(0.05, 0.5, e)
    z = rng.integers(-12, 13, (n, e, classes))  # close logits: ties and disagreements
    early = ["agreement", "margin", "agreement"]
    thresholds = [0.5, 1.0, 0.4]
    constants = [threshold_code(p, t, scales[k]) for k, (p, t) in enumerate(zip(early, thresholds, strict=True))]
    cls = np.stack(
        [confidence_code(early[k] if k < e - 1 else "max_prob", z[:, k], scales[k], bits)[0] for k in range(e)], 1
    )
    code = np.stack(
        [confidence_code(early[k] if k < e - 1 else "max_prob", z[:, k], scales[k], bits)[1] for k in range(e)], 1
    )
    taken = route(early, code, constants, cls)
    for i in range(n):
        want, previous = e - 1, None
        for k, p in enumerate(early):
            d = decide(
                p, z[i : i + 1, k], scales[k], bits, constants[k], previous_class=previous if p == "agreement" else None
            )
            if d.exit[0]:
                want = k
                break
            previous = d.cls
        assert taken[i] == want, i
    assert len(set(taken.tolist())) >= 3

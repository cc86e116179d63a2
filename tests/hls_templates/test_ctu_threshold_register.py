"""An early exit's CTU threshold is a run-time register: ``code [CODE_BITS] | override [1]``.
With the override bit set the unit compares with the register's code, else with the design's
constant, so register 0 (after reset) is today's unit. The g++ build of the template, called once
per sample with that sample's register value, is bit-exact against the policy function evaluated
sample by sample with the constant in use; the AXI-lite words the driver writes come from
``records``."""

import numpy as np
import pytest

from exitflow.hls_templates.ctu import CTUParams, csim
from exitflow.hls_templates.records import (
    THRESHOLD_REGISTER_OFFSET,
    mask,
    threshold_in_use,
    threshold_register_value,
    threshold_register_words,
)
from exitflow.quant import policies

N = 400


def random_logits(rng, n, classes, bits):
    """Random logits in the whole range and close together (the unit's code spreads over
    confident and unsure samples)."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    wide = rng.integers(lo, hi + 1, (n // 2, classes))
    near = rng.integers(-12, 13, (n - n // 2, classes)).clip(lo, hi)
    z = np.concatenate([wide, near]).astype(np.int64)
    return z[rng.permutation(n)]


def unit(policy, rng, z, classes=10, bits=8, scale=0.05):
    """An early exit's unit whose design threshold splits the samples."""
    threshold = 0.9
    if policy == "margin":  # a threshold the data straddles: the margins' median
        probe = CTUParams(policy=policy, classes=classes, logit_bits=bits, scale=scale, threshold=0.0)
        threshold = (float(np.median(probe.decide(z).code)) + 0.5) * scale
    return CTUParams(
        policy=policy,
        classes=classes,
        logit_bits=bits,
        scale=scale,
        threshold=threshold,
        class_input=policy == "agreement",
    )


def expected_sample_by_sample(params, z, previous, registers):
    """The policy function on each sample alone, with the constant that sample's register
    selects: the register's code under the override bit, else the design's."""
    records = []
    for i in range(len(z)):
        reg = int(registers[i])
        constant = reg & mask(params.code_bits) if reg >> params.code_bits & 1 else params.threshold_constant
        decision = policies.decide(
            params.policy,
            z[i : i + 1],
            params.scale,
            params.policy_bits,
            constant,
            params.frac_bits,
            previous_class=None if previous is None else previous[i : i + 1],
        )
        records.append(params.pack(decision)[0])
    return np.array(records, dtype=np.int64)


@pytest.mark.parametrize("policy", ["max_prob", "margin", "agreement"])
def test_register_changes_between_samples(policy, tmp_path, threshold_registers):
    rng = np.random.default_rng({"max_prob": 1, "margin": 2, "agreement": 3}[policy])
    z = random_logits(rng, N, 10, 8)
    params = unit(policy, rng, z)
    previous = None
    if params.class_input:  # agrees with the unit's own class for about half of the samples
        own = np.argmax(z, axis=1)
        previous = np.where(rng.random(N) < 0.5, own, (own + rng.integers(1, 10, N)) % 10)
    registers = threshold_registers(rng, params.code_bits, N)
    assert {0, 1 << params.code_bits, (2 << params.code_bits) - 1} <= set(registers.tolist())

    want = expected_sample_by_sample(params, z, previous, registers)
    got = params.pack(csim(params, z, tmp_path, previous, threshold_register=registers))
    assert np.array_equal(got, want)
    # the Python model takes the same per-sample registers
    assert np.array_equal(params.pack(params.decide(z, previous, threshold_register=registers)), want)

    # the test has teeth: an override bit the unit ignored would change these samples' records
    design = params.pack(params.decide(z, previous))
    overridden = registers != 0
    changed = (want != design) & overridden
    assert changed.sum() >= N // 10, changed.sum()
    assert np.array_equal(want[~overridden], design[~overridden])

    # register 0 for every sample: exactly today's records, one call per sample or one for all
    zeros = np.zeros(N, dtype=np.int64)
    assert np.array_equal(params.pack(csim(params, z, tmp_path, previous, threshold_register=zeros)), design)
    assert np.array_equal(params.pack(csim(params, z, tmp_path, previous)), design)

    # the low bits alone, without the override bit, leave the design's constant in use
    low = rng.integers(1, 1 << params.code_bits, N)
    assert np.array_equal(params.pack(csim(params, z, tmp_path, previous, threshold_register=low)), design)


def test_final_exit_has_no_register(tmp_path):
    final = CTUParams(policy="max_prob", classes=10, logit_bits=8, scale=0.05, threshold=None)
    assert not final.has_threshold_register and final.register_bits == 0
    assert final.register_lut() == final.register_ff() == 0
    z = random_logits(np.random.default_rng(4), 50, 10, 8)
    assert csim(final, z, tmp_path).exit.all()
    assert csim(final, z, tmp_path, threshold_register=np.zeros(50, dtype=np.int64)).exit.all()
    with pytest.raises(ValueError, match="the final exit's unit has no threshold register"):
        final.decide(z, threshold_register=1 << final.code_bits)
    early = CTUParams(policy="max_prob", classes=10, logit_bits=8, scale=0.05, threshold=0.9)
    assert early.has_threshold_register and early.register_bits == early.code_bits + 1
    with pytest.raises(ValueError, match="a threshold register value has 15 bits"):
        early.decide(z, threshold_register=1 << 15)


def test_register_words_for_the_driver():
    assert THRESHOLD_REGISTER_OFFSET == 0x20
    # 14-bit code (max_prob, 10 classes): one word, the override bit is bit 14
    assert threshold_register_words(None, 14) == [0]
    assert threshold_register_words(0, 14) == [1 << 14]
    assert threshold_register_words(1279, 14) == [(1 << 14) | 1279]
    assert threshold_register_words(31, 31) == [(1 << 31) | 31]  # 32 bits: still one word
    # 33-bit code (margin of 32-bit logits): 34 bits, two words, low word first
    code = (1 << 33) - 2
    words = threshold_register_words(code, 33)
    assert len(words) == 2 and words[0] | words[1] << 32 == (1 << 33) | code
    assert words == [0xFFFFFFFE, 0b11] and threshold_register_words(None, 33) == [0, 0]
    assert threshold_register_words(np.int64(5), 14) == [(1 << 14) | 5]
    for bits in (1, 8, 14, 31, 32, 33, 63, 64):
        assert len(threshold_register_words(None, bits)) == -(-(bits + 1) // 32)
    for bad in (-1, 1 << 14):
        with pytest.raises(
            ValueError, match=rf"^threshold code {bad} does not fit the CTU's 14-bit code \(0..16383\)$"
        ):
            threshold_register_words(bad, 14)
    with pytest.raises(ValueError, match="threshold code must be an integer or None; got 2.5"):
        threshold_register_words(2.5, 14)


def test_register_value_selects_the_constant():
    """``threshold_in_use`` (records, the hardware helper's twin) and the unit's model agree: the
    words the driver writes, put together, make the unit compare with the code it was given."""
    params = CTUParams(policy="max_prob", classes=10, logit_bits=8, scale=0.05, threshold=0.9)
    design, bits = params.threshold_constant, params.code_bits
    for code in (None, 0, 1, design, (1 << bits) - 1):
        words = threshold_register_words(code, bits)
        value = sum(w << (32 * i) for i, w in enumerate(words))
        assert value == threshold_register_value(code, bits)
        want = design if code is None else code
        assert threshold_in_use(value, design, bits) == params.threshold_in_use(value) == want
    regs = np.array([0, 1 << bits, (1 << bits) | 7, 7])
    assert params.threshold_in_use(regs).tolist() == [design, 0, 7, design]

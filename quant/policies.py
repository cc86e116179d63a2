"""Exit policies: one integer function each, shared by calibration, profiling, the design search,
the cosimulation and the confidence-threshold unit (CTU) in hardware.

An exit head's last layer yields integer logits ``z`` (signed, ``logit_bits`` wide) with one
per-tensor scale ``s`` (real logit = ``s * z``).

``max_prob``
    max-softmax >= t  <=>  sum_j exp(-s * (z_max - z_j)) <= 1/t. Every difference
    ``d = z_max - z_j >= 0`` indexes a ROM of ``round(exp(-s*d) * 2**frac_bits)`` (unsigned fixed
    point); differences at or beyond the ROM depth add 0. The ROM holds at most 1,024 words:
    for a very small scale it is indexed by ``d >> shift`` (:func:`rom_shift`). The sum ``S`` is the *confidence code*
    (smaller = more confident) and the sample exits when ``S <= floor(2**frac_bits / t)``.
``margin``
    top-1 minus top-2 logit >= t  <=>  ``z_top1 - z_top2 >= ceil(t / s)``. The code is the
    integer margin (larger = more confident).
``agreement`` (patience)
    max_prob's code, threshold (in (0, 1]) and constant, and one more condition: a sample exits
    at a kept early exit k when its code passes k's constant (``S <= floor(2**frac_bits / t)``)
    *and* its class at k equals its class at the previous *kept* exit of the design's cascade
    (whatever that exit's policy; not the previous candidate exit of the model). At the first
    kept exit there is no previous class: the decision is max_prob's alone. The hardware carries
    the class of a sample that goes on from its gate to the next CTU; :func:`route` takes the
    classes of the kept exits (``classes``), :func:`decide` the previous class of each sample
    (``previous_class``). :func:`exits` is the threshold test only.

The class is the first index of the largest logit (hardware scans with a strict ``>``), so two
exits agree on a tied sample only when both give it the same lowest tied index. No divider, no
floating point, no DSP in the decision: the only float operations are in building the ROM and
the threshold constant, which happen once, offline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from exitflow.core.policy import POLICIES, Policy  # the one definition; re-exported here

DEFAULT_FRAC_BITS = 10


MAX_ROM_DEPTH = 1024  # words; a smaller scale reads the ROM at d >> rom_shift instead


def rom_shift(scale: float, frac_bits: int = DEFAULT_FRAC_BITS, logit_bits: int = 32) -> int:
    """How far a difference is shifted right before it indexes the ROM, so that the ROM never
    holds more than MAX_ROM_DEPTH words (0 for all but very small logit scales)."""
    depth = _full_depth(scale, frac_bits, logit_bits)
    return max(0, math.ceil(math.log2(depth / MAX_ROM_DEPTH))) if depth > MAX_ROM_DEPTH else 0


def _full_depth(scale: float, frac_bits: int, logit_bits: int) -> int:
    if not scale > 0 or not math.isfinite(scale):
        raise ValueError(f"scale must be a positive finite number; got {scale}")
    if not 1 <= frac_bits <= 24:
        raise ValueError(f"frac_bits must be in 1..24; got {frac_bits}")
    # exp(-scale*d) * 2**frac_bits < 0.5  <=>  d > ln(2**(frac_bits+1)) / scale; d <= 2**bits - 1
    return min(math.floor(math.log(2.0 ** (frac_bits + 1)) / scale) + 1, 1 << logit_bits)


def exp_rom(scale: float, frac_bits: int = DEFAULT_FRAC_BITS, logit_bits: int = 32) -> np.ndarray:
    """``R[i] = round(exp(-scale * (i << shift)) * 2**frac_bits)``, ``shift = rom_shift(...)``.

    A difference ``d`` reads ``R[d >> shift]`` (0 at or beyond the depth). The depth stops at
    the first zero entry and covers at most the largest difference of two ``logit_bits``-bit
    signed values; with ``shift = 0`` (the usual case) every difference has its own entry.
    """
    shift = rom_shift(scale, frac_bits, logit_bits)
    depth = math.ceil(_full_depth(scale, frac_bits, logit_bits) / (1 << shift))
    d = np.arange(depth, dtype=np.float64) * (1 << shift)
    rom = np.round(np.exp(-scale * d) * (1 << frac_bits)).astype(np.int64)
    nonzero = np.flatnonzero(rom)
    return rom[: nonzero[-1] + 1] if nonzero.size else rom[:1]


#: The policies that use another policy's confidence code and threshold constant
#: (profiling stores each code once; ``profile.npz`` has no ``code_agreement``).
SAME_CODE: dict[str, str] = {"agreement": "max_prob"}


def code_policy(policy: Policy) -> str:
    """The policy whose confidence code, code width and threshold constant ``policy`` uses:
    ``max_prob`` for ``agreement``, the policy itself otherwise."""
    _check_policy(policy)
    return SAME_CODE.get(policy, policy)


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"unknown exit policy {policy!r}; known: {', '.join(POLICIES)}")


def threshold_code(policy: Policy, threshold: float, scale: float, frac_bits: int = DEFAULT_FRAC_BITS) -> int:
    """The integer constant the hardware compares with, for a float threshold.

    Computed in exact rational arithmetic from the float values, so it is the same on every
    machine. A ``max_prob`` (``agreement``) constant at or above ``num_classes << frac_bits``
    means "always exit" (for agreement: whenever the class agrees).
    """
    if policy in ("max_prob", "agreement"):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"{policy} threshold must be in (0, 1]; got {threshold}")
        return math.floor(Fraction(1 << frac_bits) / Fraction(threshold))  # exact, no float rounding
    if policy == "margin":
        if not threshold >= 0.0:
            raise ValueError(f"margin threshold must be >= 0; got {threshold}")
        return math.ceil(Fraction(threshold) / Fraction(scale))
    raise ValueError(f"unknown exit policy {policy!r}; known: {', '.join(POLICIES)}")


def clamped_code(
    policy: Policy, threshold: float, scale: float, code_bits: int, frac_bits: int = DEFAULT_FRAC_BITS
) -> int:
    """:func:`threshold_code` clamped to a ``code_bits``-wide register, as the CTU holds it (the
    decision is unchanged: every code fits in ``code_bits``)."""
    return max(0, min(threshold_code(policy, threshold, scale, frac_bits), (1 << code_bits) - 1))


def code_bits(policy: Policy, num_classes: int, logit_bits: int, frac_bits: int = DEFAULT_FRAC_BITS) -> int:
    """Width of the unsigned confidence code."""
    if code_policy(policy) == "max_prob":
        return (num_classes << frac_bits).bit_length()
    return logit_bits + 1  # z_top1 - z_top2 of two signed logit_bits values


@dataclass(frozen=True)
class Decision:
    """Per sample: whether it exits, its class, and its confidence code."""

    exit: np.ndarray  # bool
    cls: np.ndarray  # int64
    code: np.ndarray  # int64


def _check_logits(logits: np.ndarray, logit_bits: int) -> np.ndarray:
    z = np.asarray(logits)
    if z.dtype.kind not in "iu":
        raise TypeError(f"integer logits expected; got dtype {z.dtype}")
    if z.ndim < 1 or z.shape[-1] < 2:
        raise ValueError(f"logits need a class axis of at least 2; got shape {z.shape}")
    z = z.astype(np.int64)
    lo, hi = -(1 << (logit_bits - 1)), (1 << (logit_bits - 1)) - 1
    if z.size and (z.min() < lo or z.max() > hi):
        raise ValueError(f"logits outside the signed {logit_bits}-bit range [{lo}, {hi}]")
    return z


def confidence_code(
    policy: Policy, logits: np.ndarray, scale: float, logit_bits: int, frac_bits: int = DEFAULT_FRAC_BITS
) -> tuple[np.ndarray, np.ndarray]:
    """(class, confidence code) for integer ``logits`` of shape ``(..., classes)``."""
    z = _check_logits(logits, logit_bits)
    cls = np.argmax(z, axis=-1)  # first maximum, as the hardware's strict '>' scan
    top = np.max(z, axis=-1, keepdims=True)
    if policy in ("max_prob", "agreement"):  # agreement: max_prob's code
        rom = exp_rom(scale, frac_bits, logit_bits)
        padded = np.append(rom, 0)
        d = np.minimum((top - z) >> rom_shift(scale, frac_bits, logit_bits), len(rom))
        return cls, padded[d].sum(axis=-1)
    if policy == "margin":
        second = np.sort(z, axis=-1)[..., -2]
        return cls, top[..., 0] - second
    raise ValueError(f"unknown exit policy {policy!r}; known: {', '.join(POLICIES)}")


def exits(policy: Policy, code: np.ndarray, threshold_constant: int) -> np.ndarray:
    """The comparison the CTU makes between a confidence code and the threshold constant (for
    ``agreement``, its threshold test alone: :func:`decide` and :func:`route` add the class test)."""
    if code_policy(policy) == "max_prob":
        return np.asarray(code) <= threshold_constant
    return np.asarray(code) >= threshold_constant


def decide(
    policy: Policy,
    logits: np.ndarray,
    scale: float,
    logit_bits: int,
    threshold_constant: int | np.ndarray,
    frac_bits: int = DEFAULT_FRAC_BITS,
    previous_class: np.ndarray | int | None = None,
) -> Decision:
    """The CTU: integer logits -> (exit flag, class, confidence code), exactly as in hardware.
    ``threshold_constant``: one for all samples, or one per sample (a CTU whose run-time
    threshold register changed between samples).

    ``previous_class``: for ``agreement`` at a kept exit after the first, each sample's class at
    the previous kept exit (one per sample, or one for all); the sample exits only when its class
    here is the same. ``None``: the first kept exit (max_prob's rule alone). Other policies take
    no previous class."""
    cls, code = confidence_code(policy, logits, scale, logit_bits, frac_bits)
    leave = exits(policy, code, threshold_constant)
    if previous_class is not None:
        if policy != "agreement":
            raise ValueError(f"previous_class is read by the agreement policy only; got policy {policy!r}")
        previous = _check_classes(previous_class, "previous_class")
        try:
            previous = np.broadcast_to(previous, cls.shape)
        except ValueError:
            raise ValueError(
                f"previous_class of shape {previous.shape} does not give one class per sample of {cls.shape}"
            ) from None
        leave = leave & (cls == previous)
    return Decision(exit=leave, cls=cls.astype(np.int64), code=code.astype(np.int64))


def _check_classes(classes, name: str) -> np.ndarray:
    c = np.asarray(classes)
    if c.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer class indices; got dtype {c.dtype}")
    return c


def leaves(
    policy: Policy | Sequence[Policy],
    codes: np.ndarray,
    constants: np.ndarray | list[int],
    classes: np.ndarray | None = None,
) -> np.ndarray:
    """Whether each early exit's CTU says exit for each sample (``(samples, exits - 1)``): its
    threshold test and, for ``agreement`` after the first exit, its class test. :func:`route`
    takes the first of them. ``codes`` is ``(samples, exits)``, one column per kept exit in cascade order;
    ``constants`` has one threshold constant per early exit (``exits - 1``); ``policy`` is one
    policy for every early exit or one per early exit. ``classes`` (``(samples, exits)``, the
    class of each column of ``codes``) is required once an early exit uses ``agreement``: such an
    exit after the first takes a sample only if its class there equals its class in the column
    before. Vectorised over samples."""
    codes = np.asarray(codes)
    constants = np.asarray(constants, dtype=np.int64)
    if codes.ndim != 2 or constants.shape != (codes.shape[1] - 1,):
        raise ValueError(f"codes {codes.shape} need one constant per early exit; got {constants.shape}")
    if isinstance(policy, str):
        early = [policy] * len(constants)
        leave = exits(policy, codes[:, :-1], constants[None, :])
    else:
        early = list(policy)
        if len(early) != len(constants):
            raise ValueError(f"{len(constants)} early exits need one policy each; got {len(early)}")
        leave = np.empty((len(codes), len(constants)), dtype=bool)
        for j, p in enumerate(early):
            leave[:, j] = exits(p, codes[:, j], constants[j])
    if classes is not None:
        classes = _check_classes(classes, "classes")
        if classes.shape != codes.shape:
            raise ValueError(f"classes {classes.shape} need one class per code {codes.shape}")
    if "agreement" in early:
        if classes is None:
            raise ValueError(
                "the agreement policy needs each kept exit's class: pass classes (samples x exits, like codes)"
            )
        later = np.flatnonzero([p == "agreement" for p in early][1:]) + 1  # the first exit has no previous one
        leave[:, later] &= classes[:, later] == classes[:, later - 1]
    return leave


def route(
    policy: Policy | Sequence[Policy],
    codes: np.ndarray,
    constants: np.ndarray | list[int],
    classes: np.ndarray | None = None,
) -> np.ndarray:
    """The exit every sample takes in a cascade: the first early exit whose CTU says exit
    (:func:`leaves`), else the final one. Arguments as :func:`leaves`'. Returns exit indices
    ``0 .. exits-1``."""
    leave = leaves(policy, codes, constants, classes)
    leave = np.concatenate([leave, np.ones((len(codes), 1), dtype=bool)], axis=1)
    return np.argmax(leave, axis=1)

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

The class is the first index of the largest logit (hardware scans with a strict ``>``). No
divider, no floating point, no DSP in the decision: the only float operations are in building
the ROM and the threshold constant, which happen once, offline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from exitflow.core.design import POLICIES, Policy  # the one definition; re-exported here

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


def threshold_code(policy: Policy, threshold: float, scale: float, frac_bits: int = DEFAULT_FRAC_BITS) -> int:
    """The integer constant the hardware compares with, for a float threshold.

    Computed in exact rational arithmetic from the float values, so it is the same on every
    machine. A ``max_prob`` constant at or above ``num_classes << frac_bits`` means "always exit".
    """
    if policy == "max_prob":
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"max_prob threshold must be in (0, 1]; got {threshold}")
        return math.floor(Fraction(1 << frac_bits) / Fraction(threshold))  # exact, no float rounding
    if policy == "margin":
        if not threshold >= 0.0:
            raise ValueError(f"margin threshold must be >= 0; got {threshold}")
        return math.ceil(Fraction(threshold) / Fraction(scale))
    raise ValueError(f"unknown exit policy {policy!r}; known: {', '.join(POLICIES)}")


def code_bits(policy: Policy, num_classes: int, logit_bits: int, frac_bits: int = DEFAULT_FRAC_BITS) -> int:
    """Width of the unsigned confidence code."""
    if policy == "max_prob":
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
    if policy == "max_prob":
        rom = exp_rom(scale, frac_bits, logit_bits)
        padded = np.append(rom, 0)
        d = np.minimum((top - z) >> rom_shift(scale, frac_bits, logit_bits), len(rom))
        return cls, padded[d].sum(axis=-1)
    if policy == "margin":
        second = np.sort(z, axis=-1)[..., -2]
        return cls, top[..., 0] - second
    raise ValueError(f"unknown exit policy {policy!r}; known: {', '.join(POLICIES)}")


def exits(policy: Policy, code: np.ndarray, threshold_constant: int) -> np.ndarray:
    """The comparison the CTU makes between a confidence code and the threshold constant."""
    if policy == "max_prob":
        return np.asarray(code) <= threshold_constant
    return np.asarray(code) >= threshold_constant


def decide(
    policy: Policy,
    logits: np.ndarray,
    scale: float,
    logit_bits: int,
    threshold_constant: int,
    frac_bits: int = DEFAULT_FRAC_BITS,
) -> Decision:
    """The CTU: integer logits -> (exit flag, class, confidence code), exactly as in hardware."""
    cls, code = confidence_code(policy, logits, scale, logit_bits, frac_bits)
    return Decision(exit=exits(policy, code, threshold_constant), cls=cls.astype(np.int64), code=code.astype(np.int64))


def route(policy: Policy | Sequence[Policy], codes: np.ndarray, constants: np.ndarray | list[int]) -> np.ndarray:
    """The exit every sample takes in a cascade: the first early exit whose CTU says exit, else
    the final one. ``codes`` is ``(samples, exits)``; ``constants`` has one threshold constant
    per early exit (``exits - 1``); ``policy`` is one policy for every early exit or one per early
    exit. Returns exit indices ``0 .. exits-1``."""
    codes = np.asarray(codes)
    constants = np.asarray(constants, dtype=np.int64)
    if codes.ndim != 2 or constants.shape != (codes.shape[1] - 1,):
        raise ValueError(f"codes {codes.shape} need one constant per early exit; got {constants.shape}")
    if isinstance(policy, str):
        leave = exits(policy, codes[:, :-1], constants[None, :])
    else:
        if len(policy) != len(constants):
            raise ValueError(f"{len(constants)} early exits need one policy each; got {len(policy)}")
        leave = np.empty((len(codes), len(constants)), dtype=bool)
        for j, p in enumerate(policy):
            leave[:, j] = exits(p, codes[:, j], constants[j])
    leave = np.concatenate([leave, np.ones((len(codes), 1), dtype=bool)], axis=1)
    return np.argmax(leave, axis=1)

"""Shared by the CTU tests: per-sample values of an early exit's threshold register."""

import numpy as np
import pytest


def _threshold_registers(rng, code_bits: int, n: int) -> np.ndarray:
    """One register value per sample, drawn among 0 (the design's constant), the override bit
    with a random code, with code 0 and with the largest code."""
    override = 1 << code_bits
    kinds = rng.integers(0, 4, n)
    codes = rng.integers(0, override, n)
    return np.select(
        [kinds == 0, kinds == 1, kinds == 2],
        [np.zeros(n, dtype=np.int64), override | codes, np.full(n, override)],
        np.full(n, override | (override - 1)),
    ).astype(np.int64)


@pytest.fixture
def threshold_registers():
    return _threshold_registers

"""Bit-accurate cosimulation of a multi-exit design (see cosim/README.md).

``cosimulate(DIR)`` runs the design built in ``DIR/hw`` sample by sample the way the hardware
does, with exitflow's vectorised engine and FINN's own Python execution as the reference, and
compares every sample with the Brevitas model + the exit policy. ``assert_bit_exact(DIR)`` is
the one-line pytest helper.

The names below load :mod:`exitflow.cosim.functional` (FINN, QONNX) when first used, so that
``exitflow.cosim.cycle``, the cycle simulation, imports with numpy alone (the PYNQ driver's
throughput prediction runs it on the board).
"""

from __future__ import annotations

import importlib

__all__ = ["CosimReport", "Mismatch", "assert_bit_exact", "cosimulate", "load_built", "run_design"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module(".functional", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

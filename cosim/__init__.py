"""Bit-accurate cosimulation of a multi-exit design (see cosim/README.md).

``cosimulate(DIR)`` runs the design built in ``DIR/hw`` sample by sample the way the hardware
does, with exitflow's vectorised engine and FINN's own Python execution as the reference, and
compares every sample with the Brevitas model + the exit policy. ``assert_bit_exact(DIR)`` is
the one-line pytest helper.
"""

from .functional import CosimReport, Mismatch, assert_bit_exact, cosimulate, load_built, run_design

__all__ = ["CosimReport", "Mismatch", "assert_bit_exact", "cosimulate", "load_built", "run_design"]

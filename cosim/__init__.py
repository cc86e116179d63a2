"""Bit-accurate cosimulation of a multi-exit design, and a cycle-level pipeline simulation."""

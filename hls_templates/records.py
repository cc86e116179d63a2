"""The record layouts of the exit hardware, LSB first: the one definition that the CTU model
(:class:`~exitflow.hls_templates.ctu.CTUParams`), the gate / tag / merge models
(:mod:`exitflow.hls_templates.routing`), the cosimulation and the PYNQ driver
(:mod:`exitflow.boards.driver`) pack and split records with; ``exitflow_ctu.hpp`` and
``exitflow_gate.hpp`` build the same words in hardware.

CTU record:     ``code [code_bits] | class [class_bits] | exit flag [1]``
tagged record:  ``id [id_bits] | exit index [exit_bits] | CTU record``
threshold register (an early exit's CTU, AXI-lite ``threshold`` at offset 0x20):
                ``code [code_bits] | override [1]``; the unit compares with the code when the
                override bit is set, else with the design's constant (register 0 after reset)

Every record function works on Python ints and on numpy integer or object arrays alike. This
module is numpy/stdlib only: the PYNQ driver imports it on the board.
"""

from __future__ import annotations

import operator


def mask(bits: int) -> int:
    return (1 << bits) - 1


def ctu_record_bits(code_bits: int, class_bits: int) -> int:
    """Width of a CTU record: code, class and the exit flag on top."""
    return code_bits + class_bits + 1


def pack_ctu(code, cls, flag, code_bits: int, class_bits: int):
    """CTU records of (confidence code, class, exit flag as 0/1)."""
    return code + (cls << code_bits) + (flag << (code_bits + class_bits))


def unpack_ctu(record, code_bits: int, class_bits: int) -> tuple:
    """(exit flag as 0/1, class, confidence code) of CTU records."""
    return (record >> (code_bits + class_bits)) & 1, (record >> code_bits) & mask(class_bits), record & mask(code_bits)


def exit_flag(record, record_bits: int):
    """The exit flag (0/1) of CTU records ``record_bits`` wide: their top bit."""
    return (record >> (record_bits - 1)) & 1


def pack_tag(ids, exit_index, records, id_bits: int, exit_bits: int):
    """Tagged records of (sample ids, exit index, CTU records)."""
    return ids + (exit_index << id_bits) + (records << (id_bits + exit_bits))


def unpack_tag(tagged, id_bits: int, exit_bits: int) -> tuple:
    """(sample ids, exit indices, CTU records) of tagged records."""
    return tagged & mask(id_bits), (tagged >> id_bits) & mask(exit_bits), tagged >> (id_bits + exit_bits)


# -- the CTU's run-time threshold register ----------------------------------------------------

THRESHOLD_REGISTER_OFFSET = 0x20  # the AXI-lite offset of an early exit CTU's `threshold` word(s)


def threshold_register_bits(code_bits: int) -> int:
    """Width of a CTU's threshold register: the code and the override bit on top."""
    return code_bits + 1


def threshold_register_value(code: int | None, code_bits: int) -> int:
    """The register value that makes the unit compare with the constant ``code`` (override bit
    set), or, for ``None``, with the design's constant (0)."""
    if code is None:
        return 0
    try:
        code = operator.index(code)  # Python and numpy integers, not floats
    except TypeError:
        raise ValueError(f"threshold code must be an integer or None; got {code!r}") from None
    if not 0 <= code < 1 << code_bits:
        raise ValueError(f"threshold code {code} does not fit the CTU's {code_bits}-bit code (0..{mask(code_bits)})")
    return (1 << code_bits) | code


def threshold_register_words(code: int | None, code_bits: int) -> list[int]:
    """The 32-bit AXI-lite words to write at ``THRESHOLD_REGISTER_OFFSET``, +4, ... (low word
    first, as Vitis HLS splits a scalar wider than 32 bits) so the unit uses ``code`` as its
    threshold constant (``0 <= code < 2**code_bits``), or, for ``None``, the design's value
    again (all words 0). ``ceil((code_bits + 1) / 32)`` words."""
    value = threshold_register_value(code, code_bits)
    words = -(-threshold_register_bits(code_bits) // 32)
    return [(value >> (32 * i)) & 0xFFFFFFFF for i in range(words)]


def threshold_in_use(register, design: int, code_bits: int):
    """The constant a CTU compares with given its register word(s) value ``register`` (Python
    int or numpy integer array): the register's code if its override bit is set, else ``design``.
    The same as ``exitflow::threshold_in_use`` in exitflow_ctu.hpp."""
    override = (register >> code_bits) & 1
    return override * (register & mask(code_bits)) + (1 - override) * design

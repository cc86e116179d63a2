"""The record layouts of the exit hardware, LSB first: the one definition that the CTU model
(:class:`~exitflow.hls_templates.ctu.CTUParams`), the gate / tag / merge models
(:mod:`exitflow.hls_templates.routing`), the cosimulation and the PYNQ driver
(:mod:`exitflow.boards.driver`) pack and split records with; ``exitflow_ctu.hpp`` and
``exitflow_gate.hpp`` build the same words in hardware.

CTU record:     ``code [code_bits] | class [class_bits] | exit flag [1]``
tagged record:  ``id [id_bits] | exit index [exit_bits] | CTU record``

Every function works on Python ints and on numpy integer or object arrays alike.
"""

from __future__ import annotations


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

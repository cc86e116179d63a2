"""Gate, tag and merge: the routing of a multi-exit pipeline, as Python models of
``hls_templates/exitflow_gate.hpp`` and their C simulation.

A tagged record (LSB first) is ``id [id_bits] | exit index [exit_bits] | CTU record [rec_bits]``;
the CTU record's top bit is its exit flag.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exitflow.hls_templates.csim import compile_cpp, render, run
from exitflow.hls_templates.records import exit_flag, pack_tag, unpack_tag


def gate_resources(stream_bits: int, folds: int, depth: int, id_bits: int = 16, class_bits: int = 0) -> tuple[int, int]:
    """(LUT, BRAM18) of a gate and the FIFO in front of it: ``depth`` feature maps of ``folds``
    words of ``stream_bits``. LUTs: the word register and valid mux on the feature-map path, the
    id and record registers, tag assembly (wiring), fold counter and control. The FIFO goes to
    BRAM18 (18 Kib, at most 36 bits wide) once it exceeds what LUTRAM holds cheaply. A gate
    before an agreement head (``class_bits`` > 0) also sends each continuing sample's class on:
    its register and the stream's handshake (``class_bits + 2`` LUTs; the class FIFO of the
    block design is a record FIFO, :func:`record_fifo_resources`). The one definition:
    ExitGate's estimates and the design search use it."""
    bits = depth * folds * stream_bits
    bram = 0 if bits <= 4096 else max(-(-stream_bits // 36), -(-bits // 18432))
    return stream_bits + id_bits + 30 + (class_bits + 2 if class_bits else 0), bram


def record_fifo_resources(width: int, depth: int) -> tuple[int, int]:
    """(LUT, BRAM18) of one record FIFO of the block design (Xilinx ``axis_data_fifo``, ``depth``
    records of ``width`` bits): up to 4 Kib in LUTRAM (a RAM32M is four LUTs holding 32 x 6 bits),
    beyond that in BRAM18 (at most 36 bits wide), plus about 30 LUTs of pointers and flags.
    exitflow's own estimate (neither FINN nor the design search has Vivado's numbers); the
    design search adds two per exit (CTU -> gate and exit -> merge), and an agreement head after
    the first kept exit has a third, of classes (gate -> CTU)."""
    bits = width * depth
    if bits <= 4096:
        return 4 * -(-width // 6) * -(-depth // 32) + 30, 0
    return 30, max(-(-width // 36), -(-bits // 18432))


def merge_resources(record_bits: int, exits: int) -> int:
    """LUTs of the merge: an input mux of ``exits`` tagged-record streams and a round-robin pointer."""
    return record_bits * exits + 20


@dataclass(frozen=True)
class TagFormat:
    id_bits: int
    exit_bits: int
    rec_bits: int

    @property
    def width(self) -> int:
        return self.id_bits + self.exit_bits + self.rec_bits

    def tag(self, ids, exit_index: int, records) -> np.ndarray:
        ids, records = np.asarray(ids, dtype=object), np.asarray(records, dtype=object)
        return pack_tag(ids, exit_index, records, self.id_bits, self.exit_bits)

    def untag(self, tagged) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids, exits, records = unpack_tag(
            np.asarray([int(v) for v in tagged], dtype=object), self.id_bits, self.exit_bits
        )
        return ids.astype(np.int64), exits.astype(np.int64), records.astype(object)

    def leaves(self, record: int) -> bool:
        return bool(exit_flag(int(record), self.rec_bits))


def gate_model(ids, records, feature_maps, exit_index: int, fmt: TagFormat):
    """(ids going on, their feature maps, tagged records of the samples that exit here)."""
    go_ids, go_fms, tagged = [], [], []
    for sample_id, record, fm in zip(ids, records, feature_maps, strict=False):
        if fmt.leaves(record):
            tagged.append(int(fmt.tag([sample_id], exit_index, [record])[0]))
        else:
            go_ids.append(int(sample_id))
            go_fms.append(list(fm))
    return go_ids, go_fms, tagged


def gate_class_model(ids, records, feature_maps, exit_index: int, fmt: TagFormat, class_lsb: int, class_bits: int):
    """:func:`gate_model` of the gate before an agreement head, and the classes it sends on: the
    class field of the record of every sample that goes on, in order."""
    go_ids, go_fms, tagged = gate_model(ids, records, feature_maps, exit_index, fmt)
    classes = [(int(r) >> class_lsb) & ((1 << class_bits) - 1) for r in records if not fmt.leaves(r)]
    return go_ids, go_fms, tagged, classes


def merge_model(streams: list[list[int]]) -> list[int]:
    """Round robin over the exits, one look per step, skipping an empty stream."""
    queues = [list(s) for s in streams]
    total, out, k = sum(len(q) for q in queues), [], 0
    while len(out) < total:
        if queues[k]:
            out.append(queues[k].pop(0))
        k = (k + 1) % len(queues)
    return out


def gate_csim(ids, records, feature_maps, exit_index: int, fmt: TagFormat, fm_bits: int, workdir: Path, folds: int):
    """The gate template (``folds = 0``: the tag of the final exit) under g++."""
    return _gate_csim(ids, records, feature_maps, exit_index, fmt, fm_bits, workdir, folds, 0, 0)[:3]


def gate_class_csim(
    ids,
    records,
    feature_maps,
    exit_index: int,
    fmt: TagFormat,
    fm_bits: int,
    workdir: Path,
    folds: int,
    class_lsb: int,
    class_bits: int,
):
    """The gate before an agreement head (``gate_class``) under g++: as :func:`gate_csim`, and
    the classes it sends on (:func:`gate_class_model`)."""
    if class_bits < 1 or class_lsb + class_bits >= fmt.rec_bits:
        raise ValueError(f"a class field of {class_bits} bits at bit {class_lsb} must lie below the exit flag")
    return _gate_csim(ids, records, feature_maps, exit_index, fmt, fm_bits, workdir, folds, class_lsb, class_bits)


def _gate_csim(ids, records, feature_maps, exit_index, fmt, fm_bits, workdir, folds, class_lsb, class_bits):
    source = render(
        "csim_gate.cpp.j2",
        folds=folds,
        fm_bits=fm_bits,
        id_bits=fmt.id_bits,
        exit_bits=fmt.exit_bits,
        rec_bits=fmt.rec_bits,
        exit_index=exit_index,
        class_bits=class_bits,
        class_lsb=class_lsb,
    )
    binary = compile_cpp(source, Path(workdir), name=f"gate{folds}")
    lines = [f"{len(ids)}"] + [
        " ".join(map(str, [i, r, *fm])) for i, r, fm in zip(ids, records, feature_maps, strict=False)
    ]
    go_ids, go_fms, tagged, classes = [], [], [], []
    for line in run(binary, "\n".join(lines) + "\n").splitlines():
        kind, *values = line.split()
        if kind == "F":
            go_ids.append(int(values[0]))
            go_fms.append([int(v) for v in values[1:]])
        elif kind == "C":
            classes.append(int(values[0]))
        else:
            tagged.append(int(values[0]))
    return go_ids, go_fms, tagged, classes


def merge_csim(streams: list[list[int]], width: int, workdir: Path) -> list[int]:
    binary = compile_cpp(render("csim_merge.cpp.j2", exits=len(streams), width=width), Path(workdir), name="merge")
    text = "\n".join(" ".join(map(str, [len(s), *s])) for s in streams) + "\n"
    return [int(v) for v in run(binary, text).split()]

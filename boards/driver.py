"""PYNQ driver for an exitflow design: stream a batch of images through the accelerator, collect
the result records, put them back in sample order.

On the board (PYNQ installed)::

    from exitflow.boards.driver import ExitflowAccelerator
    acc = ExitflowAccelerator("exitflow.bit", "driver.json")
    result = acc.run(images)                # uint8, N x C x H x W
    result.classes, result.exits, result.codes

``driver.json`` (written by ``exitflow build`` next to the bitfile) holds the record format.
Everything but the DMA transfers is plain numpy and is tested without a board
(``tests/boards/test_driver.py``).

Records leave the merge out of order (a sample that exits early overtakes ones still in later
stages). Each is ``id | exit index | CTU record`` (see ``hls_templates/exitflow_gate.hpp``), the
CTU record being ``code | class | exit flag`` (``exitflow_ctu.hpp``); :func:`decode` splits them
and :func:`reorder` sorts them by id, checking that every sample came back exactly once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exitflow.hls_templates.records import ctu_record_bits, unpack_ctu, unpack_tag


class DriverError(RuntimeError):
    """The accelerator returned something that is not one record per sample."""


@dataclass(frozen=True)
class RecordFormat:
    """Layout of the merged records. Each exit's CTU has its own code width (its logits have
    their own bit width); the exit index says which layout a record's CTU part has."""

    id_bits: int
    exit_bits: int
    class_bits: int
    code_bits: tuple[int, ...]  # per exit

    @property
    def record_bits(self) -> int:  # the widest CTU record: code, class, exit flag
        return ctu_record_bits(max(self.code_bits), self.class_bits)

    @property
    def width(self) -> int:
        return self.id_bits + self.exit_bits + self.record_bits

    @property
    def word_bytes(self) -> int:
        """Bytes per record in the output buffer (the DMA stream is padded to a power of two)."""
        return max(1, 1 << (int(np.ceil(self.width / 8)) - 1).bit_length())

    @classmethod
    def load(cls, path: str | Path) -> RecordFormat:
        data = json.loads(Path(path).read_text())["records"]
        return cls(data["id_bits"], data["exit_bits"], data["class_bits"], tuple(data["code_bits"]))

    def to_json(self) -> dict:
        return {
            "id_bits": self.id_bits,
            "exit_bits": self.exit_bits,
            "class_bits": self.class_bits,
            "code_bits": list(self.code_bits),
        }


@dataclass(frozen=True)
class Result:
    classes: np.ndarray  # predicted class per sample, in input order
    exits: np.ndarray  # index of the exit each sample took
    codes: np.ndarray  # confidence code of the exit's CTU

    def exit_fractions(self, exits: int) -> np.ndarray:
        return np.bincount(self.exits, minlength=exits) / max(1, len(self.exits))


def decode(words: np.ndarray, fmt: RecordFormat) -> tuple[np.ndarray, ...]:
    """(ids, exit indices, classes, codes, exit flags) of raw record words."""
    out = []
    for v in np.asarray(words, dtype=np.uint64).tolist():
        sample_id, exit_index, record = unpack_tag(int(v), fmt.id_bits, fmt.exit_bits)
        if exit_index >= len(fmt.code_bits):
            raise DriverError(
                f"record of sample {sample_id} names exit {exit_index}; the design has {len(fmt.code_bits)}"
            )
        flag, cls, code = unpack_ctu(record, fmt.code_bits[exit_index], fmt.class_bits)
        out.append((sample_id, exit_index, cls, code, flag))
    ids, exits, classes, codes, flags = (
        (np.array(col, dtype=np.int64) for col in zip(*out, strict=False)) if out else [np.zeros(0, np.int64)] * 5
    )
    return ids, exits, classes, codes, flags.astype(bool)


def reorder(words: np.ndarray, fmt: RecordFormat, samples: int, first_id: int = 0) -> Result:
    """Records of one batch back in sample order; ids count from ``first_id`` modulo 2**id_bits."""
    ids, exits, classes, codes, flags = decode(words, fmt)
    if len(ids) != samples:
        raise DriverError(f"expected {samples} records, got {len(ids)}")
    if not flags.all():
        raise DriverError(f"{int((~flags).sum())} records have no exit flag set: not results of an exit")
    position = (ids - first_id) % (1 << fmt.id_bits)
    if position.max(initial=0) >= samples:
        raise DriverError(f"record id {int(ids[position.argmax()])} is not in this batch")
    seen = np.bincount(position, minlength=samples)
    if (seen != 1).any():
        missing, twice = np.flatnonzero(seen == 0), np.flatnonzero(seen > 1)
        what = (
            f"sample {int(missing[0]) + first_id} is missing"
            if missing.size
            else f"sample {int(twice[0]) + first_id} came back twice"
        )
        raise DriverError(what)
    order = np.argsort(position, kind="stable")
    return Result(classes[order], exits[order], codes[order])


def pack_images(images: np.ndarray) -> np.ndarray:
    """N x C x H x W uint8 -> the NHWC byte stream the first stage reads."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 N x C x H x W; got {images.dtype} {images.shape}")
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1)).reshape(-1)


class ExitflowAccelerator:
    """The generated design on a PYNQ board: one DMA in (images), one DMA out (records)."""

    def __init__(self, bitfile: str | Path, driver_json: str | Path, dma_in: str = "idma0", dma_out: str = "odma0"):
        from pynq import Overlay  # only on the board

        self.fmt = RecordFormat.load(driver_json)
        self.overlay = Overlay(str(bitfile))
        self.dma_in, self.dma_out = getattr(self.overlay, dma_in), getattr(self.overlay, dma_out)
        self._next_id = 0

    def run(self, images: np.ndarray) -> Result:
        from pynq import allocate

        data = pack_images(images)
        n = len(images)
        inbuf = allocate(shape=data.shape, dtype=np.uint8)
        outbuf = allocate(shape=(n,), dtype=np.dtype(f"u{self.fmt.word_bytes}"))
        inbuf[:] = data
        self.dma_out.recvchannel.transfer(outbuf)
        self.dma_in.sendchannel.transfer(inbuf)
        self.dma_in.sendchannel.wait()
        self.dma_out.recvchannel.wait()
        result = reorder(np.array(outbuf), self.fmt, n, first_id=self._next_id)
        self._next_id = (self._next_id + n) % (1 << self.fmt.id_bits)
        inbuf.freebuffer()
        outbuf.freebuffer()
        return result

"""PYNQ driver for an exitflow design: stream a batch of images through the accelerator, collect
the result records, put them back in sample order.

On the board (PYNQ installed)::

    from exitflow.boards.driver import ExitflowAccelerator
    acc = ExitflowAccelerator("exitflow.bit", "driver.json")
    result = acc.run(images)                # uint8, N x C x H x W
    result.classes, result.exits, result.codes
    acc.predict({"conv0": 0.8})             # exit fractions, accuracy, samples/s: no hardware touched
    acc.set_thresholds({"conv0": 0.8})      # writes the CTU's register; returns the same prediction

``driver.json`` and ``driver.npz`` (written by ``exitflow build`` next to the bitfile) hold the
record format, each early exit's threshold register, and the design's profile and pipeline the
predictions come from (:mod:`exitflow.cosim.thresholds`). Everything but the DMA transfers and
register writes is plain numpy (the modules it imports need numpy alone) and is tested without a
board (``tests/boards/test_driver.py``).

Records leave the merge out of order (a sample that exits early overtakes ones still in later
stages). Each is ``id | exit index | CTU record`` (see ``hls_templates/exitflow_gate.hpp``), the
CTU record being ``code | class | exit flag`` (``exitflow_ctu.hpp``); :func:`decode` splits them
and :func:`reorder` sorts them by id, checking that every sample came back exactly once.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exitflow.cosim.thresholds import ExitRegister, Prediction, ThresholdModel, load_registers, resolve
from exitflow.hls_templates.records import (
    THRESHOLD_REGISTER_OFFSET,
    ctu_record_bits,
    threshold_register_words,
    unpack_ctu,
    unpack_tag,
)


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


def register_writes(
    registers: tuple[ExitRegister, ...], thresholds: Mapping[str, float | None]
) -> list[tuple[str, int, int]]:
    """(block design cell, byte offset, 32-bit word) to write so that each exit named in
    ``thresholds`` compares with its new threshold's constant
    (:func:`exitflow.quant.policies.clamped_code`), or, for None, with the design's again (the
    register's reset value, 0)."""
    writes = []
    for reg in registers:
        for key in (reg.name, reg.head):
            if key in thresholds:
                value = thresholds[key]
                code = None if value is None else reg.constant(value)
                words = threshold_register_words(code, reg.code_bits)
                writes += [(reg.head, THRESHOLD_REGISTER_OFFSET + 4 * i, w) for i, w in enumerate(words)]
    return writes


def address_range(ip_dict: Mapping[str, dict], cell: str) -> dict:
    """The ``ip_dict`` entry (``phys_addr``, ``addr_range``) of the block design cell ``cell``: keyed
    by the cell, or by ``cell/<its AXI-lite port>`` where PYNQ names the port too."""
    if cell in ip_dict:
        return ip_dict[cell]
    found = [key for key in ip_dict if key.split("/")[0] == cell]
    if len(found) != 1:
        raise DriverError(
            f"the overlay has {'no' if not found else 'several'} address range(s) for cell {cell} "
            f"({', '.join(found) or 'known: ' + ', '.join(sorted(ip_dict))}): is this driver.json the bitfile's?"
        )
    return ip_dict[found[0]]


class ExitflowAccelerator:
    """The generated design on a PYNQ board: one DMA in (images), one DMA out (records)."""

    def __init__(
        self,
        bitfile: str | Path,
        driver_json: str | Path,
        dma_in: str = "dma",  # the block design's axi_dma: images out of memory (MM2S)
        dma_out: str = "dma",  # and records into memory (S2MM)
        overlay: object | None = None,  # a loaded pynq Overlay (default: load ``bitfile``)
    ):
        self.fmt = RecordFormat.load(driver_json)
        self.registers = load_registers(driver_json)
        self.driver_json = Path(driver_json)
        self.thresholds = {r.name: r.threshold for r in self.registers}  # what the registers hold
        self._model: ThresholdModel | None = None
        if overlay is None:
            from pynq import Overlay  # only on the board

            overlay = Overlay(str(bitfile))
        self.overlay = overlay
        self.dma_in, self.dma_out = getattr(self.overlay, dma_in), getattr(self.overlay, dma_out)
        self._next_id = 0

    @property
    def model(self) -> ThresholdModel:
        """The design's profile and pipeline (``driver.json`` and ``driver.npz``), read once."""
        if self._model is None:
            self._model = ThresholdModel.load(self.driver_json)
        return self._model

    def predict(self, thresholds: Mapping[str, float] | None = None) -> Prediction:
        """Exit fractions, accuracy and samples/s (built gates) the design's profile predicts with
        the thresholds now in the registers changed by ``thresholds``; nothing is written."""
        return self.model.predict({**self.thresholds, **resolve(self.registers, thresholds or {})})

    def set_thresholds(
        self, thresholds: Mapping[str, float | None], write: Callable[[str, int, int], None] | None = None
    ) -> Prediction | None:
        """Write the CTU registers of the exits named (``{"conv0": 0.8}``; None: back to the
        design's threshold); other exits keep theirs. Returns the prediction for the thresholds
        now in force (None without ``driver.npz``) and warns when a stage would set the pace.
        Change thresholds between batches: a sample already in the pipeline may be decided with
        either value. ``write(cell, offset, word)`` replaces the MMIO write (tests)."""
        new = {**self.thresholds, **resolve(self.registers, thresholds)}  # all checked before any write
        prediction = self.model.predict(new) if self.driver_json.with_suffix(".npz").is_file() else None
        for cell, offset, word in register_writes(self.registers, thresholds):
            (write or self._write)(cell, offset, word)
        self.thresholds = new
        for message in prediction.warnings if prediction else []:
            warnings.warn(message, stacklevel=2)
        return prediction

    def _write(self, cell: str, offset: int, word: int) -> None:
        from pynq import MMIO

        ip = address_range(self.overlay.ip_dict, cell)
        MMIO(ip["phys_addr"], ip["addr_range"]).write(offset, word)

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

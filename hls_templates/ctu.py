"""The confidence-threshold unit (CTU): what it is parameterised with, and its cost.

:class:`CTUParams` derives everything the hardware needs (ROM, threshold constant, widths) from
the exit head's integer logits format and the design's policy and threshold, with the same
functions profiling and the design search use (:mod:`exitflow.quant.policies`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from exitflow.hls_templates.csim import compile_cpp, render, run
from exitflow.hls_templates.records import ctu_record_bits, pack_ctu, unpack_ctu
from exitflow.quant import policies


@dataclass(frozen=True)
class CTUParams:
    policy: str
    classes: int
    logit_bits: int
    scale: float  # real value of one logit LSB
    threshold: float | None  # the design's float threshold; None: the final exit, always taken
    pe: int = 1
    frac_bits: int = policies.DEFAULT_FRAC_BITS
    # the logit width profiling used (the model's), which bounds the ROM; FINN may build the
    # logit stream narrower (``logit_bits``), which holds the same values
    rom_bits: int | None = None

    def __post_init__(self) -> None:
        if self.policy not in policies.POLICIES:
            raise ValueError(f"unknown exit policy {self.policy!r}; known: {', '.join(policies.POLICIES)}")
        if self.classes < 2 or self.classes % self.pe:
            raise ValueError(f"PE {self.pe} must divide the {self.classes} classes")
        if not 2 <= self.logit_bits <= 32:
            raise ValueError(f"logit bit width must be 2..32; got {self.logit_bits}")

    @property
    def class_bits(self) -> int:
        return max(1, (self.classes - 1).bit_length())

    @property
    def code_bits(self) -> int:
        return policies.code_bits(self.policy, self.classes, self.logit_bits, self.frac_bits)

    @property
    def record_bits(self) -> int:
        return ctu_record_bits(self.code_bits, self.class_bits)

    @cached_property
    def rom(self) -> np.ndarray:
        if self.policy != "max_prob":
            return np.zeros(0, dtype=np.int64)
        return policies.exp_rom(self.scale, self.frac_bits, self.policy_bits)

    @property
    def policy_bits(self) -> int:
        """The logit width the policy function is evaluated with: the model's (profiling's)."""
        return max(self.rom_bits or 0, self.logit_bits)

    @property
    def rom_shift(self) -> int:
        return policies.rom_shift(self.scale, self.frac_bits, self.policy_bits) if self.policy == "max_prob" else 0

    @property
    def threshold_constant(self) -> int:
        """The policy's constant, clamped to the code width (the decision is unchanged: every
        code fits in ``code_bits``)."""
        if self.threshold is None:  # the final exit: every code passes
            return (1 << self.code_bits) - 1 if self.policy == "max_prob" else 0
        constant = policies.threshold_code(self.policy, self.threshold, self.scale, self.frac_bits)
        return max(0, min(constant, (1 << self.code_bits) - 1))

    def pack(self, decision: policies.Decision) -> np.ndarray:
        """Records as the hardware emits them: code | class << CODE_BITS | exit << (CODE_BITS + CLASS_BITS)."""
        return pack_ctu(decision.code, decision.cls, decision.exit.astype(np.int64), self.code_bits, self.class_bits)

    def unpack(self, records: np.ndarray) -> policies.Decision:
        flag, cls, code = unpack_ctu(np.asarray(records, dtype=np.int64), self.code_bits, self.class_bits)
        return policies.Decision(exit=flag == 1, cls=cls, code=code)

    def decide(self, logits: np.ndarray) -> policies.Decision:
        """The Python model of the unit: the policy function itself."""
        return policies.decide(
            self.policy, logits, self.scale, self.policy_bits, self.threshold_constant, self.frac_bits
        )

    # -- cost ------------------------------------------------------------------------------
    # LUT6 counts of the datapath, component by component (documented in hls_templates/README.md):
    #   comparator / subtractor / adder of w bits: w LUTs (one LUT6 + carry per bit);
    #   2:1 mux of w bits: w LUTs; ROM of D words of b bits in LUTs: b * ceil(D / 64) LUTs;
    #   logit buffer (max_prob only) of CLASSES words: LUTRAM, logit_bits * ceil(CLASSES / 64) * 2;
    #   control (sample and class counters, FSM, stream handshakes): 40 LUT, 30 FF.

    def cycles_per_sample(self) -> int:
        """Initiation interval per sample: margin reads CLASSES/PE words in one pass; max_prob's
        ROM pass adds one class per cycle and overlaps the next sample's read pass, so CLASSES."""
        return self.classes // self.pe if self.policy == "margin" else self.classes

    def lut(self) -> int:
        b, pe = self.logit_bits, self.pe
        control = 40
        if self.policy == "margin":
            # per PE lane: compare with top1 and top2 (2b), update muxes top1/top2/class (2b + class_bits)
            lanes = pe * (2 * b + 2 * b + self.class_bits)
            return lanes + (b + 1) + self.code_bits + control  # margin subtract, threshold compare
        rom_words = len(self.rom)
        rom = (self.frac_bits + 1) * math.ceil(rom_words / 64)
        buffer = b * math.ceil(self.classes / 64) * 2
        argmax = pe * (b + b + self.class_bits)  # compare + value mux + index mux per lane
        diff = b + 1  # z_max - z_j
        clip = b  # d < ROM_DEPTH
        accumulate = self.code_bits
        compare = self.code_bits
        return argmax + buffer + diff + clip + rom + accumulate + compare + control

    def ff(self) -> int:
        b = self.logit_bits
        regs = 2 * b + self.class_bits + self.code_bits + self.record_bits  # top1/top2 or max/diff, class, sum, record
        if self.policy == "max_prob":
            regs += (self.frac_bits + 1) + b  # ROM output and difference pipeline registers
        return regs + 30

    def bram18(self) -> int:
        return 0  # ROM and buffer are small enough for LUTs

    def dsp(self) -> int:
        return 0  # no multiplier: a ROM lookup and adders only


def csim(params: CTUParams, logits: np.ndarray, workdir) -> policies.Decision:
    """Run the HLS template ``exitflow_ctu.hpp`` for ``params`` under g++ on ``logits``
    (samples x classes) and return its decisions."""
    from pathlib import Path

    source = render(
        "csim_ctu.cpp.j2",
        policy=params.policy,
        classes=params.classes,
        pe=params.pe,
        logit_bits=params.logit_bits,
        class_bits=params.class_bits,
        code_bits=params.code_bits,
        frac_bits=params.frac_bits,
        rom=[int(v) for v in params.rom],
        rom_shift=params.rom_shift,
        threshold=params.threshold_constant,
    )
    binary = compile_cpp(source, Path(workdir), name=f"ctu_{params.policy}")
    z = np.asarray(logits, dtype=np.int64)
    text = f"{len(z)}\n" + "\n".join(" ".join(map(str, row)) for row in z) + "\n"
    rows = np.array([line.split() for line in run(binary, text).splitlines()], dtype=object).reshape(-1, 3)
    return policies.Decision(
        exit=rows[:, 0].astype(int).astype(bool),
        cls=rows[:, 1].astype(np.int64),
        code=np.array([int(v) for v in rows[:, 2]], dtype=np.int64),
    )

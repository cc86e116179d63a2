"""The confidence-threshold unit (CTU): what it is parameterised with, and its cost.

:class:`CTUParams` derives everything the hardware needs (ROM, threshold constant, widths) from
the exit head's integer logits format and the design's policy and threshold, with the same
functions profiling and the design search use (:mod:`exitflow.quant.policies`). An ``agreement``
unit after the design's first kept exit reads each sample's class at the previous kept exit
(``class_input``); at the first kept exit (and the final one) it is max_prob's unit.

An early exit's unit has a run-time threshold register (``code [code_bits] | override [1]``, an
AXI-lite word at :data:`~exitflow.hls_templates.records.THRESHOLD_REGISTER_OFFSET`): with the
override bit set it compares with the register's code, else with the design's constant
(:attr:`CTUParams.threshold_constant`). The final exit's unit has none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from exitflow.hls_templates.csim import compile_cpp, render, run
from exitflow.hls_templates.records import (
    ctu_record_bits,
    pack_ctu,
    threshold_in_use,
    threshold_register_bits,
    unpack_ctu,
)
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
    # agreement after the first kept exit: a second input stream carries each sample's class at
    # the previous kept exit; the sample exits only if its class here is the same
    class_input: bool = False

    def __post_init__(self) -> None:
        if self.policy not in policies.POLICIES:
            raise ValueError(f"unknown exit policy {self.policy!r}; known: {', '.join(policies.POLICIES)}")
        if self.class_input and self.policy != "agreement":
            raise ValueError(f"only an agreement unit reads the previous exit's class; got policy {self.policy}")
        if self.class_input and self.threshold is None:
            raise ValueError("the final exit takes every sample: it reads no previous class")
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

    @property
    def max_prob_code(self) -> bool:
        """Whether the unit computes max_prob's code (max_prob and agreement): the ROM pass."""
        return policies.code_policy(self.policy) == "max_prob"

    @cached_property
    def rom(self) -> np.ndarray:
        if not self.max_prob_code:
            return np.zeros(0, dtype=np.int64)
        return policies.exp_rom(self.scale, self.frac_bits, self.policy_bits)

    @property
    def policy_bits(self) -> int:
        """The logit width the policy function is evaluated with: the model's (profiling's)."""
        return max(self.rom_bits or 0, self.logit_bits)

    @property
    def rom_shift(self) -> int:
        return policies.rom_shift(self.scale, self.frac_bits, self.policy_bits) if self.max_prob_code else 0

    @property
    def threshold_constant(self) -> int:
        """The policy's constant, clamped to the code width (the decision is unchanged: every
        code fits in ``code_bits``)."""
        if self.threshold is None:  # the final exit: every code passes
            return (1 << self.code_bits) - 1 if self.max_prob_code else 0
        return policies.clamped_code(self.policy, self.threshold, self.scale, self.code_bits, self.frac_bits)

    @property
    def has_threshold_register(self) -> bool:
        """Whether the unit has the run-time threshold register (every early exit; not the final
        exit, which takes every sample)."""
        return self.threshold is not None

    @property
    def register_bits(self) -> int:
        """Width of the threshold register: the code and the override bit (0: no register)."""
        return threshold_register_bits(self.code_bits) if self.has_threshold_register else 0

    def threshold_in_use(self, register=0):
        """The constant the unit compares with for threshold register value(s) ``register`` (a
        Python int, or one per sample): the register's code when its override bit is set, else
        :attr:`threshold_constant`. The final exit has no register: only 0."""
        reg = np.asarray(register, dtype=np.int64)
        if not self.has_threshold_register and reg.any():
            raise ValueError("the final exit's unit has no threshold register: it takes every sample")
        if reg.size and (reg.min() < 0 or reg.max() >= 1 << threshold_register_bits(self.code_bits)):
            raise ValueError(f"a threshold register value has {threshold_register_bits(self.code_bits)} bits")
        in_use = threshold_in_use(reg, self.threshold_constant, self.code_bits)
        return int(in_use) if in_use.ndim == 0 else in_use

    def pack(self, decision: policies.Decision) -> np.ndarray:
        """Records as the hardware emits them: code | class << CODE_BITS | exit << (CODE_BITS + CLASS_BITS)."""
        return pack_ctu(decision.code, decision.cls, decision.exit.astype(np.int64), self.code_bits, self.class_bits)

    def unpack(self, records: np.ndarray) -> policies.Decision:
        flag, cls, code = unpack_ctu(np.asarray(records, dtype=np.int64), self.code_bits, self.class_bits)
        return policies.Decision(exit=flag == 1, cls=cls, code=code)

    def decide(
        self, logits: np.ndarray, previous_class: np.ndarray | None = None, threshold_register=0
    ) -> policies.Decision:
        """The Python model of the unit: the policy function itself. ``previous_class`` (one per
        sample) is what a unit with ``class_input`` reads on its second stream, and only such a
        unit takes it. ``threshold_register``: the register's value (one for all samples, or one
        per sample); 0, the default, is the design's constant."""
        if self.class_input != (previous_class is not None):
            raise ValueError(
                "this unit reads the previous exit's class: pass previous_class"
                if self.class_input
                else "this unit has no class input (only agreement after the first kept exit has one)"
            )
        constant = self.threshold_in_use(threshold_register)
        if np.ndim(constant) and constant.shape != np.shape(logits)[:-1]:
            raise ValueError(
                f"threshold_register of shape {constant.shape} is not one per sample of {np.shape(logits)[:-1]}"
            )
        return policies.decide(
            self.policy,
            logits,
            self.scale,
            self.policy_bits,
            constant,
            self.frac_bits,
            previous_class=previous_class,
        )

    # -- cost ------------------------------------------------------------------------------
    # LUT6 counts of the datapath, component by component (documented in hls_templates/README.md):
    #   comparator / subtractor / adder of w bits: w LUTs (one LUT6 + carry per bit);
    #   2:1 mux of w bits: w LUTs; ROM of D words of b bits in LUTs: b * ceil(D / 64) LUTs;
    #   logit buffer (max_prob only) of CLASSES words: LUTRAM, logit_bits * ceil(CLASSES / 64) * 2;
    #   control (sample and class counters, FSM, stream handshakes): 40 LUT, 30 FF;
    #   agreement with a class input: max_prob's unit, plus a class_bits equality comparator
    #   (class_bits LUTs), the AND into the exit flag and the class stream's handshake (2 LUTs),
    #   the class input register (class_bits FF) and its valid bit (1 FF);
    #   an early exit's threshold register, R = code_bits + 1 bits in W = ceil(R / 32) AXI-lite
    #   words (register_lut / register_ff; the final exit has none):
    #     threshold select mux (override ? register code : design constant): code_bits LUT;
    #     data register: R FF, written per byte lane (one write-enable LUT per byte: ceil(R / 8));
    #     address decode: write and read match of each word's offset, 2 LUT per word, and the
    #       registered write address (6-bit address space up to 0x3F): 6 FF;
    #     read-data mux: one LUT per read-data bit, min(32, R), into the registered RDATA
    #       (min(32, R) FF; bits that are always 0 are trimmed);
    #     write FSM (idle / data / response) and read FSM (idle / data) with AWREADY, WREADY,
    #       BVALID, ARREADY, RVALID: 8 LUT, 4 FF.

    def cycles_per_sample(self) -> int:
        """Initiation interval per sample: margin reads CLASSES/PE words in one pass; max_prob's
        ROM pass adds one class per cycle and overlaps the next sample's read pass, so CLASSES."""
        return self.classes // self.pe if self.policy == "margin" else self.classes  # agreement: max_prob

    def lut(self) -> int:
        b, pe = self.logit_bits, self.pe
        control = 40
        if self.policy == "margin":
            # per PE lane: compare with top1 and top2 (2b), update muxes top1/top2/class (2b + class_bits)
            lanes = pe * (2 * b + 2 * b + self.class_bits)
            datapath = lanes + (b + 1) + self.code_bits + control  # margin subtract, threshold compare
            return datapath + self.register_lut()
        rom_words = len(self.rom)
        rom = (self.frac_bits + 1) * math.ceil(rom_words / 64)
        buffer = b * math.ceil(self.classes / 64) * 2
        argmax = pe * (b + b + self.class_bits)  # compare + value mux + index mux per lane
        diff = b + 1  # z_max - z_j
        clip = b  # d < ROM_DEPTH
        accumulate = self.code_bits
        compare = self.code_bits
        agree = self.class_bits + 2 if self.class_input else 0  # class comparator, AND, handshake
        datapath = argmax + buffer + diff + clip + rom + accumulate + compare + control + agree
        return datapath + self.register_lut()

    def ff(self) -> int:
        b = self.logit_bits
        regs = 2 * b + self.class_bits + self.code_bits + self.record_bits  # top1/top2 or max/diff, class, sum, record
        if self.max_prob_code:
            regs += (self.frac_bits + 1) + b  # ROM output and difference pipeline registers
        if self.class_input:
            regs += self.class_bits + 1  # the previous class and its valid bit
        return regs + 30 + self.register_ff()

    def register_lut(self) -> int:
        """LUTs of the threshold register and its AXI-lite adapter (0 at the final exit)."""
        if not self.has_threshold_register:
            return 0
        r = self.register_bits
        words = math.ceil(r / 32)
        select = self.code_bits  # override ? register code : design constant
        write_enable = math.ceil(r / 8)  # one per byte lane (WSTRB, address match, handshake)
        decode = 2 * words  # write and read address match per word
        read_mux = min(32, r)  # one LUT per read-data bit
        fsm = 8  # write and read FSMs and the AXI-lite handshakes
        return select + write_enable + decode + read_mux + fsm

    def register_ff(self) -> int:
        """FFs of the threshold register and its AXI-lite adapter (0 at the final exit)."""
        if not self.has_threshold_register:
            return 0
        r = self.register_bits
        # data register, registered read data, write address (6 bits), FSM states
        return r + min(32, r) + 6 + 4

    def bram18(self) -> int:
        return 0  # ROM and buffer are small enough for LUTs

    def dsp(self) -> int:
        return 0  # no multiplier: a ROM lookup and adders only


def csim(
    params: CTUParams,
    logits: np.ndarray,
    workdir,
    previous_class: np.ndarray | None = None,
    threshold_register: np.ndarray | None = None,
) -> policies.Decision:
    """Run the HLS template ``exitflow_ctu.hpp`` for ``params`` under g++ on ``logits``
    (samples x classes; for a unit with a class input, ``previous_class``: one per sample, on its
    class stream) and return its decisions. ``threshold_register``: one register value per
    sample, and the harness calls the unit once per sample with it; ``None``: one call for all
    samples with the register at 0 (the design's constant)."""
    from pathlib import Path

    if params.class_input != (previous_class is not None):
        raise ValueError("previous_class is for a unit with a class input, and such a unit needs it")
    registers = None
    if threshold_register is not None:
        registers = np.asarray(threshold_register, dtype=np.int64).reshape(-1)
        if len(registers) != len(logits):
            raise ValueError(f"threshold_register needs one value per sample ({len(logits)}); got {len(registers)}")
        params.threshold_in_use(registers)  # checks the width, and that the unit has a register
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
        class_input=params.class_input,
        registers=registers is not None,
    )
    binary = compile_cpp(source, Path(workdir), name=f"ctu_{params.policy}")
    z = np.asarray(logits, dtype=np.int64)
    text = f"{len(z)}\n" + "\n".join(" ".join(map(str, row)) for row in z) + "\n"
    if params.class_input:
        previous = np.asarray(previous_class, dtype=np.int64).reshape(-1)
        if len(previous) != len(z) or previous.min(initial=0) < 0 or previous.max(initial=0) >= 1 << params.class_bits:
            raise ValueError(f"previous_class needs one class of {params.class_bits} bits per sample")
        text += " ".join(map(str, previous)) + "\n"
    if registers is not None:
        text += " ".join(map(str, registers)) + "\n"
    rows = np.array([line.split() for line in run(binary, text).splitlines()], dtype=object).reshape(-1, 3)
    return policies.Decision(
        exit=rows[:, 0].astype(int).astype(bool),
        cls=rows[:, 1].astype(np.int64),
        code=np.array([int(v) for v in rows[:, 2]], dtype=np.int64),
    )

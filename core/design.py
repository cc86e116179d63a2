"""The design model: what one multi-exit accelerator is, as frozen dataclasses.

A design is a chain of *stages* named by the user. Stage k holds the backbone blocks between exit
k-1 and exit k and ends in an *exit head* (classifier + confidence-threshold unit). Every stage
but the last has a *gate* after it that buffers ``gate_depth`` feature maps while the head
decides; the last stage's head is the final exit, which every remaining sample takes. Folding
(PE, SIMD, RAM style) is given per layer, keyed by the layer names of the model, never by
generated FINN node names.

Designs are read from and written to YAML (:func:`load_design`, :func:`save_design`); the round
trip is lossless. Passes and searches return new designs (``dataclasses.replace``).

Example::

    model: lenet
    board: Pynq-Z2
    clock_mhz: 100.0
    stages:
    - name: early
      blocks: [conv0]
      folding: {conv0: {pe: 4, simd: 1}}
      gate_depth: 4
      head:
        name: exit0
        policy: max_prob
        threshold: 0.9
        folding: {fc: {pe: 2, simd: 8, ram_style: distributed}}
    - name: rest
      blocks: [conv1, fc0]
      head: {name: final}
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from exitflow.core.catalogue import get_board
from exitflow.core.errors import BoardError, ConfigError
from exitflow.core.policy import POLICIES, Policy
from exitflow.core.schema import FieldError, FrozenMap, from_data, load_file, to_data, write_file

#: Exit policies (:mod:`exitflow.core.policy`), each one integer function in :mod:`exitflow.quant.policies`.
#: ``max_prob``: max-softmax confidence >= threshold (0 < t <= 1);
#: ``margin``: top-1 minus top-2 logit, in real units, >= threshold (t >= 0);
#: ``agreement``: max_prob's test (0 < t <= 1) and the same class as the previous kept exit (at
#: the first kept exit, max_prob's test alone).

#: What the design search (``exitflow sweep``, ``exitflow run``) optimises under the accuracy floor.
Objective = Literal["throughput", "latency"]
OBJECTIVES: tuple[str, ...] = ("throughput", "latency")

#: FINN's ``ram_style`` for weight memories.
RamStyle = Literal["auto", "block", "distributed", "ultra"]

#: FINN's ``resType`` for an HLS MVAU's multipliers: LUT fabric (FINN's default for HLS) or DSP
#: slices. An RTL MVAU always multiplies in DSP slices and ignores it.
ResType = Literal["lut", "dsp"]

#: Where a window generator keeps its line buffer (FINN's ``ram_style`` of
#: ``ConvolutionInputGenerator_rtl``): LUTRAM (FINN's default) or block RAM.
BufferStyle = Literal["distributed", "block"]
BUFFER_STYLES: tuple[str, ...] = ("distributed", "block")  # the search tries them in this order

T = TypeVar("T")

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_LAYER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


def _check_name(key: str, value: str, pattern: re.Pattern = _NAME_RE) -> None:
    if not pattern.match(value):
        allowed = "letters, digits, _ and -" if pattern is _NAME_RE else "letters, digits, _ and ."
        raise FieldError(key, f"must start with a letter or _ and hold only {allowed}; got {value!r}")


def _check_folding(key: str, folding: FrozenMap[str, LayerFolding]) -> None:
    for layer in folding:
        _check_name(f"{key}.{layer}", layer, _LAYER_RE)


@dataclass(frozen=True, kw_only=True)
class LayerFolding:
    """Parallelism of one layer: PE (output channels in parallel), SIMD (inputs in parallel),
    where its weights live, what its multipliers are built of, and where the line buffers of the
    window generator in front of it and of a pooling unit after it (whose fold follows the
    layer) live."""

    pe: int = 1
    simd: int = 1
    ram_style: RamStyle = "auto"
    res_type: ResType = "lut"
    buffer_style: BufferStyle = "distributed"

    def __post_init__(self) -> None:
        for key in ("pe", "simd"):
            value = getattr(self, key)
            if value < 1:
                raise FieldError(key, f"must be a positive integer; got {value}")


@dataclass(frozen=True, kw_only=True)
class ExitHead:
    """An exit classifier and its confidence-threshold unit."""

    name: str
    policy: Policy = "max_prob"
    threshold: float | None = None  # None only on the final exit, which every sample takes
    folding: FrozenMap[str, LayerFolding] = field(default_factory=FrozenMap)

    def __post_init__(self) -> None:
        _check_name("name", self.name)
        _check_folding("folding", self.folding)
        t = self.threshold
        if t is None:
            return
        if self.policy in ("max_prob", "agreement") and not 0.0 < t <= 1.0:
            raise FieldError("threshold", f"for policy {self.policy} must be in (0, 1]; got {t}")
        if self.policy == "margin" and t < 0.0:
            raise FieldError("threshold", f"for policy margin must be >= 0 (a logit difference); got {t}")


@dataclass(frozen=True, kw_only=True)
class Stage:
    """Backbone blocks between two exits, the head that ends them, and the gate after them."""

    name: str
    blocks: tuple[str, ...]
    head: ExitHead
    folding: FrozenMap[str, LayerFolding] = field(default_factory=FrozenMap)
    gate_depth: int | None = None  # feature maps the gate holds; None on the last stage

    def __post_init__(self) -> None:
        _check_name("name", self.name)
        if not self.blocks:
            raise FieldError("blocks", "must name at least one backbone block")
        for i, block in enumerate(self.blocks):
            _check_name(f"blocks[{i}]", block, _LAYER_RE)
        if len(set(self.blocks)) != len(self.blocks):
            raise FieldError("blocks", f"names a block twice: {list(self.blocks)}")
        _check_folding("folding", self.folding)
        if self.gate_depth is not None and self.gate_depth < 1:
            raise FieldError("gate_depth", f"must be a positive number of feature maps; got {self.gate_depth}")


@dataclass(frozen=True, kw_only=True)
class Design:
    """One multi-exit accelerator: model, board, clock and the chain of stages."""

    model: str
    board: str
    clock_mhz: float | None = None  # None: the board's default clock
    stages: tuple[Stage, ...]

    def __post_init__(self) -> None:
        _check_name("model", self.model)
        if not self.board:
            raise FieldError("board", "must name a board (see `exitflow boards`)")
        if self.clock_mhz is not None and not 0.0 < self.clock_mhz <= 1000.0:
            raise FieldError("clock_mhz", f"must be in (0, 1000] MHz; got {self.clock_mhz}")
        if not self.stages:
            raise FieldError("stages", "must hold at least one stage")
        seen_stage: dict[str, int] = {}
        seen_head: dict[str, int] = {}
        seen_block: dict[str, int] = {}
        last = len(self.stages) - 1
        for k, stage in enumerate(self.stages):
            at = f"stages[{k}]"
            for table, name, what in (
                (seen_stage, stage.name, "name"),
                (seen_head, stage.head.name, "head.name"),
            ):
                if name in table:
                    raise FieldError(
                        f"{at}.{what}", f"{name!r} is used by stages[{table[name]}] already; names must be unique"
                    )
                table[name] = k
            for i, block in enumerate(stage.blocks):
                if block in seen_block:
                    raise FieldError(f"{at}.blocks[{i}]", f"block {block!r} is in stages[{seen_block[block]}] already")
                seen_block[block] = k
            if k < last:
                if stage.head.threshold is None:
                    raise FieldError(f"{at}.head.threshold", "an early exit needs a threshold")
                if stage.gate_depth is None:
                    raise FieldError(
                        f"{at}.gate_depth", "a stage followed by another needs a gate depth (feature maps, >= 1)"
                    )
            else:
                if stage.head.threshold is not None:
                    raise FieldError(
                        f"{at}.head.threshold", "the final exit takes every remaining sample: leave the threshold out"
                    )
                if stage.gate_depth is not None:
                    raise FieldError(f"{at}.gate_depth", "the last stage has no gate after it: leave gate_depth out")

    @property
    def heads(self) -> tuple[ExitHead, ...]:
        return tuple(stage.head for stage in self.stages)

    @property
    def early_exits(self) -> tuple[ExitHead, ...]:
        return self.heads[:-1]

    def resolve_clock_mhz(self) -> float:
        """The clock this design runs at: its own, or the board's default."""
        if self.clock_mhz is not None:
            return self.clock_mhz

        return get_board(self.board).clock_mhz


def design_from_data(data: object, source: str = "") -> Design:
    """Build a design from plain data and check its board against the catalogue."""
    design = from_data(Design, data, source=source)
    _check_board(design, source)
    return design


def _check_board(design: Design, source: str) -> None:
    where = f"{source}: " if source else ""
    try:
        board = get_board(design.board)
    except BoardError as err:
        raise ConfigError(f"{where}board: {err}") from None
    for key, message in check_fits_board(design, board):
        raise ConfigError(f"{where}{key}: {message}")


def memory_bits(board) -> int:
    """Every bit of memory on ``board``'s device: block RAM, UltraRAM and LUT RAM (64 bits a LUT)."""
    r = board.available
    return r.bram18 * 18 * 1024 + r.uram * 288 * 1024 + r.lut * 64


def kept_exits(early: Iterable[T], final: T) -> list[T]:
    """The exits a cascade keeps, in order: the chosen early exits, then the final one, which
    every sample left over takes."""
    return [*early, final]


def reads_previous_class(design: Design, k: int) -> bool:
    """Whether the CTU of stage ``k``'s head reads each sample's class at the previous kept exit:
    an ``agreement`` head after the first kept exit and before the final one. The gate after
    stage ``k - 1`` then sends the class of every sample it passes on. At the first kept exit
    agreement is max_prob's test alone; the final exit takes every sample."""
    return design.stages[k].head.policy == "agreement" and 0 < k < len(design.stages) - 1


def gate_depth_limit(board, map_bits: int = 1) -> int:
    """The most feature maps of ``map_bits`` bits a gate can hold on ``board``, with all of its
    memory (:func:`memory_bits`) and nothing else on the device: past it, a design cannot fit.
    With the default of one bit a map, the bound for a design whose stream widths are not known
    yet (the build checks each gate again with its real feature-map size)."""
    return memory_bits(board) // max(1, map_bits)


#: Early exits a block design can hold: its control interconnect (an AXI SmartConnect, at most 16
#: master ports) reaches the DMA, the id source and each early exit's threshold register.
MAX_EARLY_EXITS = 14


def check_fits_board(design: Design, board) -> list[tuple[str, str]]:
    """What in ``design`` the board cannot hold, as (key path, message) pairs: weight memories in
    UltraRAM on a device without it, gates deeper than :func:`gate_depth_limit`, more early exits
    than the block design's control interconnect reaches (:data:`MAX_EARLY_EXITS`)."""
    problems: list[tuple[str, str]] = []
    early = len(design.stages) - 1
    if early > MAX_EARLY_EXITS:
        problems.append(
            (
                "stages",
                f"{early} early exits: the block design reaches each one's threshold register through an AXI "
                f"SmartConnect of 16 ports, two of them for the DMA and the id source; keep at most {MAX_EARLY_EXITS}",
            )
        )
    limit = gate_depth_limit(board)
    for k, stage in enumerate(design.stages):
        at = f"stages[{k}]"
        for section, folding in ((f"{at}.folding", stage.folding), (f"{at}.head.folding", stage.head.folding)):
            for layer, fold in folding.items():
                if fold.ram_style == "ultra" and board.available.uram == 0:
                    problems.append(
                        (
                            f"{section}.{layer}.ram_style",
                            f"'ultra' needs UltraRAM, which {board.name} ({board.part}) does not have; "
                            "use block, distributed or auto",
                        )
                    )
        if stage.gate_depth is not None and stage.gate_depth > limit:
            problems.append(
                (
                    f"{at}.gate_depth",
                    f"{stage.gate_depth:,} feature maps cannot fit on {board.name}: its memory holds at most "
                    f"{limit:,} bits (BRAM, URAM and LUT RAM), so at most that many maps of one bit; "
                    "the search uses 2 to 8",
                )
            )
    return problems


def load_design(path: str | Path) -> Design:
    """Read a design YAML file; anything wrong is one :class:`ConfigError` naming the key."""
    design = load_file(Design, path)
    _check_board(design, str(path))
    return design


def save_design(design: Design, path: str | Path) -> Path:
    """Write a design as YAML (atomically); :func:`load_design` gives back an equal design."""
    return write_file(design, path)


__all__ = [
    "POLICIES",
    "Design",
    "ExitHead",
    "LayerFolding",
    "Policy",
    "RamStyle",
    "Stage",
    "MAX_EARLY_EXITS",
    "check_fits_board",
    "design_from_data",
    "gate_depth_limit",
    "memory_bits",
    "load_design",
    "reads_previous_class",
    "save_design",
    "to_data",
]

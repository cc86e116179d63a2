"""Board data files -> :class:`Board` objects."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from exitflow.core.errors import BoardError, ConfigError
from exitflow.core.schema import FieldError, from_data, read_yaml

BUILTIN_DIR = Path(__file__).resolve().parent / "catalogue"

_PART_RE = re.compile(r"^xc[a-z0-9]+(-[a-z0-9]+)+$", re.IGNORECASE)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")

#: The boards FINN's PYNQ flow knows (the keys of ``finn.util.basic.pynq_part_map`` in finn-plus
#: 1.6.1; tests/core/test_catalogue.py checks it against FINN). Kept here so that reading a
#: board file does not import FINN.
FINN_BOARDS: tuple[str, ...] = (
    "Ultra96",
    "Ultra96-V2",
    "Pynq-Z1",
    "Pynq-Z2",
    "ZCU102",
    "ZCU104",
    "ZCU111",
    "RFSoC2x2",
    "RFSoC4x2",
    "KV260_SOM",
    "AUP-ZU3_8GB",
)
#: The board ``exitflow run`` and the report assume when none is given.
DEFAULT_BOARD = "Pynq-Z2"

#: Device totals a board file must state (a URAM count left out means the device has none).
_REQUIRED_RESOURCES = ("lut", "ff", "bram18", "dsp")


@dataclass(frozen=True)
class DeviceResources:
    """An amount of FPGA fabric. BRAM is counted in 18 Kb halves, as FINN counts it."""

    lut: int = 0
    ff: int = 0
    bram18: int = 0
    uram: int = 0
    dsp: int = 0

    def __post_init__(self) -> None:
        for name in ("lut", "ff", "bram18", "uram", "dsp"):
            if getattr(self, name) < 0:
                raise FieldError(name, f"must be >= 0; got {getattr(self, name)}")

    def __add__(self, other: DeviceResources) -> DeviceResources:
        return DeviceResources(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple(), strict=False)))

    def as_tuple(self) -> tuple[int, int, int, int, int]:
        return (self.lut, self.ff, self.bram18, self.uram, self.dsp)


@dataclass(frozen=True)
class Board:
    """One PYNQ-class board: its device, what the device holds, and what the PYNQ shell takes."""

    name: str
    part: str  # Vivado part name
    finn_board: str  # the board name FINN uses (key of finn.util.basic.pynq_part_map)
    clock_mhz: float  # default fabric clock
    resources: DeviceResources  # device totals (datasheet)
    shell: DeviceResources  # estimate of the PYNQ shell: PS interconnect, DMA, reset
    description: str = ""

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise FieldError(
                "name",
                f"must start with a letter or digit and hold only letters, digits and _ . + -; got {self.name!r}",
            )
        if not _PART_RE.match(self.part):
            raise FieldError("part", f"must be a Xilinx part name such as xc7z020clg400-1; got {self.part!r}")
        if self.finn_board not in FINN_BOARDS:
            raise FieldError(
                "finn_board",
                f"{self.finn_board!r} is not a board FINN knows; use one of "
                f"{', '.join(FINN_BOARDS)} (the one with your board's part)",
            )
        if not 0 < self.clock_mhz <= 1000:
            raise FieldError("clock_mhz", f"must be in (0, 1000] MHz; got {self.clock_mhz}")
        for key in ("lut", "ff", "bram18", "dsp"):
            if getattr(self.resources, key) <= 0:
                raise FieldError(
                    f"resources.{key}", f"must be > 0 for a real device; got {getattr(self.resources, key)}"
                )
        for key, total in zip(("lut", "ff", "bram18", "uram", "dsp"), self.resources.as_tuple(), strict=False):
            used = getattr(self.shell, key)
            if used > total:
                raise FieldError(f"shell.{key}", f"shell cost {used} exceeds the device total {total}")

    @property
    def family(self) -> str:
        """``zynq`` (Zynq-7000) or ``zynq_us+`` (Zynq UltraScale+ MPSoC, Kria)."""
        return "zynq" if self.part.startswith("xc7z") else "zynq_us+"

    @property
    def available(self) -> DeviceResources:
        """What is left for exitflow's accelerator once the shell is placed."""
        return DeviceResources(*(t - s for t, s in zip(self.resources.as_tuple(), self.shell.as_tuple(), strict=False)))


def user_board_dirs() -> list[Path]:
    """The folders a user drops board files into (see the module docstring)."""
    env = os.environ.get("EXITFLOW_BOARDS")
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return [Path(config_home) / "exitflow" / "boards"]


def board_dirs() -> list[Path]:
    return [BUILTIN_DIR, *user_board_dirs()]


def load_board_file(path: str | Path) -> Board:
    """Load one board file; a malformed file raises :class:`BoardError` naming it and the field."""
    try:
        data = read_yaml(path)
        if data is None:
            raise BoardError(f"{path}: board file is empty")
        resources = data.get("resources") if isinstance(data, dict) else None
        if isinstance(resources, dict):
            for key in _REQUIRED_RESOURCES:
                if key not in resources:
                    raise BoardError(
                        f"board file {path}: resources.{key}: missing key {key!r}; give the device's "
                        f"total from its datasheet (resources need {', '.join(_REQUIRED_RESOURCES)})"
                    )
        return from_data(Board, data, source=f"board file {path}")
    except BoardError:
        raise
    except ConfigError as err:
        raise BoardError(str(err)) from None


def load_catalogue() -> dict[str, Board]:
    """Every board, built-in and user's, keyed by name in file order; names are case-insensitive
    and must be unique."""
    boards: dict[str, Board] = {}
    origin: dict[str, Path] = {}
    for folder in board_dirs():
        if folder.exists() and not folder.is_dir():
            source = "EXITFLOW_BOARDS" if os.environ.get("EXITFLOW_BOARDS") else "the user board folder"
            raise BoardError(
                f"{folder}: is a file, not a folder of board files ({source}); "
                "point it at a folder holding one YAML file per board"
            )
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix not in (".yaml", ".yml") or path.name.startswith("."):
                continue
            board = load_board_file(path)
            key = board.name.lower()
            if key in origin:
                raise BoardError(
                    f"board {board.name!r} is defined twice: {origin[key]} and {path}; rename or remove one of them"
                )
            origin[key] = path
            boards[board.name] = board
    return boards


def get_board(name: str) -> Board:
    """The board called ``name`` (case-insensitive); an unknown name lists the known ones."""
    catalogue = load_catalogue()
    for board in catalogue.values():
        if board.name.lower() == name.lower():
            return board
    known = ", ".join(catalogue)
    raise BoardError(
        f"unknown board {name!r}; known boards: {known} (add your own as a YAML file in {user_board_dirs()[0]})"
    )

"""The ``exitflow`` command line.

Every subcommand is a function ``cmd_<name>(args) -> int``: ``boards`` here, the others in
:mod:`exitflow.app.commands`, loaded when one of them runs. Errors a user can cause are
:class:`~exitflow.core.errors.ExitflowError`: printed as one line on stderr, exit code 2 (3 for a
feature that is not available here), no traceback unless ``--debug`` is given. Anything else is
a bug in exitflow: one line saying so, exit code 1, and the traceback with ``--debug``.

numpy, torch and FINN are not loaded for ``exitflow boards`` and ``exitflow --help``, so they
start fast (benchmark ``boards``).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence

from exitflow.core import __version__
from exitflow.core.catalogue import DEFAULT_BOARD, get_board, load_catalogue, user_board_dirs
from exitflow.core.design import OBJECTIVES
from exitflow.core.errors import INTERRUPTED, ExitflowError, NotAvailableError
from exitflow.core.files import check_out_folder, is_run_folder, run_folder_lock, user_path
from exitflow.core.schema import to_data

# (name, one-line help, the issue that delivers it when it is not here yet)
COMMANDS: list[tuple[str, str, str | None]] = [
    ("boards", "list the board catalogue, or show one board", None),
    ("train", "train a quantised multi-exit network from a config", None),
    ("profile", "profile exits of a trained network: exit rate and accuracy per threshold", None),
    ("export", "export chosen exits stage by stage as QONNX files for FINN", None),
    ("sweep", "search exits, thresholds and folding under a board budget", None),
    ("build", "generate FINN hardware for every stage and exit unit of a design", None),
    ("cosim", "bit-accurate cosimulation of a built design against the quantised model", None),
    ("predict", "exit fractions, accuracy and throughput of a built design at other thresholds", None),
    ("report", "rebuild the HTML report of a run folder", None),
    ("run", "the whole flow: train, profile, sweep, build, cosim, report", None),
]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# ---------------------------------------------------------------------------- boards


def _board_rows(boards) -> list[list[str]]:
    rows = []
    for b in boards:
        r, s = b.resources, b.shell
        rows.append(
            [
                b.name,
                b.part,
                b.finn_board,
                f"{b.clock_mhz:g}",
                f"{r.lut:,}",
                f"{r.ff:,}",
                f"{r.bram18:,}",
                f"{r.uram:,}",
                f"{r.dsp:,}",
                f"{s.lut:,}/{s.ff:,}/{s.bram18}",
            ]
        )
    return rows


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]

    def fmt(cells):
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=False))
        ).rstrip()

    lines = [fmt(header), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows]
    return "\n".join(lines)


def cmd_boards(args: argparse.Namespace) -> int:
    boards = [get_board(args.name)] if args.name else list(load_catalogue().values())
    if args.json:
        print(json.dumps([to_data(b) for b in boards], indent=2))
        return 0
    header = ["board", "part", "FINN board", "MHz", "LUT", "FF", "BRAM18", "URAM", "DSP", "shell LUT/FF/BRAM18"]
    print(_table(header, _board_rows(boards), right={3, 4, 5, 6, 7, 8, 9}))
    if not args.name:
        print(
            f"\nTotals are device datasheet figures; the shell is an estimate. "
            f"Add a board: one YAML file in {user_board_dirs()[0]}"
        )
    return 0


# ---------------------------------------------------------------------------- later issues


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    """``cmd_<name>`` of :mod:`exitflow.app.commands`, loaded when the command runs."""

    def handler(args: argparse.Namespace) -> int:
        # deferred on purpose: the commands load numpy and every step; `exitflow boards` and --help need none
        from exitflow.app import commands

        return getattr(commands, f"cmd_{name}")(args)

    return handler


def _not_yet(name: str, where: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        raise NotAvailableError(f"`exitflow {name}` is not in exitflow {__version__} yet; it arrives with {where}")

    return handler


def _add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    """The arguments of each subcommand (later ones included, so that ``--help`` documents them now).
    Numbers are checked where they are parsed: a bad one is argparse's one-line usage error."""

    def number(kind, low=None, high=None, what="", above=None):
        def parse(text: str):
            try:
                value = kind(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"must be {what}; got {text!r}") from None
            if kind is float and value != value:  # nan
                raise argparse.ArgumentTypeError(f"must be {what}; got {text!r}")
            if (
                (low is not None and value < low)
                or (high is not None and value > high)
                or (above is not None and value <= above)
            ):
                raise argparse.ArgumentTypeError(f"must be {what}; got {text}")
            return value

        parse.__name__ = what  # argparse names the type in its own messages
        return parse

    def confidence(floor: str) -> None:
        p.add_argument(
            "--confidence",
            type=number(float, high=1.0, above=0.0, what="a probability in (0, 1], e.g. 0.9"),
            default=0.9,
            help=f"probability with which the chosen design keeps the {floor} on new data "
            "(default 0.9; 1: a point estimate on the validation split)",
        )

    if name == "train":
        p.add_argument("config", help="run config (YAML): data, model and train sections")
        p.add_argument("--out", required=True, help="run folder to write model.pt, config.yaml, train_log.json")
        p.add_argument(
            "--threads",
            type=number(int, 1, what="an integer >= 1"),
            default=2,
            help="CPU threads for torch (default 2)",
        )
    elif name == "profile":
        p.add_argument("dir", help="run folder holding model.pt")
    elif name == "export":
        p.add_argument("dir", help="run folder holding model.pt")
        p.add_argument(
            "--exits", help="comma-separated early exits to keep (block names); the final exit is always kept"
        )
    elif name == "sweep":
        p.add_argument("dir", help="run folder holding profile.npz")
        p.add_argument("--board", required=True, help="board name (see `exitflow boards`)")
        p.add_argument("--objective", choices=OBJECTIVES, default="throughput")
        p.add_argument(
            "--min-accuracy",
            type=number(float, 0.0, 1.0, what="a fraction in [0, 1], e.g. 0.97"),
            help="absolute accuracy floor (fraction, e.g. 0.97)",
        )
        p.add_argument(
            "--max-drop-pp",
            type=number(float, 0.0, 100.0, what="percentage points in [0, 100]"),
            default=1.0,
            help="accuracy floor as percentage points below the final exit (default 1.0)",
        )
        p.add_argument(
            "--policies",
            default="max_prob",
            help="exit policies the search tries, comma-separated: max_prob, agreement, margin (each design "
            "takes one for its early exits; default max_prob)",
        )
        confidence("accuracy floor")
        p.add_argument(
            "--max-latency-us",
            type=number(float, above=0.0, what="a positive number of microseconds"),
            help="latency limit in microseconds",
        )
        p.add_argument(
            "--util",
            type=number(float, what="a number in (0, 1], e.g. 0.85"),
            default=0.85,
            help="utilisation cap of the board budget (default 0.85)",
        )
        p.add_argument(
            "--max-exits",
            type=number(int, 0, what="an integer >= 0"),
            default=3,
            help="most early exits a design may have (default 3; 0: only designs without early exits)",
        )
    elif name == "build":
        p.add_argument("dir", help="run folder")
        p.add_argument("--design", help="design YAML (default: DIR/sweep/design.yaml)")
    elif name == "cosim":
        p.add_argument("dir", help="run folder")
        p.add_argument("--design", help="design YAML (default: DIR/sweep/design.yaml)")
        p.add_argument(
            "--samples", type=int, help="cosimulate the first N test samples (default: the whole test split)"
        )
        p.add_argument(
            "--engine",
            choices=["vectorised", "finn", "both"],
            default="both",
            help="vectorised: exitflow's batch engine on every sample; finn: FINN's own Python execution "
            "on every sample (slow: a few images/s for CNV); both (default): vectorised on every "
            "sample and FINN on the first --reference-samples, compared with each other",
        )
        p.add_argument(
            "--reference-samples",
            type=int,
            default=10,
            help="samples FINN's reference execution runs with --engine both (default 10)",
        )
        p.add_argument(
            "--cycle",
            action="store_true",
            help="also run the cycle-level pipeline simulation on the exit sequence found: throughput "
            "and latency per exit against the dse model's prediction",
        )
        p.epilog = (
            "Writes DIR/cosim/report.json (only when the run completes). Exit codes: 0 bit-exact, 4 a sample "
            "differs (the report locates it), 2 bad input (one line; an earlier report is kept)."
        )
    elif name == "predict":
        p.add_argument("dir", help="run folder with a built design (hw/driver.json)")
        p.add_argument(
            "--thresholds",
            nargs="+",
            metavar="EXIT=VALUE",
            help="new thresholds of early exits, e.g. conv0=0.8 fc0=0.7 (default: the design's); "
            "EXIT=design keeps the design's",
        )
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        p.epilog = (
            "Predicted from the design's profile (test split) and its built pipeline, what the PYNQ driver's "
            "set_thresholds() reports on the board: exit fractions, accuracy, and samples/s with the built gates "
            "(the cycle simulation); a warning when a stage would set the pace."
        )
    elif name == "report":
        p.add_argument("dir", help="run folder")
    elif name == "run":
        p.add_argument("config", nargs="?", help="run config (YAML); the built-in default when left out")
        p.add_argument("--out", required=True, help="run folder (a re-run continues it: unchanged steps are skipped)")
        p.add_argument(
            "--board", default=DEFAULT_BOARD, help=f"board name (see `exitflow boards`; default {DEFAULT_BOARD})"
        )
        confidence("1 pp accuracy floor")
        p.add_argument("--force", action="store_true", help="redo every step")
        p.epilog = (
            "Steps: train, profile, sweep, build, cosim, report; each is recorded in DIR/run.json with a hash "
            "of the config and its input files and skipped when they are unchanged. Ctrl-C loses nothing "
            "finished. Exit codes: 0 done, 2 bad input (one line), 4 the cosimulation found a mismatch."
        )


def build_parser() -> argparse.ArgumentParser:
    class OneLineParser(argparse.ArgumentParser):
        """A usage error is one line, ``exitflow <cmd>: error: ...``, exit code 2 (argparse prints
        the whole usage first); ``--help`` is unchanged. Subparsers are of this class too."""

        def error(self, message: str):
            text = " ".join(message.split())
            self.exit(2, f"{self.prog}: error: {text} (see `{self.prog} --help`)\n")

        def parse_args(self, args=None, namespace=None):
            ns, extras = self.parse_known_args(args, namespace)
            if extras:  # found by the top parser after the subcommand's: name the subcommand
                command = getattr(ns, "command", None)
                prog = f"{self.prog} {command}" if command else self.prog
                self.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(extras)} (see `{prog} --help`)\n")
            return ns

    parser = OneLineParser(
        prog="exitflow",
        description="FPGA co-design of early-exit neural networks (Brevitas -> FINN -> PYNQ).",
        epilog="Bad input exits with code 2 and one line on stderr; --debug shows the traceback.",
    )
    parser.add_argument("--version", action="version", version=f"exitflow {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True
    for name, help_text, later in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback on errors"
        )
        if name == "boards":
            p.add_argument("name", nargs="?", help="show only this board")
            p.add_argument("--json", action="store_true", help="print JSON instead of a table")
            p.set_defaults(handler=cmd_boards)
        else:
            _add_arguments(name, p)
            p.set_defaults(handler=_command(name) if later is None else _not_yet(name, later))
    return parser


# The run folder each command writes, as (argument, whether the command may make the folder).
WRITES: dict[str, tuple[str, bool]] = {
    "train": ("out", True),
    "run": ("out", True),
    "profile": ("dir", False),
    "export": ("dir", False),
    "sweep": ("dir", False),
    "build": ("dir", False),
    "cosim": ("dir", False),
    "report": ("dir", False),
}
# OSError numbers that are the user's environment, not a bug: one line and exit code 2.
_USER_OS_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG}


@contextlib.contextmanager
def _writer(args: argparse.Namespace):
    """One writer per run folder: the folder the command writes is held for the whole command
    (a second exitflow process on it is refused at once). ``--out`` must be new, empty or a run
    folder; a command that reads an existing run folder takes the lock only if it is one (the
    command itself says what is missing otherwise, and leaves a stranger's folder untouched)."""
    attr, makes = WRITES.get(args.command, (None, False))
    folder = user_path(getattr(args, attr)) if attr else None
    if folder is not None and makes:
        check_out_folder(folder, f"--{attr}")
    if folder is None or not (makes or (folder.is_dir() and is_run_folder(folder))):
        yield
        return
    with run_folder_lock(folder, f"exitflow {args.command}"):
        yield


class _Interrupt:
    """Ctrl-C exits 130 at any instant. The first SIGINT raises KeyboardInterrupt, so every step
    puts back what it was changing; whatever that exception turns into on its way out (an
    ImportError when it lands inside an import, say) still ends as an interrupt. A second SIGINT
    ends the process at once: what an interrupted build leaves, the next build repairs.

    Python swallows an exception raised where it cannot propagate (a weakref callback, a
    ``__del__``) and prints "Exception ignored in ...". A KeyboardInterrupt lost that way is sent
    again, so it lands in ordinary code, and nothing is printed."""

    def __init__(self) -> None:
        self.seen = False
        self.previous = None
        self.previous_hook = None
        self.alarm = None

    def __enter__(self) -> _Interrupt:
        INTERRUPTED.clear()
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
            self.previous_hook = sys.unraisablehook
            sys.unraisablehook = self._unraisable
        return self

    def __exit__(self, *exc) -> None:
        INTERRUPTED.clear()
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            sys.unraisablehook = self.previous_hook
        if self.alarm is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.alarm)

    def _unraisable(self, unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            # Raised again by an alarm a moment later, outside the finaliser (a signal raised
            # here would be handled at once, inside this hook).
            self.seen = False
            previous = signal.signal(signal.SIGALRM, self._handle)
            if self.alarm is None:  # the handler to put back is the one before the first alarm
                self.alarm = previous
            signal.setitimer(signal.ITIMER_REAL, 0.02)
            return
        self.previous_hook(unraisable)

    def _handle(self, signum, frame) -> None:
        if self.seen:
            os._exit(130)
        self.seen = True
        INTERRUPTED.set()
        raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"exitflow {args.command}"
    with _Interrupt() as interrupt:
        return _main(args, prog, interrupt)


def _main(args: argparse.Namespace, prog: str, interrupt: _Interrupt) -> int:
    try:
        with _writer(args):
            code = int(args.handler(args) or 0)
        if interrupt.seen:  # something caught the KeyboardInterrupt and went on
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130
        return code
    except BaseException as err:  # noqa: BLE001 (sorted below)
        if interrupt.seen or isinstance(err, KeyboardInterrupt):
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130
        if isinstance(err, SystemExit):
            raise
        return _report(err, args, prog)


def _report(err: BaseException, args: argparse.Namespace, prog: str) -> int:
    """One line on stderr for an error, and its exit code."""
    if isinstance(err, BrokenPipeError):
        return 0
    if args.debug:
        traceback.print_exception(err)
    if isinstance(err, ExitflowError):
        print(f"{prog}: error: {_one_line(str(err))}", file=sys.stderr)
        return err.exit_code
    if isinstance(err, OSError) and err.errno in _USER_OS_ERRORS:
        where = f"{err.filename}: " if err.filename else ""
        print(f"{prog}: error: {where}{err.strerror} (check the folder's permissions and free space)", file=sys.stderr)
        return 2
    print(
        f"{prog}: internal error: {type(err).__name__}: {_one_line(str(err))} "
        "(a bug in exitflow; rerun with --debug for the traceback and report it)",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())

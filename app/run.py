"""The main job end to end: ``exitflow run [CONFIG] --out DIR``.

Six steps, in order, each one of exitflow's own commands on the same run folder (the function of
:mod:`exitflow.app.steps` that the command calls, its progress lines silenced):

========  ===========================================  =======================================
step      reads (besides the resolved config)          writes
========  ===========================================  =======================================
train     (the data set)                               model.pt, config.yaml, train_log.json
profile   model.pt                                     profile.npz, profile.json, profile.png
sweep     model.pt, profile.npz                        sweep/pareto.json, pareto.png,
                                                       resources.png, design.yaml
build     model.pt, sweep/design.yaml                  hw/ (build.json), the Vivado project
cosim     model.pt, profile.npz, sweep/design.yaml,    cosim/report.json
          hw/build.json
report    everything above, run.json's step records   report.html
========  ===========================================  =======================================

**Caching.** A step's *key* is a SHA-256 over the resolved config (data, model, train, board,
objective), the step's name and the contents of the files it reads. After a step finishes, its
key, time and one-line summary are written to ``DIR/run.json`` (atomically). A re-run skips a
step whose key is unchanged and whose outputs are all there, and redoes the others: a changed
config changes every key, so the run starts again from ``train``; an edited
``sweep/design.yaml`` redoes ``build`` and what follows. ``force=True`` redoes every step.

**Interrupts.** Every step writes its outputs atomically (``train`` checkpoints every epoch and
resumes; ``build`` puts an earlier ``hw/`` back when it fails or is interrupted), and a step is
recorded only once it has finished, so Ctrl-C at any point loses nothing finished and the next
run continues with the step that was interrupted. When DIR holds the model of an earlier config
(or ``force`` retrains), the new one trains in ``DIR/.run/train`` and replaces the earlier files
only once it is complete. A folder that ``exitflow train`` made for another config (no
``run.json``) is refused, as ``exitflow train`` refuses it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from exitflow.app.report import TEMPLATE
from exitflow.app.steps import build, cosim, profile, report, sweep, train
from exitflow.core import __version__
from exitflow.core.artifacts import RunDir
from exitflow.core.catalogue import DEFAULT_BOARD, get_board
from exitflow.core.design import MAX_EARLY_EXITS, OBJECTIVES, Objective
from exitflow.core.errors import ConfigError, MismatchError
from exitflow.core.files import atomic_write, check_out_folder, run_folder_lock, user_path
from exitflow.core.schema import FieldError, dump_yaml, from_data, read_yaml
from exitflow.quant.config import RunConfig

STEP_NAMES = ("train", "profile", "sweep", "build", "cosim", "report")
Status = Literal["done", "skipped"]


@dataclass(frozen=True)
class RunSettings:
    """What a run needs besides the model config: the board and the search objective."""

    board: str = DEFAULT_BOARD
    objective: Objective = "throughput"
    max_drop_pp: float = 1.0  # accuracy floor of the design search, pp below the final exit
    threads: int = 2  # torch CPU threads
    confidence: float = 0.9  # with which the chosen design keeps the floor (dse.risk; 1: point estimate)
    max_exits: int = 3  # most early exits a design may keep (the run config's sweep.max_exits)


MAX_EXITS = RunSettings.max_exits  # the default, left out of the resolved config (keys stay as they were)


@dataclass(frozen=True, kw_only=True)
class SweepSection:
    """The run config's optional ``sweep`` section: what ``exitflow run`` gives its sweep step
    (``exitflow sweep`` takes the same as options)."""

    max_exits: int = MAX_EXITS  # most early exits a design may keep

    def __post_init__(self) -> None:
        if (problem := _max_exits_problem(self.max_exits)) is not None:
            raise FieldError("max_exits", problem)


def _max_exits_problem(value) -> str | None:
    """What is wrong with ``value`` as the most early exits of a design, or None."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_EARLY_EXITS:
        return f"must be an integer from 0 to {MAX_EARLY_EXITS} (early exits per design); got {value!r}"
    return None


@dataclass(frozen=True, kw_only=True)
class _SweepOnly:
    sweep: SweepSection = field(default_factory=SweepSection)


@dataclass(frozen=True)
class StepRecord:
    name: str
    status: Status
    seconds: float  # time this invocation spent on the step (0 when skipped)
    summary: str  # one line: what the step found
    recorded_seconds: float  # time of the run that produced the outputs


@dataclass
class RunResult:
    out: Path
    steps: list[StepRecord] = field(default_factory=list)
    bit_exact: bool | None = None  # the cosimulation's verdict (None: it did not run)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps)


@dataclass
class _Context:
    config: object  # RunConfig
    out: Path
    settings: RunSettings
    config_text: str  # the resolved config, as it enters every key
    force: bool = False

    @property
    def folder(self) -> RunDir:
        """DIR's paths (``out`` is absolute already, so both name the same files)."""
        return RunDir(self.out)


@dataclass(frozen=True)
class _Step:
    name: str
    # Names relative to DIR, as they enter the key in run.json: a moved run folder keeps its keys.
    inputs: tuple[str, ...]  # files in DIR whose contents enter the key
    outputs: tuple[str, ...]  # files in DIR that must exist for the step to count as done
    work: Callable[[_Context], str]  # does the step, returns its one-line summary


# ------------------------------------------------------------------------- the steps
# Each calls the step of its command (exitflow.app.steps) on DIR with the library's progress lines
# silenced: `exitflow run` shows the step's one-line summary instead.


def _quiet(line: str) -> None:
    pass


def _train(ctx: _Context) -> str:
    done = train(ctx.config, ctx.out, ctx.settings.threads, replace=True, force=ctx.force, log=_quiet)
    return done.summary


def _profile(ctx: _Context) -> str:
    return profile(ctx.out).summary


def _sweep(ctx: _Context) -> str:
    settings = ctx.settings
    return sweep(
        ctx.out,
        settings.board,
        objective=settings.objective,
        max_drop_pp=settings.max_drop_pp,
        confidence=settings.confidence,
        max_exits=settings.max_exits,
        log=_quiet,
    ).summary


def _build(ctx: _Context) -> str:
    return build(ctx.out, ctx.folder.design, log=_quiet).summary


def _cosim(ctx: _Context) -> str:
    return cosim(ctx.out, ctx.folder.design, cycle=True).summary  # a mismatch: raised after the report


def _report(ctx: _Context) -> str:
    return report(ctx.out).summary


STEPS: tuple[_Step, ...] = (
    _Step("train", (), ("model.pt", "config.yaml"), _train),
    _Step("profile", ("model.pt",), ("profile.npz", "profile.json", "profile.png"), _profile),
    _Step(
        "sweep",
        ("model.pt", "profile.npz"),
        ("sweep/pareto.json", "sweep/pareto.png", "sweep/resources.png", "sweep/design.yaml"),
        _sweep,
    ),
    _Step("build", ("model.pt", "sweep/design.yaml"), ("hw/build.json",), _build),
    _Step("cosim", ("model.pt", "profile.npz", "sweep/design.yaml", "hw/build.json"), ("cosim/report.json",), _cosim),
    _Step(
        "report",
        (
            "profile.json",
            "profile.png",
            "sweep/pareto.json",
            "sweep/pareto.png",
            "sweep/resources.png",
            "sweep/design.yaml",
            "hw/build.json",
            "cosim/report.json",
        ),
        ("report.html",),
        _report,
    ),
)
assert tuple(s.name for s in STEPS) == STEP_NAMES


# ------------------------------------------------------------------------- keys and records


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _step_key(step: _Step, ctx: _Context, records: dict) -> str:
    parts: dict = {
        "step": step.name,
        "config": ctx.config_text,
        "inputs": {name: _file_hash(ctx.out / name) if (ctx.out / name).is_file() else None for name in step.inputs},
    }
    if step.name == "report":
        # the report shows every step's record and is drawn by the template: both enter its key
        parts["steps"] = {k: v for k, v in records.items() if k != "report"}
        parts["template"] = _file_hash(TEMPLATE)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def read_records(out: Path, strict: bool = False) -> dict:
    """The step records of ``out/run.json`` ({} when there is none). An unreadable file is {}
    too, unless ``strict``: then it is one ConfigError line, since redoing every step would
    overwrite what the user may have edited since (``sweep/design.yaml``)."""
    path = RunDir(out).run_record
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        if strict:
            raise ConfigError(
                f"{path}: damaged ({type(err).__name__}); remove it to redo every step, or run with "
                "--force (nothing was changed)"
            ) from None
        return {}
    steps = data.get("steps") if isinstance(data, dict) else None
    if strict and not isinstance(steps, dict):
        raise ConfigError(
            f"{path}: not a run record (no 'steps' object); remove it to redo every step, or run "
            "with --force (nothing was changed)"
        )
    return steps if isinstance(steps, dict) else {}


def _write_records(ctx: _Context, records: dict) -> None:
    data = {
        "exitflow": __version__,
        "board": ctx.settings.board,
        "objective": ctx.settings.objective,
        "max_drop_pp": ctx.settings.max_drop_pp,
        "confidence": ctx.settings.confidence,
        "max_exits": ctx.settings.max_exits,
        "config": ctx.config_text,
        "steps": records,
    }
    atomic_write(ctx.folder.run_record, lambda tmp: tmp.write_text(json.dumps(data, indent=1)))


def _resolved(config, settings: RunSettings) -> str:
    text = (
        dump_yaml(config) + f"# run\nboard: {settings.board}\nobjective: {settings.objective}\n"
        f"max_drop_pp: {settings.max_drop_pp}\nconfidence: {settings.confidence}\n"
    )
    if settings.max_exits != MAX_EXITS:  # the default leaves the keys of earlier runs as they were
        text += f"max_exits: {settings.max_exits}\n"
    return text


# ------------------------------------------------------------------------- progress


def _show() -> bool:
    return sys.stderr.isatty()


def load_config(path: str | Path | None):
    """The run config in ``path`` (YAML), or the built-in default when ``path`` is None
    (:func:`load_run_config` less its ``sweep`` section)."""
    return load_run_config(path)[0]


def load_run_config(path: str | Path | None) -> tuple[RunConfig, SweepSection]:
    """(the run config in ``path`` (YAML): its data, model and train sections, and its optional
    ``sweep`` section), or the built-in default when ``path`` is None.

    Paths inside the file (``data.path``, ``train.backbone_from``) are read relative to the
    file's own folder, wherever exitflow is started from, and made absolute here, once."""
    if path is None:
        return RunConfig(), SweepSection()
    path = user_path(path)
    data = read_yaml(path)
    if data is None:
        raise ConfigError(f"{path}: file is empty")
    section = SweepSection()
    if isinstance(data, dict) and "sweep" in data:
        data = dict(data)
        section = from_data(_SweepOnly, {"sweep": data.pop("sweep")}, source=str(path)).sweep
    config = from_data(RunConfig, data, source=str(path))

    def near(value: str | None) -> str | None:
        return None if value is None else str(user_path(path.parent / Path(value).expanduser()))

    config = dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, path=near(config.data.path)),
        train=dataclasses.replace(config.train, backbone_from=near(config.train.backbone_from)),
    )
    return config, section


def run(
    config,
    out: str | Path,
    settings: RunSettings | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
    steps: Sequence[_Step] | None = None,
) -> RunResult:
    """Run (or continue) the whole flow for ``config`` in folder ``out``; see the module docstring.

    ``log`` receives one line per step. A cosimulation that finds a mismatch still ends with
    the report, then raises :class:`MismatchError`."""
    settings = settings if settings is not None else RunSettings()
    if settings.objective not in OBJECTIVES:
        raise ConfigError(f"objective: must be {' or '.join(OBJECTIVES)}; got {settings.objective!r}")
    if settings.threads < 1:
        raise ConfigError(f"--threads: must be >= 1; got {settings.threads}")
    board = get_board(settings.board)  # a typo fails now, not after training
    if not 0.0 < settings.confidence <= 1.0:
        raise ConfigError(
            f"--confidence: must be in (0, 1] (e.g. 0.9; 1 keeps the point estimate); got {settings.confidence}"
        )
    if (problem := _max_exits_problem(settings.max_exits)) is not None:
        raise ConfigError(f"sweep.max_exits: {problem}")
    settings = dataclasses.replace(settings, board=board.name)
    out = user_path(out)
    check_out_folder(out)
    with run_folder_lock(out, "exitflow run"):
        return _run(config, out, settings, force, log, steps)


def _run(
    config, out: Path, settings: RunSettings, force: bool, log: Callable[[str], None], steps: Sequence[_Step] | None
) -> RunResult:
    ctx = _Context(config, out, settings, _resolved(config, settings), force)
    _check_folder(ctx)
    records = {k: v for k, v in read_records(out, strict=not force).items() if k in STEP_NAMES}
    _write_records(ctx, records)  # marks DIR as a folder of `exitflow run` from the start
    result = RunResult(out)
    todo = list(steps if steps is not None else STEPS)
    bar = tqdm(
        todo,
        desc="exitflow run",
        unit="step",
        disable=not _show(),
        leave=False,
        bar_format="{desc}: {n_fmt}/{total_fmt} steps |{bar}| {elapsed}",
    )
    write = tqdm.write if _show() and log is print else log  # on a terminal, lines go above the bar
    finn_log = logging.getLogger("finn_logger")  # FINN's SetFolding warns about exitflow's own ops
    level = finn_log.level
    finn_log.setLevel(logging.ERROR)
    try:
        for step in bar:
            bar.set_description(f"exitflow run: {step.name}")
            key = _step_key(step, ctx, records)
            previous = records.get(step.name)
            done = all((out / name).is_file() for name in step.outputs)
            if not force and isinstance(previous, dict) and previous.get("key") == key and done:
                record = StepRecord(
                    step.name, "skipped", 0.0, previous.get("summary", ""), float(previous.get("seconds", 0.0))
                )
                write(f"{step.name}: unchanged, skipped ({previous.get('summary', '')})")
            else:
                started = time.perf_counter()
                summary = step.work(ctx)
                seconds = time.perf_counter() - started
                record = StepRecord(step.name, "done", seconds, summary, seconds)
                records[step.name] = {
                    "key": key,
                    "seconds": round(seconds, 3),
                    "summary": summary,
                    "finished": datetime.now(UTC).isoformat(timespec="seconds"),
                }
                _write_records(ctx, records)
                write(f"{step.name}: {summary} [{seconds:.1f} s]")
            result.steps.append(record)
    finally:
        bar.close()
        finn_log.setLevel(level)
    result.bit_exact = cosim_verdict(out)
    if result.bit_exact is False:
        raise MismatchError(
            f"the cosimulation found samples on which the hardware differs from the model; "
            f"see {RunDir(out).cosim_report} and {RunDir(out).report}"
        )
    return result


def _check_folder(ctx: _Context) -> None:
    """A run folder of another config is replaced only when `exitflow run` made it (it has
    run.json); one made by `exitflow train` is refused, as `exitflow train` refuses it."""
    existing = ctx.folder.config
    if existing.is_file() and not ctx.folder.run_record.exists() and existing.read_text() != dump_yaml(ctx.config):
        raise ConfigError(
            f"{ctx.out} already holds a run with a different config ({existing}); choose another "
            "--out folder (nothing was overwritten)"
        )


def cosim_verdict(out: Path) -> bool | None:
    """True/False from ``out/cosim/report.json``, None when there is none."""
    try:
        return bool(json.loads(RunDir(out).cosim_report.read_text())["bit_exact"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


__all__ = [
    "DEFAULT_BOARD",
    "STEPS",
    "STEP_NAMES",
    "RunResult",
    "RunSettings",
    "StepRecord",
    "cosim_verdict",
    "SweepSection",
    "load_config",
    "load_run_config",
    "read_records",
    "run",
]

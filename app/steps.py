"""The steps of the flow, each written once: its command (:mod:`exitflow.app.commands`) and
``exitflow run`` (:mod:`exitflow.app.run`) both call the function here.

Each step takes the run folder as the user gave it (the command's lines name it so) and returns
a :class:`StepDone`: the one-line ``summary`` that ``exitflow run`` shows and records in
``run.json``, and the ``lines`` the command prints. Every line is also handed to ``say`` as soon
as it is true (the command passes ``print``: the build's first line comes before the bitfile's
long build, as it always did). ``log`` takes the library's progress lines (``exitflow run``
silences them).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from exitflow.app.report import write_report
from exitflow.boards.vivado import build_bitfile, build_with_project, missing_tools
from exitflow.core.artifacts import RunDir
from exitflow.core.errors import ConfigError, ExitflowError, MismatchError, check_interrupt
from exitflow.core.files import atomic_write
from exitflow.core.schema import dump_yaml
from exitflow.cosim import cosimulate
from exitflow.cosim.cycle import MIN_SAMPLES
from exitflow.cosim.thresholds import ThresholdModel
from exitflow.dse import sweep as search  # its sweep() is looked up when the step runs, not bound at import
from exitflow.dse.throughput import simulate_design
from exitflow.hw.build import is_finished

Say = Callable[[str], None]


def _silent(line: str) -> None:
    pass


@dataclass(frozen=True)
class StepDone:
    """What a step did: ``exitflow run``'s one-line ``summary`` and the command's ``lines``."""

    summary: str
    lines: tuple[str, ...] = ()
    error: ExitflowError | None = None  # what the command ends with once its lines are out (a cosim mismatch)


class _Lines:
    """The command's lines, collected and each handed to ``say`` at once."""

    def __init__(self, say: Say) -> None:
        self.say = say
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        self.say(line)

    def done(self, summary: str, error: ExitflowError | None = None) -> StepDone:
        return StepDone(summary, tuple(self.lines), error)


def _accuracy(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {100 * v:.2f}%" for k, v in values.items())


class _Bar(tqdm):
    """A progress bar whose every update is also a point where Ctrl-C stops the work, even when
    a library swallowed the KeyboardInterrupt (torch's import does, at some instants)."""

    def update(self, n=1):
        check_interrupt()
        return super().update(n)


def _bar(desc: str, total: int | None = None):
    return _Bar(desc=desc, unit="sample", total=total, disable=not sys.stderr.isatty(), leave=False)


# ---------------------------------------------------------------------------- train


def train(
    config,
    folder: str | Path,
    threads: int,
    *,
    replace: bool = False,
    force: bool = False,
    log: Say = print,
    say: Say = _silent,
) -> StepDone:
    """Train (or resume) the run ``config`` (a RunConfig) in ``folder``. Without ``replace`` the
    folder holds this config's run or none (the trainer refuses another). With ``replace`` (the
    folders of ``exitflow run``), the model of an earlier config there, or any model when ``force``,
    is trained anew beside it and replaced only once the new one is complete."""
    # torch: only when the step runs (a bad config is refused, and a finished step skipped, without it)
    import torch

    from exitflow.quant.train import train as train_model

    torch.set_num_threads(max(1, threads))
    run = RunDir(folder)
    earlier = replace and run.config.exists() and run.config.read_text() != dump_yaml(config)
    if earlier or (replace and force and run.model.exists()):
        result = _train_beside(train_model, config, run, log)
    else:
        result = train_model(config, folder, log=log)
    accuracy = _accuracy(result.val_accuracy)
    tell = _Lines(say)
    tell(f"trained {folder}/model.pt ({result.epochs_run} epochs, {result.seconds:.0f} s); val accuracy: {accuracy}")
    return tell.done(
        f"{config.train.epochs} epochs ({result.epochs_run} run now); validation accuracy per exit: {accuracy}"
    )


def _train_beside(train_model, config, run: RunDir, log: Say):
    """Train in a staging folder that an interrupted run resumes from, then replace the run's model."""
    staged = RunDir(run / ".run" / "train")
    if staged.config.exists() and staged.config.read_text() != dump_yaml(config):
        shutil.rmtree(staged.root)  # an unfinished training of yet another config
    result = train_model(config, staged.root, log=log)
    run.checkpoint.unlink(missing_ok=True)  # the earlier config's unfinished epochs
    # config.yaml last: it says whose model.pt it is
    for target, source in ((run.model, staged.model), (run.train_log, staged.train_log), (run.config, staged.config)):
        atomic_write(target, lambda tmp, source=source: shutil.copyfile(source, tmp))
    shutil.rmtree(staged.root)
    with contextlib.suppress(OSError):
        staged.root.parent.rmdir()
    return result


# ---------------------------------------------------------------------------- profile


def profile(folder: str | Path, *, say: Say = _silent) -> StepDone:
    """Profile every exit of the trained model: exit rate and accuracy per threshold."""
    # torch: only when the step runs
    from exitflow.quant.profile import profile as profile_exits

    test = profile_exits(folder)["splits"]["test"]
    accuracy = _accuracy(test["accuracy"])
    tell = _Lines(say)
    tell(f"wrote {folder}/profile.npz, profile.json, profile.png; test accuracy: {accuracy}")
    table = test["max_prob"]["cascade"]
    drops = table["accuracy_drop_pp"]
    ok = [i for i, d in enumerate(drops) if d <= 0.5]
    if ok:
        best = max(ok, key=lambda i: table["early_fraction"][i])
        t = test["max_prob"]["thresholds"][best]
        tell(
            f"max_prob threshold {t} at every exit: {100 * table['early_fraction'][best]:.1f}% of test samples "
            f"leave early, accuracy {100 * table['accuracy'][best]:.2f}% ({drops[best]:+.2f} pp below the final exit)"
        )
    return tell.done(f"{test['samples']} test samples; accuracy per exit: {accuracy}")


# ---------------------------------------------------------------------------- sweep


def sweep(folder: str | Path, board: str, *, log: Say = print, say: Say = _silent, **options) -> StepDone:
    """The design search on ``board``; ``options`` are :func:`exitflow.dse.sweep.sweep`'s own
    (objective, accuracy floor, limits), its defaults where left out."""
    r = search.sweep(folder, board, log=log, **options)
    c = r.chosen
    names = ", ".join(r.report.chosen.exits) or "none"  # names, as pareto.json has them, not indices
    if c.exits:
        names += f" ({c.policy})"
    tell = _Lines(say)
    tell(
        f"chosen: exits {names} at thresholds {list(c.thresholds)}: "
        f"{r.fps_with_gates:,.0f} samples/s "
        f"with its gates of {r.gate_depth} feature maps ({c.fps:,.0f} with unbounded gates), "
        f"{r.gain_with_gates:.2f}x the best design without early exits ({r.no_exit.fps:,.0f}/s); "
        f"LUT {c.resources.lut:,.0f}, "
        f"BRAM18 {c.resources.bram18:.0f}, DSP {c.resources.dsp:.0f}, mean latency {c.mean_latency_us:.1f} us; "
        f"test accuracy {100 * r.test_accuracy:.2f}% "
        f"(final exit alone {100 * r.final_test_accuracy:.2f}%)"
    )
    if c.exits:
        tell(
            f"on the test split's traffic: {r.fps_with_gates_test:,.0f} samples/s with its gates "
            f"({r.fps_with_gates_test / r.no_exit.fps:.2f}x)"
        )
    e = r.equal_throughput
    if e is not None:
        tell(
            f"matching the no-exit throughput with its gates takes {e.resources.lut:,.0f} LUTs "
            f"({e.resources.lut / r.no_exit.resources.lut:.1%} of the no-exit design's)"
        )
    tell(_floor_line(r))
    tell(f"what keeps it from being faster: {r.bound}")
    tell(
        f"wrote {folder}/sweep: pareto.json, pareto.png, resources.png, design.yaml "
        f"({len(r.front)} designs on the front)"
    )
    return tell.done(
        f"chosen exits {names} at thresholds {list(c.thresholds)}: {c.fps:,.0f} samples/s "
        f"({r.gain:.2f}x the best design without early exits), LUT {c.resources.lut:,.0f}, "
        f"test accuracy {100 * r.test_accuracy:.2f}%; {len(r.front)} designs on the front"
    )


def _floor_line(r) -> str:
    """How the chosen design keeps the accuracy floor: certified (with its p-value and how many
    threshold configurations were), or met on the validation split."""
    chosen, cert = r.report.chosen, r.report.certificate
    drops = f"validation drop {chosen.val_drop_pp:.2f} pp, test drop {chosen.test_drop_pp:.2f} pp"
    if cert is None:
        return f"accuracy floor met on the validation split (a point estimate, --confidence 1): {drops}"
    how = "needs no test without early exits" if not chosen.exits else f"certified, p = {chosen.p_value:.3f}"
    line = (
        f"accuracy floor ({cert.floor}) at confidence {cert.confidence:g}: the chosen design {how} ({drops}); "
        f"{cert.certified} of {cert.configurations} threshold configurations certified, {cert.tested} tested"
    )
    if cert.certified == 0:
        line += (
            f" (none with early exits: {cert.testing_samples} validation samples tested them; more validation "
            "samples, a lower --confidence or a larger --max-drop-pp admit more)"
        )
    return line


# ---------------------------------------------------------------------------- build


def build(folder: str | Path, design: str | Path | None = None, *, log: Say = print, say: Say = _silent) -> StepDone:
    """FINN code generation for every stage and head of ``design`` (default: the sweep's) and the
    Vivado project; then the bitfile where Vivado and Vitis HLS are, or the command to run where
    they are."""
    reports = build_with_project(folder, design, log=log)
    tell = _Lines(say)
    tell(
        f"wrote {folder}/hw: {len(reports)} graphs through FINN code generation, "
        f"the Vivado project in {folder}/hw/vivado"
    )
    text = f"{len(reports)} graphs through FINN code generation, the Vivado project in hw/vivado"
    missing = missing_tools()
    if missing:
        tell(
            f"bitfile: needs {' and '.join(missing)} (not on PATH); on a machine with them run: "
            f"exitflow build {folder} --design {design or f'{folder}/sweep/design.yaml'}"
        )
        return tell.done(f"{text}; bitfile not run (needs {' and '.join(missing)})")
    bitfile = build_bitfile(folder, log=log)
    tell(f"bitfile: {bitfile}")
    return tell.done(f"{text}; bitfile {bitfile}")


# ---------------------------------------------------------------------------- cosim


def cosim(
    folder: str | Path, design: str | Path | None = None, *, cycle: bool, say: Say = _silent, **options
) -> StepDone:
    """Cosimulate the built design against the quantised model (``options``: samples, engine,
    reference_samples of :func:`exitflow.cosim.cosimulate`), with ``cycle`` the cycle-level
    simulation on the exits it found, then write ``cosim/report.json``. A mismatch is the
    result's ``error``: ``exitflow run`` ends with the report first."""
    bar = _bar("cosim")
    try:
        report = cosimulate(folder, design, progress=bar.update, **options)
    finally:
        bar.close()
    data = report.to_data()
    verdict = "bit-exact" if report.bit_exact else f"{report.mismatch_count} MISMATCHES"
    text = f"{verdict} on {report.samples} test samples"
    cycle_line = None
    if cycle:
        taken = report.engines[0].results.exit
        repeats = max(3, -(-MIN_SAMPLES // len(taken)))
        bar = _bar("cycle simulation", total=repeats * len(taken))
        try:
            simulated = simulate_design(folder, design, taken, progress=bar.update)
        finally:
            bar.close()
        data["cycle"] = simulated.to_data()
        cycle_line = simulated.summary()
        text += (
            f"; cycle simulation {simulated.simulated_fps:,.0f} samples/s against "
            f"{simulated.predicted_fps:,.0f} predicted (ratio {simulated.ratio:.3f})"
        )
    atomic_write(RunDir(folder).cosim_report, lambda tmp: tmp.write_text(json.dumps(data, indent=1)))
    shown = f"{folder}/cosim/report.json"
    tell = _Lines(say)
    tell(f"{report.summary()}; predicted {report.predicted_fractions}")
    if cycle_line is not None:
        tell(cycle_line)
    tell(f"wrote {shown}")
    error = None
    if not report.bit_exact:
        error = MismatchError(
            f"{report.mismatch_count} of {report.samples} samples differ; first: "
            f"{report.mismatches[0].describe()} (all in {shown})"
        )
    return tell.done(text, error)


# ---------------------------------------------------------------------------- predict


def predict(folder: str | Path, changes: dict[str, float | None]):
    """(:class:`~exitflow.cosim.thresholds.Prediction` at the built design's thresholds with
    ``changes``, the design's thresholds): what the PYNQ driver's ``set_thresholds`` reports, from
    the files it reads (``hw/driver.json``, ``hw/driver.npz``)."""
    run = RunDir(folder)
    build = f"build it with `exitflow build {folder}`"
    if not is_finished(run.hw):
        raise ConfigError(f"{run.hw}: no finished build; {build}")
    model = ThresholdModel.load(run.driver)
    return model.predict(changes), model.thresholds()


# ---------------------------------------------------------------------------- report


def report(folder: str | Path, *, say: Say = _silent) -> StepDone:
    """The self-contained HTML report of the run folder."""
    path = write_report(folder)
    with contextlib.suppress(ValueError):  # inside the working folder: shown as the user would type it
        path = path.relative_to(Path.cwd())
    tell = _Lines(say)
    tell(f"wrote {path}")
    return tell.done(f"{path} ({path.stat().st_size / 1e6:.1f} MB, self-contained)")


__all__ = ["StepDone", "build", "cosim", "predict", "profile", "report", "sweep", "train"]

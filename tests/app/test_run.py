"""`exitflow run`: the whole flow, step caching, --force, interrupt and resume, bad input."""

import hashlib
import json
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from exitflow.app.cli import main
from exitflow.app.run import STEP_NAMES, STEPS, load_config, read_records, run

OUTPUTS = [
    "model.pt",
    "config.yaml",
    "profile.npz",
    "profile.png",
    "sweep/pareto.json",
    "sweep/design.yaml",
    "hw/build.json",
    "cosim/report.json",
    "report.html",
]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _state(out: Path) -> dict[str, tuple[int, str]]:
    return {name: ((out / name).stat().st_mtime_ns, _digest(out / name)) for name in OUTPUTS}


def _recording(calls: list[str]):
    """STEPS whose work only records that it was asked to run (for tests of the bookkeeping)."""

    def work(name):
        def record(ctx):
            calls.append(name)
            return f"{name} (recorded)"

        return record

    return tuple(replace(s, work=work(s.name)) for s in STEPS)


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished_run.out, out)
    return out


@pytest.mark.slow
def test_interrupted_build_loses_nothing_and_the_rerun_continues(finished_run):
    assert finished_run.interrupted_after_graphs == 1  # Ctrl-C came in the middle of the build
    assert list(finished_run.records_after_interrupt) == ["train", "profile", "sweep"]
    assert not finished_run.hw_after_interrupt  # the half-built hw/ was removed, nothing half-written stays
    statuses = [(s.name, s.status) for s in finished_run.resumed]
    assert statuses == [
        ("train", "skipped"),
        ("profile", "skipped"),
        ("sweep", "skipped"),
        ("build", "done"),
        ("cosim", "done"),
        ("report", "done"),
    ]
    assert list(read_records(finished_run.out)) == list(STEP_NAMES)
    for name in OUTPUTS:
        assert (finished_run.out / name).is_file(), name
    report = json.loads((finished_run.out / "cosim" / "report.json").read_text())
    assert report["bit_exact"] is True
    assert report["cycle"]["simulated_fps"] > 0 and report["cycle"]["predicted_fps"] > 0


@pytest.mark.slow
def test_one_summary_line_per_step(finished_run):
    resumed = finished_run.log[-6:]
    assert [line.split(":", 1)[0] for line in resumed] == list(STEP_NAMES)
    assert all("\n" not in line for line in finished_run.log)
    assert resumed[0].startswith("train: unchanged, skipped (30 epochs")
    assert "bit-exact on 269 test samples" in resumed[4]


@pytest.mark.slow
def test_second_run_skips_every_step_quickly(finished_run):
    before = _state(finished_run.out)
    run_json = (finished_run.out / "run.json").read_text()
    lines: list[str] = []
    started = time.perf_counter()
    result = run(load_config(finished_run.config_path), finished_run.out, log=lines.append)
    assert time.perf_counter() - started < 20
    assert [s.status for s in result.steps] == ["skipped"] * 6
    assert all(line.split(":", 1)[1].startswith(" unchanged, skipped") for line in lines)
    assert _state(finished_run.out) == before
    assert (finished_run.out / "run.json").read_text() == run_json


@pytest.mark.slow
def test_cli_rerun_skips_every_step(finished_run, exitflow_cmd):
    out = subprocess.run(
        [*exitflow_cmd, "run", str(finished_run.config_path), "--out", str(finished_run.out)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split(":", 1)[0] for line in lines[:6]] == list(STEP_NAMES)
    assert lines[-1].startswith("done in ") and "every step unchanged" in lines[-1]


@pytest.mark.slow
def test_force_redoes_every_step(run_copy, finished_run):
    config = load_config(finished_run.config_path)
    calls: list[str] = []
    run(config, run_copy, log=lambda line: None, steps=_recording(calls))
    assert calls == []
    run(config, run_copy, force=True, log=lambda line: None, steps=_recording(calls))
    assert calls == list(STEP_NAMES)


@pytest.mark.slow
def test_edited_design_redoes_build_and_what_follows(run_copy, finished_run):
    design = run_copy / "sweep" / "design.yaml"
    design.write_text(design.read_text() + "\n# edited by hand\n")
    calls: list[str] = []
    result = run(load_config(finished_run.config_path), run_copy, log=lambda line: None, steps=_recording(calls))
    assert calls == ["build", "cosim", "report"]
    assert [s.status for s in result.steps[:3]] == ["skipped"] * 3


@pytest.mark.slow
def test_missing_output_redoes_its_step(run_copy, finished_run):
    (run_copy / "sweep" / "pareto.png").unlink()
    calls: list[str] = []
    run(load_config(finished_run.config_path), run_copy, log=lambda line: None, steps=_recording(calls))
    assert calls[0] == "sweep"


@pytest.mark.slow
def test_changed_config_redoes_from_train_and_keeps_the_old_model_until_done(run_copy, finished_run, monkeypatch):
    from exitflow.quant import train as train_module

    config = load_config(finished_run.config_path)
    changed = replace(config, train=replace(config.train, epochs=3, seed=5))
    old = {name: _digest(run_copy / name) for name in ("model.pt", "config.yaml", "train_log.json")}
    calls: list[str] = []
    steps = tuple(
        real if real.name == "train" else recording for real, recording in zip(STEPS, _recording(calls), strict=False)
    )

    # Ctrl-C in the new config's second epoch: the earlier run's model stays as it was
    evaluate = train_module.evaluate
    seen = []

    def interrupted(*args, **kwargs):
        seen.append(1)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(changed, run_copy, log=lambda line: None, steps=steps)
    assert {name: _digest(run_copy / name) for name in old} == old
    assert read_records(run_copy)["train"] == read_records(finished_run.out)["train"]
    monkeypatch.setattr(train_module, "evaluate", evaluate)

    result = run(changed, run_copy, log=lambda line: None, steps=steps)
    assert result.steps[0].status == "done"
    assert "3 epochs (2 run now)" in result.steps[0].summary  # resumed after the finished first epoch
    assert calls == ["profile", "sweep", "build", "cosim", "report"]
    assert _digest(run_copy / "model.pt") != old["model.pt"]
    assert "epochs: 3" in (run_copy / "config.yaml").read_text() and "seed: 5" in (run_copy / "config.yaml").read_text()
    assert not (run_copy / ".run").exists() and not (run_copy / "checkpoint.pt").exists()


@pytest.mark.parametrize("case", ["missing", "unknown key", "malformed", "bad value", "bad board", "out is a file"])
def test_bad_input_is_one_line_exit_2(case, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    out = tmp_path / "out"
    args = ["run", str(config), "--out", str(out)]
    expected = {
        "missing": "file not found",
        "unknown key": "model.bogus: unknown key",
        "malformed": "malformed YAML",
        "bad value": "train.epochs: must be >= 1",
        "bad board": "unknown board 'Pynq-Z9'",
        "out is a file": "exists and is not a folder",
    }[case]
    text = {"unknown key": "model: {bogus: 1}\n", "malformed": "data: [unclosed\n", "bad value": "train: {epochs: 0}\n"}
    if case in text:
        config.write_text(text[case])
    elif case != "missing":
        config.write_text("data: {name: digits}\n")
    if case == "bad board":
        args += ["--board", "Pynq-Z9"]
    if case == "out is a file":
        out.write_text("mine\n")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("exitflow run: error: ") and expected in err
    assert "Traceback" not in err
    if case == "out is a file":
        assert out.read_text() == "mine\n"
    else:
        assert not out.exists()  # nothing was started


def test_a_folder_of_exitflow_train_with_another_config_is_refused(digits_run, tmp_path, capsys):
    """As `exitflow train` refuses it: only folders that `exitflow run` made (run.json) are replaced."""
    out = tmp_path / "trained"
    out.mkdir()
    for name in ("model.pt", "config.yaml"):
        shutil.copy(digits_run / name, out / name)
    before = {name: _digest(out / name) for name in ("model.pt", "config.yaml")}
    config = tmp_path / "config.yaml"
    config.write_text("data: {name: digits}\ntrain: {epochs: 2}\n")
    assert main(["run", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a run with a different config" in err
    assert {name: _digest(out / name) for name in before} == before
    assert not (out / "run.json").exists()


@pytest.mark.slow
def test_a_cosim_without_cycle_leaves_the_section_out_and_the_report_says_how_to_run_it(run_copy, capsys):
    from exitflow.app.report import collect

    assert main(["cosim", str(run_copy), "--samples", "20"]) == 0
    capsys.readouterr()
    report = json.loads((run_copy / "cosim" / "report.json").read_text())
    assert report["bit_exact"] is True and "cycle" not in report
    (cycle,) = [n for n in collect(run_copy).not_run if n.what == "cycle-level simulation"]
    assert cycle.command == f"exitflow cosim {run_copy} --cycle"


@pytest.mark.slow
def test_a_cosim_mismatch_still_ends_with_the_report_then_exit_4(run_copy, finished_run):
    from exitflow.core.errors import MismatchError

    path = run_copy / "cosim" / "report.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "bit_exact": False, "mismatch_count": 3}))
    calls: list[str] = []
    with pytest.raises(MismatchError, match="differs from the model") as err:
        run(load_config(finished_run.config_path), run_copy, log=lambda line: None, steps=_recording(calls))
    assert err.value.exit_code == 4
    assert calls == ["report"]  # the report (its input changed) was redone before the error


def test_a_confidence_outside_zero_one_is_refused_before_anything_starts(tmp_path):
    """The library's settings are checked as the command line checks them."""
    from exitflow.app.run import RunSettings, load_config, run
    from exitflow.core.errors import ConfigError

    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ConfigError, match=r"--confidence: must be in \(0, 1\]"):
            run(load_config(None), tmp_path / "out", RunSettings(confidence=bad))
    assert not (tmp_path / "out").exists()


def test_the_run_configs_sweep_section_reaches_the_sweep(tmp_path, monkeypatch, exitflow_cmd):
    """``sweep: {max_exits: N}`` in the run config: `exitflow run` gives its sweep step N and
    records it; the other commands read the config without it; left at its default, the
    resolved config (every step's key) is what it was before the section existed, so finished
    runs are not redone. A bad section is one line, exit code 2, before anything is written."""
    from exitflow.app import run as run_module
    from exitflow.app.run import RunSettings, SweepSection, _resolved, load_run_config
    from exitflow.core.errors import ConfigError

    config_file = tmp_path / "my config.yaml"
    config_file.write_text("model: {backbone: lenet}\nsweep: {max_exits: 2}\n")
    config, section = load_run_config(config_file)
    assert section == SweepSection(max_exits=2) and load_config(config_file) == config
    assert "max_exits" not in _resolved(config, RunSettings())  # the default: keys as before
    assert _resolved(config, RunSettings(max_exits=2)).endswith("max_exits: 2\n")
    seen = {}

    def fake_sweep(out, board, **options):
        seen.update(options)
        (Path(out) / "sweep").mkdir(parents=True, exist_ok=True)
        return type("Done", (), {"summary": "swept (recorded)"})()

    monkeypatch.setattr(run_module, "sweep", fake_sweep)
    only_sweep = tuple(replace(s, inputs=(), outputs=()) for s in STEPS if s.name == "sweep")
    out = tmp_path / "out"
    run(config, out, RunSettings(max_exits=section.max_exits), log=lambda line: None, steps=only_sweep)
    assert seen["max_exits"] == 2
    assert json.loads((out / "run.json").read_text())["max_exits"] == 2
    # the command line passes the section on
    from exitflow.app import commands

    given = []
    monkeypatch.setattr(
        commands, "run", lambda config, out, settings, force: given.append(settings) or run_module.RunResult(Path(out))
    )
    assert main(["run", str(config_file), "--out", str(tmp_path / "cli")]) == 0
    assert given[0].max_exits == 2
    for text, message in (
        ("sweep: {max_exits: 15}\n", "sweep.max_exits: must be an integer from 0 to 14"),
        ("sweep: {max_exit: 2}\n", "sweep.max_exit: unknown key; allowed keys here: max_exits"),
        ("sweep: {max_exits: two}\n", "sweep.max_exits: must be an integer"),
        ("sweep: 3\n", "sweep: must be a mapping"),
    ):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        done = subprocess.run(
            [*exitflow_cmd, "run", str(bad), "--out", str(tmp_path / "never")], capture_output=True, text=True
        )
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, (
            done.stderr
        )
        assert not (tmp_path / "never").exists()
    with pytest.raises(ConfigError, match="sweep.max_exits: must be an integer from 0 to 14"):
        run(config, tmp_path / "never", RunSettings(max_exits=-1))
    assert not (tmp_path / "never").exists()

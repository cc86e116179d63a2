"""Ctrl-C and kill -9 at several points of `exitflow build`, `run` and `train`, then resume; and
two exitflow processes on one run folder. Table-driven like the rest of the suite; these are the
cases that run real builds, so there are few of them."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hostile_cases import TRAINED_CONFIG
from hostile_harness import LOCK, Done, assert_one_line_error, assert_unchanged, checksums, copy_run, exitflow, start

pytestmark = pytest.mark.slow
BACKUP = ".hw.previous"


def wait_for(what: Callable[[], bool], proc, timeout: float = 300.0, label: str = "") -> None:
    t0 = time.monotonic()
    while not what():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended ({proc.returncode}) before {label}:\n{out[-1500:]}\n{err[-1500:]}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {label}")
        time.sleep(0.05)


def finish(proc, timeout: float = 600.0) -> Done:
    out, err = proc.communicate(timeout=timeout)
    return Done(proc.args[1:], proc.returncode, out, err)


def after(seconds: float) -> Callable[[Path, object], None]:
    def point(run: Path, proc) -> None:
        time.sleep(seconds)

    return point


def when(rel: str, extra: float = 0.0) -> Callable[[Path, object], None]:
    def point(run: Path, proc) -> None:
        wait_for(lambda: any(run.glob(rel)), proc, label=rel)
        time.sleep(extra)

    return point


def locked(run: Path, proc) -> None:
    wait_for(lambda: (run / LOCK).is_file() and (run / LOCK).read_text().strip() != "", proc, label="the lock")


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    """A copy of the trained run in tmp_path/run, tmp_path as the working folder."""
    (tmp_path / "hostile.yaml").write_text(TRAINED_CONFIG)
    return copy_run(trained, tmp_path / "run")


def _folder_state(run: Path) -> dict[str, str]:
    return checksums(run)


@dataclass(frozen=True)
class Interrupt:
    id: str
    args: tuple[str, ...]
    point: Callable[[Path, object], None]
    sig: int = signal.SIGINT
    prepare: Callable[[Path], None] | None = None
    resume: tuple[str, ...] | None = None  # the command run afterwards, expected to finish (0)
    may_write: tuple[str, ...] = ()


def edit_design(run: Path) -> None:
    path = run / "sweep" / "design.yaml"
    path.write_text(path.read_text() + "# edited by hand\n")


BUILD = ("build", "run")
INTERRUPTS = [
    Interrupt("build-sigint-at-0.3s", BUILD, after(0.3)),
    Interrupt("build-sigint-at-2s", BUILD, after(2.0)),
    Interrupt("build-sigint-when-backup-made", BUILD, when(BACKUP)),
    Interrupt("build-sigint-in-finn-codegen", BUILD, when("hw/*/codegen", 0.5), resume=BUILD),
    Interrupt("build-sigint-at-6s", BUILD, after(6.0)),
    Interrupt("run-sigint-at-0.5s", ("run", "hostile.yaml", "--out", "run"), after(0.5), prepare=edit_design),
    Interrupt(
        "run-sigint-in-build",
        ("run", "hostile.yaml", "--out", "run"),
        when(BACKUP, 0.5),
        prepare=edit_design,
        resume=("run", "hostile.yaml", "--out", "run"),
        may_write=("sweep/design.yaml",),
    ),
    Interrupt("cosim-sigint-at-1.5s", ("cosim", "run"), after(1.5)),
    Interrupt("sweep-sigint-at-4s", ("sweep", "run", "--board", "Pynq-Z2"), after(4.0), may_write=("log/finn.log",)),
]


@pytest.mark.parametrize("case", INTERRUPTS, ids=[c.id for c in INTERRUPTS])
def test_interrupt_then_resume(case, run_copy):
    cwd = run_copy.parent
    if case.prepare:
        case.prepare(run_copy)
    before = _folder_state(run_copy)
    proc = start(list(case.args), cwd)
    case.point(run_copy, proc)
    proc.send_signal(case.sig)
    done = finish(proc)
    assert_one_line_error(done, 130)
    assert "interrupted" in done.stderr
    # Nothing finished is lost: the folder is as it was (an interrupted build put hw/ back).
    assert not (run_copy / BACKUP).exists(), "the backup was left behind after Ctrl-C"
    assert_unchanged(before, _folder_state(run_copy), case.may_write)
    if case.resume:
        again = exitflow(list(case.resume), cwd)
        assert again.code == 0, again.describe()
        assert (run_copy / "hw" / "build.json").is_file() and not (run_copy / BACKUP).exists()


def test_train_sigint_then_resume(tmp_path):
    """Ctrl-C during training: 130, no half-written file; the same command then finishes."""
    (tmp_path / "c.yaml").write_text("data: {name: digits}\nmodel: {backbone: lenet}\ntrain: {epochs: 2, seed: 3}\n")
    proc = start(["train", "c.yaml", "--out", "fresh"], tmp_path)
    wait_for(
        lambda: any((tmp_path / "fresh").glob("*.pt")) or (tmp_path / "fresh" / "train_log.json").exists(),
        proc,
        label="the first checkpoint",
        timeout=300,
    )
    proc.send_signal(signal.SIGINT)
    done = finish(proc)
    assert_one_line_error(done, 130)
    assert not list((tmp_path / "fresh").glob(".tmp.*")), "a half-written temporary file was left"
    again = exitflow(["train", "c.yaml", "--out", "fresh"], tmp_path)
    assert again.code == 0, again.describe()
    assert (tmp_path / "fresh" / "model.pt").is_file()


def _hw_of(state: dict[str, str], prefix: str = "hw/") -> dict[str, str]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


@pytest.mark.parametrize("kill_at", [BACKUP, "hw/*/codegen"])
def test_kill9_then_sigint_keeps_the_last_good_build(run_copy, kill_at):
    """kill -9 during a rebuild, then Ctrl-C during the next build: the last good hw/ is still
    there (or in its backup); cosim and report find it and name it."""
    cwd = run_copy.parent
    good = _hw_of(_folder_state(run_copy))
    proc = start(list(BUILD), cwd)
    when(kill_at, 0.3)(run_copy, proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    proc = start(list(BUILD), cwd)
    when("hw/*/codegen" if kill_at == BACKUP else BACKUP, 0.2)(run_copy, proc)
    proc.send_signal(signal.SIGINT)
    done = finish(proc)
    assert_one_line_error(done, 130)
    state = _folder_state(run_copy)
    kept = _hw_of(state) if (run_copy / "hw" / "build.json").is_file() else _hw_of(state, BACKUP + "/")
    assert kept == good, "the last good build is neither in hw/ nor in its backup"
    report = exitflow(["report", "run"], cwd)
    assert report.code == 0, report.describe()
    cosim = exitflow(["cosim", "run", "--samples", "20"], cwd)
    assert cosim.code == 0, cosim.describe()
    assert _hw_of(_folder_state(run_copy)) == good
    assert not (run_copy / BACKUP).exists()


def test_kill9_leaves_backup_that_cosim_finds_and_names(run_copy):
    cwd = run_copy.parent
    good = _hw_of(_folder_state(run_copy))
    proc = start(list(BUILD), cwd)
    when(BACKUP, 0.5)(run_copy, proc)  # the earlier build moved aside, the new one under way
    proc.kill()
    proc.wait(timeout=60)
    assert (run_copy / BACKUP).is_dir() and not (run_copy / "hw" / "build.json").is_file(), (
        "the build ended before kill -9"
    )
    cosim = exitflow(["cosim", "run", "--samples", "20"], cwd)
    assert cosim.code == 0, cosim.describe()
    if "put back" not in cosim.stderr and "backup" not in cosim.stderr and ".hw.previous" not in cosim.stderr:
        pytest.fail(f"cosim did not name the build it found in the backup:\n{cosim.describe()}")
    assert _hw_of(_folder_state(run_copy)) == good


# ---------------------------------------------------------------------------- two processes, one folder

SECOND = [
    ("build-build", BUILD, ("build", "run")),
    ("build-run", BUILD, ("run", "hostile.yaml", "--out", "run")),
    ("build-report", BUILD, ("report", "run")),
    ("build-cosim", BUILD, ("cosim", "run", "--samples", "5")),
    ("build-sweep", BUILD, ("sweep", "run", "--board", "Pynq-Z2")),
    ("cosim-build", ("cosim", "run"), ("build", "run")),
]


@pytest.mark.parametrize("first,second", [c[1:] for c in SECOND], ids=[c[0] for c in SECOND])
def test_second_process_is_refused_naming_the_first(run_copy, first, second):
    cwd = run_copy.parent
    proc = start(list(first), cwd)
    try:
        locked(run_copy, proc)
        state = _folder_state(run_copy)
        t0 = time.monotonic()
        other = exitflow(list(second), cwd)
        assert time.monotonic() - t0 < 60, "the second process was not refused at once"
        assert_one_line_error(other, 2)
        assert str(proc.pid) in other.stderr, other.describe()
        # the refused process changed nothing the first one did not
        assert _folder_state(run_copy).get(LOCK) == state.get(LOCK)
    finally:
        proc.send_signal(signal.SIGINT)
        done = finish(proc)
    assert done.code in (0, 130), done.describe()
    assert (run_copy / "hw" / "build.json").is_file() and not (run_copy / BACKUP).exists()


def test_two_builds_both_started_leave_a_finished_hw(run_copy):
    """The first build finishes; the second, started while it runs, is refused; hw/ is whole."""
    cwd = run_copy.parent
    proc = start(list(BUILD), cwd)
    locked(run_copy, proc)
    other = exitflow(list(BUILD), cwd)
    first = finish(proc)
    assert first.code == 0, first.describe()
    assert_one_line_error(other, 2)
    assert (run_copy / "hw" / "build.json").is_file() and not (run_copy / BACKUP).exists()


def test_two_trains_on_one_new_folder(tmp_path):
    (tmp_path / "c.yaml").write_text("data: {name: digits}\nmodel: {backbone: lenet}\ntrain: {epochs: 1, seed: 4}\n")
    proc = start(["train", "c.yaml", "--out", "new"], tmp_path)
    try:
        locked(tmp_path / "new", proc)
        other = exitflow(["train", "c.yaml", "--out", "new"], tmp_path)
        assert_one_line_error(other, 2)
        assert str(proc.pid) in other.stderr, other.describe()
    finally:
        proc.send_signal(signal.SIGINT)
        finish(proc)


# ---------------------------------------------------------------------------- a read-only run folder

RO_MOUNT = 'd=$1; shift; mount --bind "$d" "$d" && mount -o remount,bind,ro "$d" && exec "$@"'


def _read_only_prefix(folder: Path) -> list[str] | None:
    """A command prefix that runs a command with ``folder`` mounted read-only (root ignores file
    modes, so a chmod would not stop it), or None where that cannot be done."""
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return None
    prefix = ["unshare", "-m", "sh", "-c", RO_MOUNT, "sh", str(folder)]
    probe = subprocess.run([*prefix, "sh", "-c", f"! touch '{folder}/.probe' 2>/dev/null"], capture_output=True)
    return prefix if probe.returncode == 0 and not (folder / ".probe").exists() else None


@pytest.mark.parametrize(
    "args",
    [
        ("report", "run"),
        ("profile", "run"),
        ("build", "run"),
        ("cosim", "run", "--samples", "5"),
        ("sweep", "run", "--board", "Pynq-Z2"),
        ("run", "hostile.yaml", "--out", "run", "--force"),
    ],
    ids=lambda a: a[0],
)
def test_read_only_run_folder_is_one_line(run_copy, args):
    prefix = _read_only_prefix(run_copy)
    if prefix is None:  # not root: file modes are enough
        for p in [run_copy, *run_copy.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
        prefix = []
    before = _folder_state(run_copy)
    try:
        done = exitflow(list(args), run_copy.parent, prefix=prefix)
        assert_one_line_error(done, 2)
        assert_unchanged(before, _folder_state(run_copy))
    finally:
        for p in [run_copy, *run_copy.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)

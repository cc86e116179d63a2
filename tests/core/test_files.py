"""exitflow.core.files: user paths, one writer per run folder, which folders exitflow may write."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from exitflow.core.errors import INTERRUPTED, ConfigError, RunFolderBusy
from exitflow.core.files import LOCK_FILE, atomic_write, check_out_folder, run_folder_lock, user_path
from exitflow.hw.build import backup_of, is_finished, restore_build


def test_user_path_is_absolute_from_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert user_path("runs/x") == tmp_path / "runs" / "x"
    assert user_path("~/y") == Path.home() / "y"
    assert user_path("a/../b") == tmp_path / "b"


def test_atomic_write_renames_nothing_after_ctrl_c(tmp_path):
    """A library that swallowed the KeyboardInterrupt lets the work go on; the result written
    afterwards must not replace what the user had (CI caught `exitflow cosim` doing that)."""
    path = tmp_path / "report.json"
    path.write_text("before")
    INTERRUPTED.set()
    try:
        with pytest.raises(KeyboardInterrupt):
            atomic_write(path, lambda tmp: tmp.write_text("after"))
    finally:
        INTERRUPTED.clear()
    assert path.read_text() == "before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    atomic_write(path, lambda tmp: tmp.write_text("after"))
    assert path.read_text() == "after"


def test_lock_is_reentrant_in_one_process(tmp_path):
    (tmp_path / "run").mkdir()
    with run_folder_lock(tmp_path / "run", "exitflow run") as folder:
        with run_folder_lock(tmp_path / "run", "exitflow build"):
            assert "exitflow run" in (folder / LOCK_FILE).read_text()
    assert (folder / LOCK_FILE).read_text() == ""  # released: nobody named as writer


def test_a_second_process_is_refused_naming_the_first(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        from exitflow.core.files import run_folder_lock
        with run_folder_lock({str(folder)!r}, "exitflow build"):
            print("held", flush=True)
            time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusy, match=rf"exitflow process {holder.pid} \(`exitflow build`\) is writing"):
            with run_folder_lock(folder, "exitflow run"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with run_folder_lock(folder, "exitflow run"):  # the kernel released the lock with the killed process
        pass


def test_a_folder_made_for_a_command_that_wrote_nothing_goes_again(tmp_path):
    with pytest.raises(ConfigError):
        with run_folder_lock(tmp_path / "new", "exitflow run"):
            raise ConfigError("bad config")
    assert not (tmp_path / "new").exists()


def test_out_folder_must_be_new_empty_or_exitflows(tmp_path):
    check_out_folder(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    check_out_folder(tmp_path / "empty")
    theirs = tmp_path / "theirs"
    (theirs / "hw").mkdir(parents=True)
    (theirs / "hw" / "top.v").write_text("module top; endmodule\n")
    with pytest.raises(ConfigError, match="holds files exitflow did not write"):
        check_out_folder(theirs)
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "run.json").write_text("{}")
    check_out_folder(ours)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        check_out_folder(tmp_path / "file")


def _build(folder: Path, tag: str, finished: bool) -> None:
    folder.mkdir(parents=True)
    (folder / "graph.onnx").write_text(tag)
    if finished:
        (folder / "build.json").write_text("{}")


@pytest.mark.parametrize(
    ("hw", "backup", "expected"),
    [
        (None, None, None),
        ("new", None, "new"),  # an unfinished first build: kept, the next build replaces it
        ("good", None, "good"),
        (None, "good", "good"),  # killed between moving the old build aside and starting the new one
        ("new", "good", "good"),  # killed during the build
        ("good2", "good", "good2"),  # killed while removing the backup of a finished build
    ],
)
def test_restore_build_after_an_interruption_at_any_point(tmp_path, hw, backup, expected):
    final = tmp_path / "hw"
    if hw:
        _build(final, hw, finished=hw.startswith("good"))
    if backup:
        _build(backup_of(final), backup, finished=True)
    restore_build(final, log=lambda line: None)
    assert not backup_of(final).exists()
    if expected is None:
        assert not final.exists()
    else:
        assert (final / "graph.onnx").read_text() == expected
        assert is_finished(final) == expected.startswith("good")
    restore_build(final, log=lambda line: None)  # and again: nothing more changes
    assert (final / "graph.onnx").read_text() == expected if expected else not final.exists()


def test_restore_build_survives_being_killed_while_it_restores(tmp_path):
    """kill -9 in the middle of the restore's own clean-up: the next call finishes it."""
    final = tmp_path / "hw"
    _build(final, "new", finished=False)
    _build(backup_of(final), "good", finished=True)
    (final / "graph.onnx").unlink()  # half of the unfinished build removed, then killed
    restore_build(final, log=lambda line: None)
    assert (final / "graph.onnx").read_text() == "good" and is_finished(final)
    assert os.listdir(tmp_path) == ["hw"]

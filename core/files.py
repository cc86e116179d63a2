"""Writing files so that an interrupted run never leaves a half-written one behind."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from exitflow.core.errors import ConfigError, RunFolderBusy, check_interrupt


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write`` on a temporary path beside ``path``, then rename it into place.

    The temporary name keeps the suffix (``.a.npz`` -> ``.tmp.a.npz``) so writers that add or
    check a suffix, such as ``numpy.savez``, write exactly that file.

    After Ctrl-C nothing is renamed into place, even when some library swallowed the
    KeyboardInterrupt and the work went on: the file stays as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp.{path.name}")
    try:
        write(tmp)
        check_interrupt()
        tmp.replace(path)
    except BaseException:  # Ctrl-C or a failed write: no half-written file left beside the real one
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


# ---------------------------------------------------------------------------- user paths


def user_path(path: str | Path) -> Path:
    """A path as the user gave it, made absolute once where it enters exitflow: ``~`` expanded,
    relative to the current folder. Nothing below the command line and the Python API sees a
    relative path (FINN, for one, resolves relative folders against its own config folder)."""
    return Path(os.path.abspath(Path(path).expanduser()))


# ---------------------------------------------------------------------------- one writer per run folder

LOCK_FILE = ".exitflow.lock"
# Files and folders that say "exitflow made this folder": a folder holding anything else is not
# taken as a run folder (its files are the user's, and exitflow would write over them).
RUN_MARKERS = (LOCK_FILE, "run.json", "model.pt", "checkpoint.pt", "config.yaml", "train_log.json")

_held: dict[Path, list] = {}  # run folder -> [open lock file, depth]: the lock is re-entrant within a process


def is_run_folder(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_MARKERS)


def check_out_folder(folder: Path, option: str = "--out") -> None:
    """A folder exitflow may make its run in: absent, empty, or one that exitflow made."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{option} {folder}: exists and is not a folder; choose another {option}")
    if folder.is_dir() and any(folder.iterdir()) and not is_run_folder(folder):
        shown = ", ".join(sorted(p.name for p in folder.iterdir())[:5])
        raise ConfigError(
            f"{option} {folder}: holds files exitflow did not write ({shown}, ...); choose an empty "
            f"or new folder for {option} (nothing was changed)"
        )


@contextlib.contextmanager
def run_folder_lock(folder: str | Path, command: str):
    """Hold ``folder`` for one writer: a second exitflow process that wants to write it is refused
    at once (:class:`RunFolderBusy`, naming the process that holds it). The lock is the kernel's
    (``flock``), so it goes with its process, however that process ends (kill -9 included)."""
    import fcntl

    folder = user_path(folder)
    if folder in _held:
        _held[folder][1] += 1
        try:
            yield folder
        finally:
            _held[folder][1] -= 1
        return
    path = folder / LOCK_FILE
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")  # noqa: SIM115 (held until the context ends)
    except OSError as err:
        raise ConfigError(
            f"{folder}: cannot write the run folder ({err.strerror}); exitflow writes its outputs "
            "there: make it writable or choose another folder"
        ) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another exitflow process"
        handle.close()
        raise RunFolderBusy(
            f"{folder}: {holder} is writing this run folder; wait for it to finish or use another folder"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"exitflow process {os.getpid()} (`{command}`)\n")
    handle.flush()
    _held[folder] = [handle, 1]
    try:
        yield folder
    finally:
        del _held[folder]
        with contextlib.suppress(OSError):
            handle.truncate(0)
        handle.close()  # releases the lock
        if created and [p.name for p in folder.iterdir()] == [LOCK_FILE]:  # the command stopped before writing
            with contextlib.suppress(OSError):
                path.unlink()
                folder.rmdir()

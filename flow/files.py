"""Writing files so that an interrupted run never leaves a half-written one behind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write`` on a temporary path beside ``path``, then rename it into place.

    The temporary name keeps the suffix (``.a.npz`` -> ``.tmp.a.npz``) so writers that add or
    check a suffix, such as ``numpy.savez``, write exactly that file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp.{path.name}")
    write(tmp)
    tmp.replace(path)
    return path

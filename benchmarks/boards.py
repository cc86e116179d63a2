"""`exitflow boards`: wall time from process start to exit, against a bare Python start.

Each command is run REPEATS times, alternating, and the median is reported; the ratio to a bare
``python -c pass`` start in the same run tells what exitflow adds on top of the interpreter.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

REPEATS = 7


def _seconds(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def run() -> dict:
    exitflow = str(Path(sys.executable).parent / "exitflow")
    python = [sys.executable, "-c", "pass"]
    _seconds([exitflow, "boards"])  # warm the file cache
    boards, bare = [], []
    for _ in range(REPEATS):
        boards.append(_seconds([exitflow, "boards"]))
        bare.append(_seconds(python))
    seconds = statistics.median(boards)
    baseline = statistics.median(bare)
    return {
        "seconds": round(seconds, 4),
        "python_startup_seconds": round(baseline, 4),
        "ratio_vs_python_startup": round(seconds / baseline, 2),
        "repeats": REPEATS,
    }

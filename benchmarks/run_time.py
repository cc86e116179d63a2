"""`run_time`: the README's main-job command, verbatim, from a new empty folder.

The command is read out of README.md (the block after ``<!-- main job -->``, as ``.ci/run`` reads
it) and run with its relative ``--out`` in a fresh temporary folder, with the venv's ``bin`` on
PATH as ``./setup.sh`` leaves it. By default that is ``exitflow run --out runs/default``:
mnist5k, lenet at w4a4 with a candidate exit after every block, Pynq-Z2, throughput objective.
Reports the wall time of the whole run and of each step (from the run's own summary lines), of
a second run in the same folder (which skips every step), and the load average before the run,
so a figure taken on a busy machine says so. Target: total_s <= 600 on 2 cores.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main_job_command() -> str:
    printed = subprocess.run([str(REPO / ".ci" / "run"), "--print"], capture_output=True, text=True, check=True)
    return printed.stdout.splitlines()[2]


def run() -> dict:
    command = main_job_command()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        first = subprocess.run(["bash", "-e", "-c", command], cwd=tmp, env=env, capture_output=True, text=True)
        total = time.perf_counter() - started
        if first.returncode != 0:
            raise RuntimeError(f"{command!r} exited {first.returncode}: {first.stderr.strip()[-500:]}")
        started = time.perf_counter()
        again = subprocess.run(["bash", "-e", "-c", command], cwd=tmp, env=env, capture_output=True, text=True)
        rerun = time.perf_counter() - started
        out = Path(tmp) / re.search(r"--out[ =](\S+)", command).group(1)
        report = (out / "report.html").is_file()
        bit_exact = '"bit_exact": true' in (out / "cosim" / "report.json").read_text()
    steps = {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\w+): .* \[([\d.]+) s\]$", first.stdout, re.M)}
    assert again.returncode == 0 and "every step unchanged" in again.stdout, again.stdout
    return {
        "command": command,
        "total_s": round(total, 1),
        "steps": steps,
        "rerun_s": round(rerun, 2),
        "report_html": report,
        "bit_exact": bit_exact,
        "load_average_before": round(load_before, 2),
        "target_s": 600,
    }

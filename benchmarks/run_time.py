"""`run_time`: the main job, `exitflow run` on the built-in default config, in a fresh folder.

The default is mnist5k, lenet at w4a4 with a candidate exit after every block, Pynq-Z2, throughput
objective. Reports the wall time of the whole run and of each step (train, profile, sweep, build,
cosim, report), and of a second run in the same folder, which skips every step. Target: total_s
<= 600 on 2 cores.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


def run() -> dict:
    from exitflow.run import load_config
    from exitflow.run import run as run_flow

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "default"
        started = time.perf_counter()
        result = run_flow(load_config(None), out, log=lambda line: None)
        total = time.perf_counter() - started
        started = time.perf_counter()
        again = run_flow(load_config(None), out, log=lambda line: None)
        rerun = time.perf_counter() - started
    assert all(s.status == "skipped" for s in again.steps)
    return {
        "total_s": round(total, 1),
        "steps": {s.name: round(s.seconds, 1) for s in result.steps},
        "rerun_s": round(rerun, 2),
        "bit_exact": result.bit_exact,
        "target_s": 600,
    }

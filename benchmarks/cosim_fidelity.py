"""`cosim_fidelity`: the dse model's throughput against the cycle-level simulation of the chosen
design, per model.

For lenet (w4a4, mnist5k, an exit after every block) and cnv (CNV-W2A2 on mnist5k padded to
3x32x32): the design the sweep chooses on Pynq-Z2 at a 1 pp accuracy floor (the dse_gain one),
built with ``exitflow build``; the functional cosimulation (vectorised engine) of the test split
gives the exit sequence; the cycle simulation (``exitflow.cosim.cycle``) runs it node by node,
and ``predicted_fps`` is the design search's own throughput model for the same stages and
sequence (``exitflow.dse.throughput.stage_level_fps``: one unit per stage and head at the
slowest node's cycles, with the gates). ``closed_form_fps`` is the closed-form bound
(``exitflow.dse.throughput.pipeline``). Target: ``ratio`` (simulated / predicted) within 5 % of 1.

Training is shared with the dse benchmarks (``_dse_common.swept``); EXITFLOW_DSE_EPOCHS shortens
the cnv training (fidelity does not depend on accuracy).
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _dse_common import private_sweep  # noqa: E402

DROP_PP = 1.0


def run() -> list[dict]:
    from exitflow.cosim import cosimulate
    from exitflow.cosim.built import load_pipeline
    from exitflow.dse.throughput import simulate, stage_level_fps
    from exitflow.hw.build import build

    root = Path(tempfile.mkdtemp(prefix="exitflow_bench_fidelity_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    rows = []
    for model in ("lenet", "cnv"):
        run_dir, _, _ = private_sweep(model, DROP_PP, root)
        design = run_dir / "sweep" / "design.yaml"
        build(run_dir, design, log=lambda line: None, vivado_project=None)
        taken = cosimulate(run_dir, design, engine="vectorised").engines[0].results.exit
        pipeline, names = load_pipeline(run_dir, design)
        start = time.perf_counter()
        report = simulate(pipeline, taken, names)
        seconds = time.perf_counter() - start
        stages = pipeline.stages
        predicted = stage_level_fps(
            taken,
            [s.slowest for s in stages],
            [max(u.cycles for u in s.head) for s in stages],
            [s.gate_depth for s in stages[:-1]],
            [s.gate_cycles for s in stages],
            pipeline.clock_mhz,
        )
        rows.append(
            {
                "model": model,
                "predicted_fps": round(predicted, 1),
                "simulated_fps": round(report.simulated_fps, 1),
                "ratio": round(report.simulated_fps / predicted, 4),
                "closed_form_fps": round(report.predicted_fps, 1),
                "predicted_fps_unbounded_gates": round(report.predicted_fps_unbounded, 1),
                "exits": names,
                "gate_depths": [s.gate_depth for s in pipeline.stages[:-1]],
                "stage_cycles": report.stage_cycles,
                "reach": [round(p, 4) for p in report.reach],
                "mean_latency_us": [
                    None if x.mean_cycles is None else round(x.mean_cycles / report.clock_mhz, 1)
                    for x in report.latency
                ],
                "p99_latency_us": [
                    None if x.p99_cycles is None else round(x.p99_cycles / report.clock_mhz, 1) for x in report.latency
                ],
                "samples_simulated": report.sequence * report.repeats,
                "simulation_s": round(seconds, 3),
            }
        )
    return rows

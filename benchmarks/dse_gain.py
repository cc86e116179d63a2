"""`dse_gain`: throughput of the chosen multi-exit design over the best design without early
exits, on Pynq-Z2 under the same budget (the search finds both), at accuracy floors 0.5 and 1.0
percentage points below the final exit; and the LUT share a multi-exit design needs to match the
no-exit throughput with its finite gates. Per model: cnv (FINN's CNV-W2A2, on mnist5k padded to 3x32x32, 15 epochs,
thresholds chosen on a 30 % validation split) and the default lenet. The floors apply to the
validation split; ``test_drop_pp_*`` is the chosen design's drop on the test split. Targets (cnv):
gain >= 3.0 at 1 pp (ATHEENA: 2.00-2.78x), LUT fraction <= 0.40
(ATHEENA: 0.46). The gains apply the burst model with the chosen design's finite gates (whose
cost is in its budget); `*_unbounded_gates` are ATHEENA's rule (infinite gate buffers).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _dse_common import MODELS, lut_fraction_at_equal_throughput, swept  # noqa: E402


def run() -> list[dict]:
    rows = []
    for model in ("cnv", "lenet"):
        half, train_s = swept(model, 0.5)
        one, _ = swept(model, 1.0)
        final = float(one.candidates and max(c.accuracy for c in one.candidates if c.exits == ()))
        rows.append(
            {
                "model": model,
                "board": "Pynq-Z2",
                "data": MODELS[model]["data"],
                "gain_at_0p5pp": round(half.gain_with_gates, 3),
                "gain_at_1pp": round(one.gain_with_gates, 3),
                "gain_at_0p5pp_unbounded_gates": round(half.gain, 3),
                "gain_at_1pp_unbounded_gates": round(one.gain, 3),
                "gate_depth_1pp": one.gate_depth,
                # the cheapest design with exits that matches the no-exit throughput with its finite
                # gates (simulated), and the same with unbounded gates (ATHEENA's rule)
                "lut_fraction_at_equal_throughput": (
                    round(one.equal_throughput.resources.lut / one.no_exit.resources.lut, 3)
                    if one.equal_throughput is not None
                    else None
                ),
                "lut_fraction_at_equal_throughput_unbounded_gates": (
                    round(f, 3) if (f := lut_fraction_at_equal_throughput(one, final - 0.01)) is not None else None
                ),
                "gain_at_1pp_on_test_traffic": round(one.fps_with_gates_test / one.no_exit.fps, 3),
                "gain_at_0p5pp_on_test_traffic": round(half.fps_with_gates_test / half.no_exit.fps, 3),
                "gate_depth_0p5pp": half.gate_depth,
                "headroom_1pp": one.chosen.headroom,
                "active_bound": one.bound,
                "no_exit_active_bound": _no_exit_bound(one),
                "fps": round(one.chosen.fps, 1),
                "no_exit_fps": round(one.no_exit.fps, 1),
                "test_accuracy_1pp": round(one.test_accuracy, 4),
                "test_accuracy_0p5pp": round(half.test_accuracy, 4),
                "final_exit_test_accuracy": round(one.final_test_accuracy, 4),
                "test_drop_pp_at_1pp": round(100 * (one.final_test_accuracy - one.test_accuracy), 2),
                "test_drop_pp_at_0p5pp": round(100 * (half.final_test_accuracy - half.test_accuracy), 2),
                "exits_1pp": list(one.report.chosen.exits),  # by name, as pareto.json lists them
                "train_s": round(train_s, 1) if train_s is not None else None,
            }
        )
    return rows


def _no_exit_bound(result) -> str:
    """The no-exit baseline's bound, from the sweep's own front report when it is there."""
    for c, b in zip(result.front, result.front_bounds, strict=False):
        if c is result.no_exit:
            return b
    return "not on the front"

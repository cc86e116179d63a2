"""`dse_vs_setfolding`: at every target FINN's SetFolding reaches on cnv without exits (judged by
FINN's estimator), does exitflow's no-exit folding reach at least the same throughput with no more
LUT, no more BRAM18 and no more DSP slices (SetFolding keeps FINN's LUT multipliers)?
`not_worse` counts the points where it does, `better` those where it is strictly better in
throughput, LUT or BRAM18; `*_buildable` restrict this to SetFolding's foldings FINN can generate
code for (SetFolding does not check SIMD >= MW/1024)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _dse_common import swept  # noqa: E402


def run() -> dict:
    result, _ = swept("cnv", 1.0)
    ours = [c for c in result.candidates if c.exits == ()]
    not_worse = better = 0
    points = [p for p in result.finn_points if p.fits]

    def matching(p):  # ours at least as fast with no more LUT, BRAM18 and DSP (SetFolding uses none)
        return [
            c
            for c in ours
            if c.fps >= p.fps
            and c.resources.lut <= p.lut
            and c.resources.bram18 <= p.bram18
            and c.resources.dsp <= p.dsp
        ]

    for p in points:
        match = matching(p)
        if match:
            not_worse += 1
            if any(c.fps > p.fps or c.resources.lut < p.lut or c.resources.bram18 < p.bram18 for c in match):
                better += 1
    buildable = [p for p in points if p.buildable]
    not_worse_buildable = sum(1 for p in buildable if matching(p))
    return {
        "model": "cnv",
        "points": len(points),
        "not_worse": not_worse,
        "better": better,
        "buildable_points": len(buildable),
        "not_worse_at_buildable": not_worse_buildable,
    }

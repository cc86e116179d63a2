"""`dse_speed`: how fast the joint search (exits x thresholds x interval targets, every layer's
cheapest legal folding per target) runs for cnv with five candidate exits on Pynq-Z2, after the
one-time inventory. Targets: at most 10 s, at least 100,000 designs per second. Threshold
combinations another combination of the same exits beats (more accurate, no more samples
reaching any stage) are skipped and not counted as designs; of the rest
(``configurations``), only those keeping the accuracy floor are costed
(``costed_configurations``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _dse_common import swept  # noqa: E402


def run() -> dict:
    result, _ = swept("cnv", 1.0)
    stats = result.search_stats
    return {
        "model": "cnv",
        "candidate_exits": stats["candidate_exits"],
        "seconds": round(stats["search_seconds"], 2),
        "designs": stats["designs"],
        "designs_per_s": round(stats["designs"] / stats["search_seconds"]),
        "skipped_threshold_combinations": stats["skipped_threshold_combinations"],
        "configurations": stats["configurations"],
        "costed_configurations": stats["costed_configurations"],
        # after the search: finite-gate simulations that choose the design and find the cheapest
        # one matching the no-exit throughput
        "selection_seconds": round(stats["selection_seconds"], 2),
        "simulations": stats["simulations"],
    }

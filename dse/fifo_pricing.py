"""The FIFOs of the designs a sweep reports, sized as ``exitflow build`` sizes them.

The search counts each graph's StreamingFIFOs as the inventory built them: every segment its own
graph, folded at FINN's defaults, its FIFOs sized by the stream simulation
(:mod:`exitflow.hw.streams`) for that folding. How deep a graph's streams must be depends on its
folding and on which segments share the graph: a resnet8 design at 5.98x on Pynq-Z2 was built with
52 stream FIFOs of 8 pixels (5,031 LUT), where the inventory's segments held 857 LUT of FIFOs,
and the search's prediction for that stage was 12 % below the build.

So the designs a sweep reports (the chosen design, the best without exits, the one at equal
throughput) are built through exitflow's FINN steps without code generation, their FIFOs sized as
the build sizes them, and their resources counted again with those FIFOs in place of the
inventory's; a chosen design that no longer fits the budget gives way to the next best. The other
designs of the front keep the inventory's FIFOs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from exitflow.core.artifacts import RunDir
from exitflow.core.design import Design, kept_exits, save_design
from exitflow.core.errors import ExitflowError
from exitflow.core.resources import Resources
from exitflow.core.schema import dump_yaml
from exitflow.hw.build import build

from .search import Candidate, Segment

#: Designs tried, best first, before a sweep gives up on one that fits with its FIFOs sized
ATTEMPTS = 4


def fifo_resources(folder: Path) -> np.ndarray:
    """LUT, BRAM18, URAM, DSP of the StreamingFIFOs of a built graph, by FINN's estimates."""
    estimates = json.loads((folder / "estimate_layer_resources.json").read_text())
    fifos = [Resources.from_finn(r) for node, r in estimates.items() if node.startswith("StreamingFIFO")]
    return np.array(Resources.total(fifos), dtype=float)


class FifoPricer:
    """Prices candidates of one sweep: builds a design's graphs (once per design) and replaces
    the FIFOs the search counted by those the build sizes."""

    def __init__(self, run: RunDir, segments: list[Segment], design_of: Callable[[Candidate], Design]):
        self.run, self.segments, self.design_of = run, segments, design_of
        self.counted_body = [fifo_resources(run.inventory / s.body.name) for s in segments]
        self.counted_head = [fifo_resources(run.inventory / s.head.name) for s in segments]
        self._sized: dict[str, list[np.ndarray]] = {}
        self.seconds = 0.0

    @property
    def builds(self) -> int:
        return len(self._sized)

    def counted(self, c: Candidate) -> list[np.ndarray]:
        """The FIFOs the search counted for each stage of ``c`` with its head."""
        out, start = [], 0
        for end in kept_exits(c.exits, len(self.segments) - 1):
            out.append(sum(self.counted_body[start : end + 1]) + self.counted_head[end])
            start = end + 1
        return out

    def sized(self, c: Candidate) -> list[np.ndarray]:
        """The FIFOs of each stage of ``c`` with its head, as the build sizes them."""
        design = self.design_of(c)
        key = dump_yaml(design, set_only=True)
        if key not in self._sized:
            started = time.perf_counter()
            # the system's temporary folder, not the run's: a killed sweep leaves nothing in the user's
            scratch = Path(tempfile.mkdtemp(prefix="exitflow-fifos-"))
            try:
                save_design(design, scratch / "design.yaml")
                build(
                    self.run.root,
                    scratch / "design.yaml",
                    log=lambda line: None,
                    hw_dir=scratch / "hw",
                    vivado_project=None,
                    codegen=False,
                )
                hw = scratch / "hw"
                self._sized[key] = [
                    fifo_resources(hw / stage.name) + fifo_resources(hw / stage.head.name) for stage in design.stages
                ]
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            self.seconds += time.perf_counter() - started
        return self._sized[key]

    def price(self, c: Candidate) -> Candidate:
        """``c`` with the FIFOs the build sizes in its resources and its stages'."""
        sized = self.sized(c)
        delta = [s - k for s, k in zip(sized, self.counted(c), strict=True)]
        stages = tuple(tuple(np.add(r, d).tolist()) for r, d in zip(c.stage_resources, delta, strict=True))
        total = Resources(*np.add(c.resources, np.sum(delta, axis=0)).tolist())
        return replace(c, resources=total, stage_resources=stages, fifos=tuple(tuple(f.tolist()) for f in sized))

    def fitting(self, pick: Callable[[list[Candidate]], Candidate], pool: list[Candidate], limits, what: str, log):
        """``pick(pool)`` priced. While it no longer fits ``limits``, the pick of the designs that
        still fit with the most extra FIFO resources seen so far (designs near one another in the
        search need about the same streams), at most :data:`ATTEMPTS` designs."""
        pool, extra = list(pool), np.zeros(4)
        for _ in range(ATTEMPTS):
            c = pick(pool)
            priced = self.price(c)
            over = priced.resources.over(limits)
            if not over:
                return priced
            extra = np.maximum(extra, np.subtract(priced.resources, c.resources))
            pool = [d for d in pool if d is not c and Resources(*np.add(d.resources, extra)).fits(limits)]
            log(
                f"note: the {what} exceeds the {', '.join(over)} budget once its FIFOs are sized; "
                f"trying the best of the {len(pool):,} designs that fit with {extra[0]:,.0f} LUT more"
            )
            if not pool:
                break
        raise ExitflowError(
            f"no {what} among the {ATTEMPTS} best fits the budget once its FIFOs are sized; lower --util"
        )

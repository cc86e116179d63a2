"""The joint search over exits kept, thresholds and folding.

Inputs: the *segments* of the network (the blocks between consecutive candidate exits, each with
the exit head after it), inventoried once by building the design that keeps every candidate exit
(:func:`inventory_segments`), and the profile's confidence codes on the validation split.

For every subset of candidate exits (up to ``max_exits`` early ones) and every combination of
thresholds from a grid, the profile gives each sample's exit, hence the accuracy and the fraction
``p_s`` of samples reaching each stage. For a target interval ``T`` (cycles per input sample),
stage s must process a sample in ``T / p_s`` cycles, and each of its layers takes its cheapest
legal folding for that (:class:`~exitflow.dse.folding.FoldingTable`), independently of the
others. Sweeping ``T`` over a grid gives, per subset and thresholds, resources against
throughput; what fits the budget is a candidate design.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exitflow.quant.policies import route, threshold_code

from .finn_model import RESOURCES, inventory
from .folding import FoldingTable


@dataclass(frozen=True, eq=False)
class GraphCost:
    """One stage segment or head: its foldable layers and the cost of everything else."""

    name: str
    tables: tuple[FoldingTable, ...]
    fixed: np.ndarray  # lut, bram18, uram, dsp of the nodes folding does not change
    fixed_cycles: float  # slowest of those nodes
    fixed_latency: float = 0.0  # their cycles added up

    def at(self, targets: np.ndarray):
        """(resources per target (T x 4), slowest cycles per target, latency per target, folding
        index per layer per target, feasible per target) when every layer gets its cheapest
        folding for the target. Latency is the sum of the nodes' cycles: a dataflow graph
        overlaps them, so this bounds it from above."""
        resources = np.tile(self.fixed, (len(targets), 1)).astype(float)
        cycles = np.full(len(targets), float(self.fixed_cycles))
        latency = np.full(len(targets), float(self.fixed_latency))
        feasible = cycles <= targets
        picks = []
        for table in self.tables:
            idx = table.envelope(targets)
            ok = idx >= 0
            safe = np.maximum(idx, 0)
            resources += np.where(ok[:, None], table.resources[safe], 0.0)
            cycles = np.maximum(cycles, np.where(ok, table.cycles[safe], np.inf))
            latency += np.where(ok, table.latency[safe], np.inf)
            feasible &= ok
            picks.append(idx)
        return resources, cycles, latency, picks, feasible


def graph_cost(folder: Path, part: str, budget: np.ndarray) -> GraphCost:
    layers = list(json.loads((folder / "layers.json").read_text())["layers"])
    inv = inventory(folder / "model_hw.onnx", part, layers, folder.name)
    fixed = np.array([sum(c[r] for c in inv.fixed.values()) for r in RESOURCES], dtype=float)
    fixed_cycles = max([c["cycles"] for c in inv.fixed.values()], default=0.0)
    fixed_latency = float(sum(c["cycles"] for c in inv.fixed.values()))
    return GraphCost(folder.name, tuple(FoldingTable.build(l, budget) for l in inv.layers), fixed, fixed_cycles,
                     fixed_latency)


@dataclass(frozen=True, eq=False)
class Segment:
    exit: str  # the candidate exit ending the segment
    blocks: tuple[str, ...]
    body: GraphCost
    head: GraphCost


@dataclass(frozen=True)
class Candidate:
    exits: tuple[int, ...]  # kept early exits (segment indices); the final is implied
    thresholds: tuple[float, ...]
    target: float  # interval target, cycles per input sample
    fps: float
    accuracy: float  # validation split
    resources: tuple[float, ...]  # lut, bram18, uram, dsp
    reach: tuple[float, ...]
    folding: dict = field(default_factory=dict, compare=False)  # layer -> (pe, simd), per stage/head
    latency_us: tuple[float, ...] = ()  # to each kept exit
    stage_cycles: tuple[float, ...] = ()  # slowest unit of each stage (and its head), per sample
    stage_resources: tuple[tuple[float, ...], ...] = ()  # lut, bram18, uram, dsp of each stage with its head
    mean_latency_us: float = 0.0  # over the samples' actual exits


TARGETS = np.unique(np.round(np.geomspace(16, 4e6, 120)))


def active_bound(c: Candidate, segments: list[Segment], budget: np.ndarray, targets: np.ndarray = TARGETS) -> str:
    """Why the design is not faster: what stops the next faster interval target of the grid.
    One of 'resource budget (LUT)' (or BRAM18, URAM, DSP), 'streaming floor of <layer or node>'
    (a layer at one output pixel per cycle, or a node folding does not change), or
    'folding-legality limit of <layer>' (FINN's folding rules stop it before that floor)."""
    faster = targets[targets < c.target]
    if faster.size == 0:
        return "the fastest interval target searched"
    t = np.array([faster.max()])
    kept = list(c.exits) + [len(segments) - 1]
    total, start = np.zeros(len(RESOURCES)), 0
    for s, end in enumerate(kept):
        p = max(c.reach[s], 1e-9)
        for graph in [seg.body for seg in segments[start : end + 1]] + [segments[end].head]:
            if graph.fixed_cycles > t[0] / p:
                return f"streaming floor of a fixed node in {graph.name} ({graph.fixed_cycles:.0f} cycles)"
            for table in graph.tables:
                idx = table.envelope(t / p)[0]
                if idx < 0:
                    floor = table.layer.vectors  # one output pixel per cycle
                    fastest = table.cycles.min()
                    what = "streaming floor" if fastest <= floor else "folding-legality limit"
                    return f"{what} of {table.layer.layer} ({fastest:.0f} cycles)"
                total += table.resources[idx]
            total += graph.fixed
        start = end + 1
    over = np.flatnonzero(total > budget + 1e-9)
    names = ("LUT", "BRAM18", "URAM", "DSP")
    return f"resource budget ({', '.join(names[i] for i in over)})" if over.size else "the interval target grid"


def _subsets(n_early: int, max_exits: int):
    for size in range(0, min(max_exits, n_early) + 1):
        yield from itertools.combinations(range(n_early), size)


class LazyFolding(Mapping):
    """The folding of one candidate, built only when asked for (most candidates never are):
    graph name -> {layer: (PE, SIMD)}."""

    def __init__(self, picks: dict, row: int, column: int):
        self._picks, self._row, self._column = picks, row, column

    def _build(self) -> dict:
        return {name: {table.layer.layer: (int(table.pe[i[self._row, self._column]]), int(table.simd[i[self._row, self._column]]))
                       for table, i in zip(graph.tables, idx)} for name, (graph, idx) in self._picks.items()}

    def __getitem__(self, key):
        return self._build()[key]

    def __iter__(self):
        return iter(self._picks)

    def __len__(self):
        return len(self._picks)


def search(segments: list[Segment], codes: np.ndarray, correct: np.ndarray, scales: np.ndarray, policy: str,
           threshold_grid: list[float], budget: np.ndarray, clock_mhz: float, max_exits: int = 3,
           targets: np.ndarray | None = None, progress=None, stats: dict | None = None) -> list[Candidate]:
    """Every (exits, thresholds, interval) that fits ``budget``; the caller keeps the Pareto front.

    Per subset of exits, all threshold combinations and all interval targets are evaluated at
    once: each layer's envelope is looked up for the whole (combinations x targets) array."""
    n = len(segments)
    if targets is None:
        targets = TARGETS
    n_t = len(targets)
    out = []
    evaluated = 0
    subsets = list(_subsets(n - 1, max_exits))
    samples = np.arange(len(codes))
    for subset in (progress(subsets) if progress else subsets):
        kept = list(subset) + [n - 1]
        combos = list(itertools.product(*([threshold_grid] * len(subset))))
        taken = np.zeros((len(combos), len(codes)), dtype=np.int64)
        if subset:
            for c, thresholds in enumerate(combos):
                constants = [threshold_code(policy, t, float(scales[k])) for t, k in zip(thresholds, subset)]
                taken[c] = route(policy, codes[:, kept], constants)
        accuracy = correct[samples[None, :], np.asarray(kept)[taken]].mean(axis=1)
        reach = np.stack([(taken >= s).mean(axis=1) for s in range(len(kept))], axis=1)  # (combos, stages)
        share = np.stack([(taken == s).mean(axis=1) for s in range(len(kept))], axis=1)
        shape = (len(combos), n_t)
        total = np.zeros((*shape, len(RESOURCES)))
        per_stage = np.zeros((len(kept), *shape, len(RESOURCES)))
        interval = np.zeros(shape)
        slowest = np.zeros((len(kept), *shape))
        to_exit = np.zeros((len(kept), *shape))
        body = np.zeros(shape)
        feasible = np.ones(shape, dtype=bool)
        picks = {}
        start = 0
        for s, end in enumerate(kept):
            p = np.maximum(reach[:, s], 1e-9)[:, None]
            stage_targets = (targets[None, :] / p).ravel()
            for graph in [seg.body for seg in segments[start : end + 1]] + [segments[end].head]:
                res, cyc, lat, idx, ok = graph.at(stage_targets)
                res, cyc, lat, ok = res.reshape(*shape, -1), cyc.reshape(shape), lat.reshape(shape), ok.reshape(shape)
                total += res
                per_stage[s] += res
                interval = np.maximum(interval, p * cyc)
                slowest[s] = np.maximum(slowest[s], cyc)
                feasible &= ok
                picks[graph.name] = (graph, [i.reshape(shape) for i in idx])
                if graph is segments[end].head:
                    to_exit[s] = body + lat
                else:
                    body = body + lat
            start = end + 1
        evaluated += len(combos) * n_t
        feasible &= np.all(total <= budget + 1e-9, axis=2)
        latency_us = to_exit / clock_mhz  # (stages, combos, targets)
        mean_latency = np.einsum("cs,sct->ct", share, latency_us)
        fps = clock_mhz * 1e6 / interval
        for c, t in zip(*np.nonzero(feasible)):
            out.append(Candidate(
                exits=tuple(subset), thresholds=tuple(combos[c]), target=float(targets[t]), fps=float(fps[c, t]),
                accuracy=float(accuracy[c]), resources=tuple(total[c, t].tolist()), reach=tuple(reach[c].tolist()),
                folding=LazyFolding(picks, c, t), latency_us=tuple(latency_us[:, c, t].tolist()),
                stage_cycles=tuple(slowest[:, c, t].tolist()),
                stage_resources=tuple(tuple(r) for r in per_stage[:, c, t].tolist()),
                mean_latency_us=float(mean_latency[c, t])))
    if stats is not None:
        stats["designs"] = evaluated  # (exits, thresholds, interval) triples evaluated
    return out


def objectives(c: Candidate) -> tuple[float, ...]:
    """What the front trades, all to be maximised: throughput, accuracy, -LUT, -BRAM18, -DSP."""
    return (c.fps, c.accuracy, -c.resources[0], -c.resources[1], -c.resources[3])


def pareto(candidates: list[Candidate]) -> list[Candidate]:
    """Candidates no other beats on throughput, accuracy, LUT, BRAM18 and DSP at once (a skyline:
    sorted best-first, each point is checked against the front kept so far)."""
    order = sorted(range(len(candidates)), key=lambda i: objectives(candidates[i]), reverse=True)
    front: list[int] = []
    kept = np.zeros((0, 5))
    for i in order:
        row = np.array(objectives(candidates[i]))
        if len(kept) and np.any(np.all(kept >= row, axis=1)):
            continue  # dominated by, or equal to, a point already on the front
        front.append(i)
        kept = np.vstack([kept, row])
    return [candidates[i] for i in front]

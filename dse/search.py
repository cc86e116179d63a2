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

import gc
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from exitflow.core.design import kept_exits
from exitflow.core.resources import COLUMN, NAMES, Resources
from exitflow.hls_templates.routing import gate_resources, merge_resources, record_fifo_resources
from exitflow.hw.finn_flow import read_layers
from exitflow.hw.folding import ID_BITS, record_fifo_for
from exitflow.quant.policies import leaves, threshold_code

from .finn_model import dwc_luts, inventory
from .folding import EXIT_WEIGHTINGS, FoldingChoice, FoldingTable


@dataclass(frozen=True, eq=False)
class GraphCost:
    """One stage segment or head: its foldable layers and the cost of everything else."""

    name: str
    tables: tuple[FoldingTable, ...]
    fixed: np.ndarray  # resources (core.resources.COLUMN order) of the nodes folding does not change
    fixed_cycles: float  # slowest of those nodes
    fixed_latency: float = 0.0  # their cycles added up
    edges: tuple = ()  # streams between units, where FINN puts width converters (finn_model.Inventory)
    pools: tuple = ()  # pooling units folded after a weight layer (finn_model.PoolUnit), in their layer's tables

    def at(self, targets: np.ndarray, weightings: int | None = None):
        """(resources (W x T x 4), slowest cycles (W x T), latency (W x T), folding index per layer
        (W x T each), feasible (W x T)) for every cost weighting W and target T when every layer
        gets its cheapest folding for the target. Latency is the sum of the nodes' cycles: a
        dataflow graph overlaps them, so this bounds it from above."""
        picks = [table.envelope(targets, weightings) for table in self.tables]
        shape = (picks[0].shape[0] if picks else 1, len(targets))
        feasible = np.broadcast_to(self.fixed_cycles <= np.asarray(targets, dtype=float), shape).copy()
        for idx in picks:
            feasible &= idx >= 0
        return (*self.combine(picks, shape), picks, feasible)

    def combine(self, picks: list[np.ndarray], shape: tuple[int, ...]):
        """(resources (shape x 4), slowest cycles, latency) for given folding indices per layer
        (-1: none, which makes cycles and latency infinite), width converters included."""
        resources = np.broadcast_to(self.fixed, (*shape, len(self.fixed))).astype(float)
        cycles = np.full(shape, float(self.fixed_cycles))
        latency = np.full(shape, float(self.fixed_latency))
        for table, idx in zip(self.tables, picks, strict=False):
            ok = idx >= 0
            safe = np.maximum(idx, 0)
            resources = resources + np.where(ok[..., None], table.resources[safe], 0.0)
            cycles = np.maximum(cycles, np.where(ok, table.cycles[safe], np.inf))
            latency = latency + np.where(ok, table.latency[safe], np.inf)
        if self.edges:
            folds = self.pool_folds(picks)
            lut = np.zeros(shape)
            for (src_kind, src, dst_kind, dst), (src_class, dst_class, table) in zip(
                self.edges, self._converters, strict=False
            ):
                i = self._class(src_kind, src, src_class, picks, folds)
                j = self._class(dst_kind, dst, dst_class, picks, folds)
                lut = lut + table[i, j]
            resources = resources.copy()
            resources[..., COLUMN.lut] += lut
        return resources, cycles, latency

    def pool_folds(self, picks: list[np.ndarray]) -> list[np.ndarray]:
        """The fold each pooling unit takes (hw.folding.pick_pool) given the layers' folding
        indices: it follows its governing layer's cycles (its costs are in that layer's table)."""
        return [self.pool_fold(p, np.maximum(picks[unit.governor], 0)) for p, unit in enumerate(self.pools)]

    def pool_fold(self, p: int, options):
        """The fold pooling unit ``p`` takes at its governing layer's folding ``options``, as that
        layer's table holds it (the table lists the units it governs in graph order)."""
        governor = self.pools[p].governor
        slot = sum(1 for u in self.pools[:p] if u.governor == governor)
        return self.tables[governor].pool_folds[slot][options]

    @staticmethod
    def _class(kind, k, classes, picks, folds):
        if kind == "layer":
            return classes[np.maximum(picks[k], 0)]
        if kind == "pool":
            return classes[folds[k]]
        return 0

    @property
    def _converters(self):
        """Per edge: (folding -> source-width class, folding -> destination-width class, converter
        LUTs per class pair). A layer's stream takes few widths, so the search looks converters
        up instead of computing FINN's formula for every design."""
        cached = self.__dict__.get("_dwc")
        if cached is None:
            cached = []
            for src_kind, src, dst_kind, dst in self.edges:
                src_w, src_class = self._widths(src_kind, src, "out_width")
                dst_w, dst_class = self._widths(dst_kind, dst, "in_width")
                table = dwc_luts(src_w[:, None], dst_w[None, :])
                cached.append((src_class, dst_class, table))
            object.__setattr__(self, "_dwc", cached)
        return cached

    def _widths(self, kind, k, which):
        """(distinct widths, option -> class) of one end of a stream."""
        if kind == "fixed":
            return np.array([k]), None
        unit = self.tables[k] if kind == "layer" else self.pools[k]
        return np.unique(getattr(unit, which), return_inverse=True)


def graph_cost(folder: Path, part: str, budget: np.ndarray) -> GraphCost:
    layers = read_layers(folder / "layers.json", f"delete {folder.parent} and sweep again")
    inv = inventory(folder / "model_hw.onnx", part, layers, folder.name)
    fixed = np.array([sum(c[r] for c in inv.fixed.values()) for r in NAMES], dtype=float)
    fixed_cycles = max([c["cycles"] for c in inv.fixed.values()], default=0.0)
    fixed_latency = float(sum(c["cycles"] for c in inv.fixed.values()))
    tables = tuple(
        FoldingTable.build(layer, budget, pools=tuple(u for u in inv.pools if u.governor == k))
        for k, layer in enumerate(inv.layers)
    )
    return GraphCost(folder.name, tables, fixed, fixed_cycles, fixed_latency, inv.edges, inv.pools)


@dataclass(frozen=True, eq=False)
class Segment:
    exit: str  # the candidate exit ending the segment
    blocks: tuple[str, ...]
    body: GraphCost
    head: GraphCost
    stream_bits: int = 0  # the segment's output stream: word width and words per feature map,
    folds: int = 0  # which a gate after it buffers
    record_bits: int = 0  # the head's CTU record (class and confidence code and exit flag)
    last_pe: int = 0  # PE of the segment's last unit when it is a weight layer (0: a fixed unit)

    def words(self, folding) -> int:
        """Stream words per feature map out of the segment under a candidate's ``folding``: a
        weight layer at the end streams PE values per word (the inventory was built at
        ``last_pe``); a pooling unit at the end streams its fold's values per word (``folds`` is
        counted at its widest fold, all channels per word)."""
        ending = [p for p, u in enumerate(self.body.pools) if u.ends]
        if ending:
            unit = self.body.pools[ending[0]]
            table = self.body.tables[unit.governor]
            choice = FoldingChoice(*folding[self.body.name][table.layer.layer])
            k = int(self.body.pool_fold(ending[0], table.index(*choice)))
            return self.folds * int(unit.fold[-1]) // int(unit.fold[k])
        if not self.last_pe or not self.body.tables:
            return self.folds
        layer = self.body.tables[-1].layer.layer
        pe = FoldingChoice(*folding[self.body.name][layer]).pe
        return self.folds * self.last_pe // pe

    def gate(self, depth: int) -> np.ndarray:
        """LUT, BRAM18, URAM, DSP of a gate holding ``depth`` feature maps after this segment."""
        lut, bram = gate_resources(self.stream_bits, self.folds, depth)
        return np.array(Resources(lut=lut, bram18=bram, uram=0.0, dsp=0.0))


def routing_cost(segments: list[Segment], subset: tuple[int, ...], gate_depth: int) -> tuple[np.ndarray, np.ndarray]:
    """(gate cost per kept early exit (exits x 4), cost of the rest outside the FINN graphs (4,)) of
    a design keeping ``subset``: the gates, the merge and the two record FIFOs of every exit, the
    final one included, as the block design builds them (:mod:`exitflow.hls_templates.routing`,
    :mod:`exitflow.boards.vivado`)."""
    kept = [*subset, len(segments) - 1]
    exit_bits = max(1, (len(kept) - 1).bit_length())
    record = ID_BITS + exit_bits + max(segments[k].record_bits for k in kept)
    gates = np.array([segments[k].gate(gate_depth) for k in subset]).reshape(len(subset), len(NAMES))
    word = 8 * (1 << (-(-record // 8) - 1).bit_length())  # the block design's record word (RecordFormat.word_bytes)
    lut, bram = record_fifo_resources(word, record_fifo_for(gate_depth if subset else 1))
    rest = np.array(
        Resources(
            lut=2 * len(kept) * lut + (merge_resources(record, len(kept)) if subset else 0.0),
            bram18=2 * len(kept) * bram,
            uram=0.0,
            dsp=0.0,
        )
    )
    return gates, rest


@dataclass(frozen=True)
class Candidate:
    exits: tuple[int, ...]  # kept early exits (segment indices); the final is implied
    thresholds: tuple[float, ...]
    target: float  # interval target, cycles per input sample
    fps: float
    accuracy: float  # validation split
    resources: Resources
    reach: tuple[float, ...]
    folding: dict = field(default_factory=dict, compare=False)  # layer -> FoldingChoice, per stage/head
    latency_us: tuple[float, ...] = ()  # to each kept exit
    stage_cycles: tuple[float, ...] = ()  # slowest unit of each stage (and its head), per sample
    # of each stage with its head, in core.resources.COLUMN order: plain tuples, as the search
    # makes them for every candidate (Resources(*r) reads one)
    stage_resources: tuple[tuple[float, ...], ...] = ()
    mean_latency_us: float = 0.0  # over the samples' actual exits
    weighting: int = 0  # the cost weighting (dse.folding.WEIGHTINGS) that chose the folding
    head_cycles: tuple[float, ...] = ()  # slowest unit of each stage's head alone, per sample
    gate_depth: int = 8  # feature maps each gate holds (its cost is in ``resources``)
    headroom: float = 1.0  # stages after the first are sized for min(1, headroom * p_s) of the samples
    # StreamingFIFOs of each stage with its head as the build sizes them (dse.fifo_pricing), in
    # ``resources``; None: as the inventory built them
    fifos: tuple[tuple[float, ...], ...] | None = None
    policy: str = "max_prob"  # the exit policy of every early exit (quant.policies)


TARGETS = np.unique(np.round(np.geomspace(16, 4e6, 120)))
FINE_TARGETS = np.unique(np.round(np.geomspace(16, 4e6, 2000)))  # for the designs without early exits


def active_bound(
    c: Candidate,
    segments: list[Segment],
    budget: np.ndarray,
    targets: np.ndarray = TARGETS,
    gate_depth: int | None = None,
) -> str:
    """Why the design is not faster: what stops the next faster interval target of the grid.
    One of 'resource budget (LUT)' (or BRAM18, URAM, DSP), 'streaming floor of <layer or node>'
    (a layer at one output pixel per cycle, or a node folding does not change), or
    'folding-legality limit of <layer>' (FINN's folding rules stop it before that floor)."""
    faster = targets[targets < c.target]
    if faster.size == 0:
        return "the fastest interval target searched"
    t = np.array([faster.max()])
    kept = kept_exits(c.exits, len(segments) - 1)
    gates, merge = routing_cost(segments, c.exits, c.gate_depth if gate_depth is None else gate_depth)
    total, start = gates.sum(axis=0) + merge, 0
    for s, end in enumerate(kept):
        p = max(c.reach[s], 1e-9)
        for graph in [seg.body for seg in segments[start : end + 1]] + [segments[end].head]:
            if graph.fixed_cycles > t[0] / p:
                return f"streaming floor of a fixed node in {graph.name} ({graph.fixed_cycles:.0f} cycles)"
            picks = []
            for table in graph.tables:
                idx = table.envelope(t / p)[c.weighting, 0]
                picks.append(np.array([idx]))
                if idx < 0:
                    floor = table.layer.vectors  # one output pixel per cycle
                    fastest = table.cycles.min()
                    w = table.layer.window
                    if w is not None and fastest == w["ifm"][0] * w["ifm"][1] + 2:  # parallel window generator
                        return (
                            f"streaming floor of {table.layer.layer}'s window generator "
                            f"(one input pixel per cycle: {fastest:.0f} cycles)"
                        )
                    what = "streaming floor" if fastest <= floor else "folding-legality limit"
                    return f"{what} of {table.layer.layer} ({fastest:.0f} cycles)"
                total += table.resources[idx]
            total += graph.fixed
        start = end + 1
    over = Resources(*total.tolist()).over(budget)
    return f"resource budget ({', '.join(over)})" if over else "the interval target grid"


def undominated(accuracy: np.ndarray, reach: np.ndarray) -> np.ndarray:
    """Which threshold combinations of one exit subset no other combination beats: another with
    at least the accuracy and no more samples reaching any stage (at least one of these strictly
    better). A beaten combination is not searched: at every interval target its stages must be
    at least as fast, so under every cost weighting its cheapest folding costs at least as much,
    for no more accuracy.

    Equal combinations do not beat each other, so they are judged once; the others in
    lexicographic order, where whatever beats a combination comes before it, each block against
    the combinations kept so far and its own (:data:`UNDOMINATED_BLOCK` at a time)."""
    point = np.concatenate([-np.asarray(accuracy, dtype=float)[:, None], np.asarray(reach, dtype=float)[:, 1:]], axis=1)
    if len(point) < 2:
        return np.ones(len(point), dtype=bool)
    distinct, which = np.unique(point, axis=0, return_inverse=True)  # sorted lexicographically
    kept = np.zeros(len(distinct), dtype=bool)
    front = distinct[:0]
    for start in range(0, len(distinct), UNDOMINATED_BLOCK):
        block = distinct[start : start + UNDOMINATED_BLOCK]
        beaten = _beaten(front, block)
        rest = np.flatnonzero(~beaten)
        # within the block: distinct points, so no worse everywhere is better somewhere, except
        # for a point and itself
        within = _no_worse(block[rest], block[rest])
        np.fill_diagonal(within, False)
        beaten[rest] = within.any(axis=0)
        kept[start : start + len(block)] = ~beaten
        front = np.concatenate([front, block[~beaten]])
    return kept[np.asarray(which).reshape(-1)]


UNDOMINATED_BLOCK = 1024  # combinations :func:`undominated` compares at once


def _no_worse(by: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``[i, j]``: whether ``by[i]`` is no worse than ``points[j]`` in every coordinate (all to be
    minimised), one coordinate at a time."""
    out = by[:, None, 0] <= points[None, :, 0]
    for k in range(1, by.shape[1]):
        out &= by[:, None, k] <= points[None, :, k]
    return out


def _beaten(by: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Which of the distinct ``points`` a point of ``by`` (distinct from them: kept earlier in
    lexicographic order) is no worse than everywhere, so better than somewhere; ``by`` taken
    :data:`UNDOMINATED_BLOCK` rows at a time, only against the points not yet beaten."""
    beaten = np.zeros(len(points), dtype=bool)
    for start in range(0, len(by), UNDOMINATED_BLOCK):
        open_ = np.flatnonzero(~beaten)
        if open_.size == 0:
            break
        beaten[open_] = _no_worse(by[start : start + UNDOMINATED_BLOCK], points[open_]).any(axis=0)
    return beaten


def _subsets(n_early: int, max_exits: int):
    for size in range(0, min(max_exits, n_early) + 1):
        yield from itertools.combinations(range(n_early), size)


class LazyFolding(Mapping):
    """The folding of one candidate, built only when asked for (most candidates never are):
    graph name -> {layer: FoldingChoice (PE, SIMD, weight ram_style, multiplier resType, line-buffer style)}."""

    def __init__(self, picks: dict, row: int, column: tuple[int, int]):
        self._picks, self._row, self._column = picks, row, column

    def _build(self) -> dict:
        def pick(table, i):
            return table.choice(i[(self._row, *self._column)])

        return {
            name: {table.layer.layer: pick(table, i) for table, i in zip(graph.tables, idx, strict=False)}
            for name, (graph, idx) in self._picks.items()
        }

    def __getitem__(self, key):
        return self._build()[key]

    def __iter__(self):
        return iter(self._picks)

    def __len__(self):
        return len(self._picks)


@dataclass(frozen=True, eq=False)
class SearchSpace:
    """What the search tries: the exit ``policy`` (one, or several: each design takes one for all
    its early exits) and its ``threshold_grid`` (every combination for the kept early exits),
    subsets of up to ``max_exits`` early exits, the interval ``targets`` (cycles per input sample;
    None: :data:`TARGETS`, and :data:`FINE_TARGETS` for the designs without early exits),
    ``exit_weightings`` cost weightings for designs with exits, gates of each of ``gate_depths``
    feature maps and stages sized with each of ``headrooms``; what fits ``budget`` (LUT, BRAM18,
    URAM, DSP) at ``clock_mhz`` is a candidate."""

    policy: str | tuple[str, ...]
    threshold_grid: tuple[float, ...]
    budget: np.ndarray
    clock_mhz: float
    max_exits: int = 3
    targets: np.ndarray | None = None
    exit_weightings: int = EXIT_WEIGHTINGS
    gate_depths: tuple[int, ...] = (8,)
    headrooms: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        for name in ("threshold_grid", "gate_depths", "headrooms"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def policies(self) -> tuple[str, ...]:
        return (self.policy,) if isinstance(self.policy, str) else tuple(self.policy)

    def subsets(self, n_early: int, policy: str) -> list[tuple[int, ...]]:
        """The exit subsets searched under ``policy``. The designs without early exits are
        searched once, under the first policy; ``agreement`` with fewer than two early exits
        decides as ``max_prob`` does (its first kept exit has no class to agree with), so beside
        ``max_prob`` it searches only subsets of two or more."""
        first = policy == self.policies[0]
        least = 2 if policy == "agreement" and "max_prob" in self.policies else (0 if first else 1)
        return [s for s in _subsets(n_early, self.max_exits) if len(s) >= least]


@dataclass(frozen=True, eq=False)
class ValidationProfile:
    """The profile's validation split as the search reads it: each sample's confidence ``codes``
    at each candidate exit (samples x exits; a mapping policy -> codes when the search tries
    several policies), whether each exit is ``correct`` (samples x exits), each exit's logit
    ``scales``, and each sample's class at each exit (``classes``, which the ``agreement``
    policy needs)."""

    codes: np.ndarray | Mapping
    correct: np.ndarray
    scales: np.ndarray
    classes: np.ndarray | None = None

    def codes_for(self, policy: str) -> np.ndarray:
        return self.codes[policy] if isinstance(self.codes, Mapping) else self.codes


def search(
    segments: list[Segment],
    profile: ValidationProfile,
    space: SearchSpace,
    progress=None,
    stats: dict | None = None,
) -> list[Candidate]:
    """Every design of every threshold configuration (:func:`configurations`) that fits the
    budget (:func:`cost`); the caller keeps the Pareto front."""
    return cost(segments, configurations(segments, profile, space, stats=stats), space, progress, stats)


def configurations(
    segments: list[Segment], profile: ValidationProfile, space: SearchSpace, stats: dict | None = None
) -> list[_Routing]:
    """The threshold configurations worth costing, one :class:`_Routing` per (policy, exit
    subset) in search order, the designs without early exits first: every combination of the
    grid's thresholds on the subset's exits that no other combination beats (:func:`undominated`)
    and whose slowest design (every layer at its cheapest folding, the smallest gates, stages
    sized for the average) fits the budget. ``stats`` receives the combinations skipped.

    Routing the samples takes no costing, so this is cheap next to :func:`cost`; a caller that
    needs only some configurations (those keeping an accuracy floor) costs only those."""
    found, skipped = [], 0
    work = [(policy, subset) for policy in space.policies for subset in space.subsets(len(segments) - 1, policy)]
    for policy, subset in work:
        routing = _route(subset, len(segments), profile, space, policy)
        skipped += routing.skipped
        found.append(routing.take(_slowest_fits(segments, routing, space)))
    if stats is not None:
        stats["skipped_threshold_combinations"] = skipped  # dominated ones (undominated)
        stats["configurations"] = sum(len(r.combos) for r in found)
    return found


def _slowest_fits(segments, routing: _Routing, space: SearchSpace) -> np.ndarray:
    """Per combination of ``routing``: whether its slowest design fits the budget under some cost
    weighting (the slowest interval target, stages sized for their average traffic, the
    smallest gates)."""
    if not routing.combos:
        return np.zeros(0, dtype=bool)
    targets, _, depths, n_w = _plan(routing, segments, space, TARGETS if space.targets is None else space.targets)
    graphs = _graph_arrays(segments, routing, np.array([np.max(targets)]), n_w, 1.0)
    batch = _with_routing(segments, routing, graphs, min(depths), 1.0, space.budget, {})
    return batch.fits.any(axis=(1, 2))


def cost(
    segments: list[Segment],
    routings: list[_Routing],
    space: SearchSpace,
    progress=None,
    stats: dict | None = None,
) -> list[Candidate]:
    """Every (exits, thresholds, interval, gate depth) of the configurations ``routings`` that
    fits the budget. Resources include a gate of each of the space's gate depths after each kept
    early exit (one candidate per depth), the merge of the exits' records and the record FIFOs.
    The gate depth changes only what sits outside the FINN graphs, so the graphs are evaluated
    once for all depths. Each headroom h sizes every stage after the first for a fraction
    ``min(1, h * p_s)`` of the samples instead of ``p_s``: the same throughput with unbounded
    gates, at more resources, but slack to drain bursts of hard samples that finite gates cannot
    hold (h = 1: sized for the average, ATHEENA's rule).

    Per subset of exits, all threshold combinations, cost weightings and interval targets are
    evaluated at once (:func:`_subset_designs`): each layer's envelopes are looked up for the whole
    (combinations x targets) array. A combination's designs do not depend on which other
    combinations are costed with it. ``stats`` receives the designs evaluated."""
    enabled = gc.isenabled()
    gc.disable()  # hundreds of thousands of small candidates, none in a reference cycle
    try:
        grid = TARGETS if space.targets is None else space.targets
        out: list[Candidate] = []
        evaluated = 0
        for routing in progress(routings) if progress else routings:
            if not routing.combos:
                continue
            found = _subset_designs(routing, segments, space, grid)
            out.extend(found.candidates)
            evaluated += found.evaluated
            if found.fastest is not None and space.targets is None:
                # the designs with exits also try the best no-exit design's interval exactly: the
                # one that matches its throughput is then on the grid, not up to a grid step faster
                grid = np.unique(np.r_[grid, found.fastest])
    finally:
        if enabled:
            gc.enable()
    if stats is not None:
        stats["designs"] = evaluated  # (exits, thresholds, cost weighting, interval, gate depth) designs evaluated
    return out


@dataclass(frozen=True, eq=False)
class _Routing:
    """One exit subset's threshold combinations, and what the validation samples do under each:
    accuracy, the fraction reaching each stage and the fraction leaving at each exit
    (combinations x stages). ``index``: each combination's position in ``itertools.product`` of
    the grid (as :func:`route_counts` lists them)."""

    subset: tuple[int, ...]
    kept: list[int]  # the kept exits, the final one included
    combos: list[tuple[float, ...]]
    policy: str
    accuracy: np.ndarray
    reach: np.ndarray
    share: np.ndarray
    skipped: int  # combinations another beats
    index: np.ndarray

    def take(self, which: np.ndarray) -> _Routing:
        """The combinations where ``which`` (a mask over ``combos``) is set."""
        which = np.asarray(which, dtype=bool)
        return replace(
            self,
            combos=[c for c, w in zip(self.combos, which, strict=True) if w],
            accuracy=self.accuracy[which],
            reach=self.reach[which],
            share=self.share[which],
            index=self.index[which],
        )

    def keys(self) -> list[tuple]:
        """Each combination's threshold configuration (policy, exits, thresholds); designs
        without early exits have no policy."""
        policy = self.policy if self.subset else ""
        return [(policy, self.subset, c) for c in self.combos]


@dataclass(frozen=True, eq=False)
class _GraphArrays:
    """The FINN graphs of one exit subset at one headroom, every layer at its cheapest folding,
    over (combinations x weightings x targets): resources in total and per stage (with its head),
    the interval, each stage's and head's slowest unit, the latency to each exit, whether every
    layer could meet its target, and the folding picks (graph name -> (graph, index per layer))."""

    targets: np.ndarray
    total: np.ndarray
    per_stage: np.ndarray
    interval: np.ndarray
    slowest: np.ndarray
    head_slowest: np.ndarray
    to_exit: np.ndarray
    feasible: np.ndarray
    picks: dict


@dataclass(frozen=True, eq=False)
class _Batch:
    """The designs of one exit subset, headroom and gate depth: the graphs' arrays with the
    routing outside them (gates, merge, record FIFOs) added to ``total`` and ``per_stage``; those
    that fit the budget (``fits``) and, of them, those a smaller headroom does not already give
    for less (``listed``)."""

    routing: _Routing
    graphs: _GraphArrays
    depth: int
    headroom: float
    total: np.ndarray
    per_stage: np.ndarray
    fits: np.ndarray
    listed: np.ndarray


@dataclass(frozen=True, eq=False)
class _SubsetDesigns:
    candidates: list[Candidate]
    evaluated: int  # designs evaluated
    fastest: float | None  # the no-exit subset only: its fastest interval that fits


def _subset_designs(routing: _Routing, segments, space: SearchSpace, grid) -> _SubsetDesigns:
    """The candidates of one subset of early exits and its combinations (``routing``), every
    headroom and gate depth, its interval targets ``grid`` (a fine grid without early exits: one
    design per target is cheap)."""
    subset = routing.subset
    targets, headrooms, depths, n_w = _plan(routing, segments, space, grid)
    out: list[Candidate] = []
    evaluated, fastest = 0, None
    earlier: dict = {}  # gate depth -> what smaller headrooms gave (feasible, total, slowest)
    for headroom in headrooms:
        graphs = _graph_arrays(segments, routing, targets, n_w, headroom)
        evaluated += len(routing.combos) * n_w * len(targets) * len(depths)
        for depth in depths:
            batch = _with_routing(segments, routing, graphs, depth, headroom, space.budget, earlier)
            out.extend(_candidates(batch, space.clock_mhz))
            if not subset and batch.fits.any():
                fastest = graphs.interval[batch.fits].min()
    return _SubsetDesigns(out, evaluated, fastest)


def _plan(routing: _Routing, segments, space: SearchSpace, grid):
    """(interval targets, headrooms, gate depths, cost weightings) the designs of ``routing`` are
    costed at: ``grid`` and every headroom and gate depth of the space with early exits; without,
    a fine grid (one design per target is cheap), no headroom and no gates."""
    if routing.subset:
        return grid, space.headrooms, space.gate_depths, min(_weightings(segments), space.exit_weightings)
    targets = FINE_TARGETS if space.targets is None else space.targets
    return targets, (1.0,), space.gate_depths[:1], _weightings(segments)


def _weightings(segments) -> int:
    """The cost weightings of the folding tables (1 when no graph has a foldable layer)."""
    tables = [t for seg in segments for g in (seg.body, seg.head) for t in g.tables]
    return len(tables[0].costs) if tables else 1


def _route(subset, n: int, profile: ValidationProfile, space: SearchSpace, policy: str) -> _Routing:
    """Each threshold combination's accuracy, reach and share on the validation split under
    ``policy`` (:func:`route_counts`); the combinations another beats are dropped."""
    kept = kept_exits(subset, n - 1)
    combos = list(itertools.product(*([space.threshold_grid] * len(subset))))
    classes = profile.classes[:, kept] if profile.classes is not None else None
    codes = profile.codes_for(policy)[:, kept]
    scales = [float(profile.scales[k]) for k in subset]
    counts, (right,) = route_counts(policy, codes, classes, scales, space.threshold_grid, [profile.correct[:, kept].T])
    samples = len(codes)
    accuracy = right / samples
    remaining = samples - np.cumsum(counts, axis=1)  # samples going on after each kept exit
    reach = np.concatenate([np.full((len(combos), 1), 1.0), remaining[:, :-1] / samples], axis=1)
    useful = undominated(accuracy, reach)
    skipped = len(combos) - int(useful.sum())
    combos = [t for t, u in zip(combos, useful, strict=False) if u]
    return _Routing(
        subset=tuple(subset),
        kept=kept,
        combos=combos,
        policy=policy,
        accuracy=accuracy[useful],
        reach=reach[useful],
        share=counts[useful] / samples,
        skipped=skipped,
        index=np.flatnonzero(useful),
    )


def route_counts(
    policy: str,
    codes: np.ndarray,
    classes: np.ndarray | None,
    scales: list[float],
    grid: tuple[float, ...],
    marks: list[np.ndarray] = (),
    weights: list[np.ndarray | None] | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Every combination of ``grid`` thresholds on the early exits of a cascade, in
    ``itertools.product`` order, routed as :func:`~exitflow.quant.policies.route` routes each:
    (samples leaving at each exit (combinations x exits), and per mark the samples leaving at an
    exit where the mark is set (combinations)).

    ``codes`` and ``classes`` are ``(samples, exits)``, one column per kept exit; ``scales``
    one logit scale per early exit. A mark is ``(exits, samples)`` booleans (e.g. whether each
    exit is right on each sample); with ``weights[m]`` (one per exit) mark ``m`` sums the
    weight of the exit each marked sample leaves at instead of counting it.

    A combination extends a shorter one: the samples still going on after the first j exits
    depend on those j thresholds only, so they are worked out once per prefix (as bit sets, 64
    samples a word) and each prefix is extended by every threshold of the next exit at once."""
    samples, exits = codes.shape
    weights = list(weights) if weights is not None else [None] * len(marks)
    packed = [_pack(m) for m in marks]  # (exits, words) each
    going = _pack(np.ones(samples, dtype=bool))[None, :]  # per prefix: samples not yet left
    sums = [np.zeros(1, dtype=np.int64 if w is None else float) for w in weights]
    counts = np.zeros((1, 0), dtype=np.int64)

    def add(sums, left, j, rows):  # each mark's samples among those leaving at exit j
        return [
            (total[:, None] if rows else total) + _popcount(left & m[j]) * (1 if w is None else w[j])
            for total, m, w in zip(sums, packed, weights, strict=True)
        ]

    if exits > 1:
        # leave[g][:, j]: whether exit j's CTU says exit at the grid's g-th threshold
        leave = [leaves(policy, codes, [threshold_code(policy, t, scale) for scale in scales], classes) for t in grid]
        for j in range(exits - 1):
            at_j = np.stack([_pack(leave[g][:, j]) for g in range(len(grid))])  # (grid, words)
            left = going[:, None, :] & at_j[None, :, :]  # (prefixes, grid, words)
            counts = np.concatenate([np.repeat(counts, len(grid), axis=0), _popcount(left).reshape(-1, 1)], axis=1)
            sums = [total.reshape(-1) for total in add(sums, left, j, rows=True)]
            going = (going[:, None, :] & ~at_j[None, :, :]).reshape(-1, going.shape[-1])
    counts = np.concatenate([counts, _popcount(going)[:, None]], axis=1)  # the final exit takes the rest
    return counts, add(sums, going, exits - 1, rows=False)


def _pack(bits: np.ndarray) -> np.ndarray:
    """Booleans along the last axis as bits in 64-bit words (the last one padded with zeros)."""
    packed = np.packbits(np.asarray(bits, dtype=bool), axis=-1)
    pad = -packed.shape[-1] % 8
    if pad:
        packed = np.concatenate([packed, np.zeros((*packed.shape[:-1], pad), dtype=np.uint8)], axis=-1)
    return np.ascontiguousarray(packed).view(np.uint64)


def _popcount(bits: np.ndarray) -> np.ndarray:
    """Set bits along the last axis of a packed bit array."""
    return np.bitwise_count(bits).sum(axis=-1, dtype=np.int64)


def _graph_arrays(segments, routing: _Routing, targets: np.ndarray, n_w: int, headroom: float) -> _GraphArrays:
    """Every graph of every kept stage at its stage's target: stage s serves a fraction
    ``min(1, headroom * p_s)`` of the samples (all of them for the first), so it must take a sample
    in ``T / that`` cycles for the interval target T."""
    combos, kept, reach = routing.combos, routing.kept, routing.reach
    n_t = len(targets)
    shape = (len(combos), n_w, n_t)
    total = np.zeros((*shape, len(NAMES)))
    per_stage = np.zeros((len(kept), *shape, len(NAMES)))
    interval = np.zeros(shape)
    slowest = np.zeros((len(kept), *shape))
    head_slowest = np.zeros((len(kept), *shape))
    to_exit = np.zeros((len(kept), *shape))
    body = np.zeros(shape)
    feasible = np.ones(shape, dtype=bool)
    picks = {}
    start = 0

    def arrange(a):  # (W, combos * T, ...) -> (combos, W, T, ...)
        return np.moveaxis(a.reshape(a.shape[0], len(combos), n_t, *a.shape[2:]), 0, 1)

    for s, end in enumerate(kept):
        p = np.maximum(reach[:, s], 1e-9)[:, None, None]
        sized = np.minimum(1.0, p * (headroom if s else 1.0))  # the fraction stage s is sized for
        stage_targets = (targets[None, :] / sized[:, 0]).ravel()
        for graph in [seg.body for seg in segments[start : end + 1]] + [segments[end].head]:
            res, cyc, lat, idx, ok = graph.at(stage_targets, n_w)
            if res.shape[0] != n_w:  # a graph without foldable layers: the same for every weighting
                res, cyc, lat, ok = (np.broadcast_to(a, (n_w, *a.shape[1:])) for a in (res, cyc, lat, ok))
            res, cyc, lat, ok = arrange(res), arrange(cyc), arrange(lat), arrange(ok)
            total += res
            per_stage[s] += res
            interval = np.maximum(interval, p * cyc)
            slowest[s] = np.maximum(slowest[s], cyc)
            feasible &= ok
            picks[graph.name] = (graph, [arrange(i) for i in idx])
            if graph is segments[end].head:
                to_exit[s] = body + lat
                head_slowest[s] = cyc
            else:
                body = body + lat
        start = end + 1
    return _GraphArrays(targets, total, per_stage, interval, slowest, head_slowest, to_exit, feasible, picks)


def _with_routing(
    segments, routing: _Routing, graphs: _GraphArrays, depth: int, headroom: float, budget: np.ndarray, earlier: dict
) -> _Batch:
    """The graphs' designs with gates of ``depth`` feature maps and the rest outside the FINN graphs
    (:func:`routing_cost`) added; ``earlier`` (gate depth -> (fits, total, slowest) of the smaller
    headrooms) gets this headroom's."""
    gates, merge = routing_cost(segments, routing.subset, depth)  # outside the FINN graphs
    total = graphs.total + merge + gates.sum(axis=0)
    per_stage = graphs.per_stage.copy()
    per_stage[-1] += merge
    for s in range(len(routing.subset)):
        per_stage[s] += gates[s]
    fits = graphs.feasible & np.all(total <= budget + 1e-9, axis=-1)
    listed = fits.copy()
    for was_fit, was_total, was_slowest in earlier.get(depth, []):
        # a larger headroom that changed no stage's speed only costs more: not listed
        listed &= ~(was_fit & np.all(was_slowest == graphs.slowest, axis=0) & np.all(was_total <= total, axis=-1))
    earlier.setdefault(depth, []).append((fits, total, graphs.slowest))
    return _Batch(routing, graphs, depth, headroom, total, per_stage, fits, listed)


def _candidates(batch: _Batch, clock_mhz: float) -> list[Candidate]:
    """The candidates of one exit subset, gate depth and headroom from the search's (combinations
    x weightings x targets) arrays: those that fit (``batch.fits``) and are worth listing
    (``batch.listed``), less those another weighting or the next faster target matches."""
    routing, graphs, total = batch.routing, batch.graphs, batch.total
    latency_us = graphs.to_exit / clock_mhz  # (stages, combos, W, targets)
    mean_latency = np.einsum("cs,scwt->cwt", routing.share, latency_us)
    fps = clock_mhz * 1e6 / graphs.interval
    keep = _worth_listing(batch, fps, mean_latency)
    # gather the kept designs' numbers at once, then make the candidates from lists
    cs, ws, ts = np.nonzero(keep)
    rows = zip(
        cs.tolist(),
        ws.tolist(),
        ts.tolist(),
        graphs.targets[ts].tolist(),
        fps[cs, ws, ts].tolist(),
        routing.accuracy[cs].tolist(),
        total[cs, ws, ts].tolist(),
        routing.reach[cs].tolist(),
        np.moveaxis(latency_us[:, cs, ws, ts], 0, 1).tolist(),
        np.moveaxis(graphs.slowest[:, cs, ws, ts], 0, 1).tolist(),
        np.moveaxis(batch.per_stage[:, cs, ws, ts], 0, 1).tolist(),
        mean_latency[cs, ws, ts].tolist(),
        np.moveaxis(graphs.head_slowest[:, cs, ws, ts], 0, 1).tolist(),
        strict=False,
    )
    exits, combos, picks = routing.subset, routing.combos, graphs.picks
    vector = Resources._make  # looked up once: one call per candidate
    out = []
    for c, w, t, target, f, acc, res, r, lat, slow, stage_res, mean, head in rows:
        out.append(
            Candidate(
                exits=exits,
                thresholds=combos[c],
                target=target,
                fps=f,
                accuracy=acc,
                resources=vector(res),
                reach=tuple(r),
                folding=LazyFolding(picks, c, (w, t)),
                latency_us=tuple(lat),
                stage_cycles=tuple(slow),
                stage_resources=tuple(map(tuple, stage_res)),
                mean_latency_us=mean,
                weighting=w,
                head_cycles=tuple(head),
                gate_depth=batch.depth,
                headroom=batch.headroom,
                policy=routing.policy,
            )
        )
    return out


def _worth_listing(batch: _Batch, fps: np.ndarray, mean_latency: np.ndarray) -> np.ndarray:
    """Which of the batch's listed designs (combinations x weightings x targets) to make candidates
    of: a design that the same exits, thresholds and weighting at the next faster target (or at the
    same target under another weighting) match in throughput, resources and latency is never worth
    listing: it is not on any front and never chosen."""
    feasible, total = batch.fits, batch.total
    keep = batch.listed.copy()
    keep[:, :, 1:] &= ~(
        feasible[:, :, :-1]
        & np.all(total[:, :, :-1] <= total[:, :, 1:], axis=-1)
        & (fps[:, :, :-1] >= fps[:, :, 1:])
        & (mean_latency[:, :, :-1] <= mean_latency[:, :, 1:])
    )
    for w in range(1, feasible.shape[1]):
        for v in range(w):
            same = (
                feasible[:, v]
                & np.all(total[:, v] <= total[:, w], axis=-1)
                & (fps[:, v] >= fps[:, w])
                & (mean_latency[:, v] <= mean_latency[:, w])
            )
            keep[:, w] &= ~same
    return keep


def objectives(c: Candidate) -> tuple[float, ...]:
    """What the front trades, all to be maximised: throughput, accuracy, -LUT, -BRAM18, -DSP."""
    lut, bram18, _, dsp = c.resources  # a Resources, or any (lut, bram18, uram, dsp)
    return (c.fps, c.accuracy, -lut, -bram18, -dsp)


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

"""The cheapest legal folding of each layer for a target interval.

For a target of ``t`` cycles per sample, every layer can be folded on its own: the cheapest
legal (PE, SIMD) whose cycles are at most ``t`` does not depend on the other layers. So a search
over the pipeline interval (and exits and thresholds) needs, per layer, only the lower envelope
"cost for at most t cycles", computed once here from FINN's formulas over PE, SIMD and where the
weights live (block RAM or LUTRAM)
(:mod:`exitflow.dse.finn_model`).

Cost is the resource use normalised by the budget and summed over LUT, BRAM18, URAM and DSP (a
resource the budget lacks makes any use of it infinitely expensive); ties go to fewer LUTs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from exitflow.core.design import LayerFolding
from exitflow.core.resources import COLUMN, NAMES
from exitflow.hw.folding import divisors, folding_violation, pick_pool

from .finn_model import BUFFER_STYLES, WeightLayer, layer_costs, stream_widths


class FoldingChoice(NamedTuple):
    """One layer's folding as the search picks it (a row of its :class:`FoldingTable`); what a
    design file holds is :meth:`layer_folding` of it."""

    pe: int
    simd: int
    ram_style: str = "auto"  # weight memory (FINN's ram_style)
    res_type: str = "lut"  # multipliers (FINN's resType)
    buffer_style: str = BUFFER_STYLES[0]  # line buffers of its window generator and pooling units

    def layer_folding(self) -> LayerFolding:
        return LayerFolding(
            pe=self.pe,
            simd=self.simd,
            ram_style=self.ram_style,
            res_type=self.res_type,
            buffer_style=self.buffer_style,
        )


def legal_foldings(layer: WeightLayer) -> tuple[np.ndarray, np.ndarray]:
    """All (PE, SIMD) FINN can build for the layer: those `exitflow build` accepts."""
    channels = layer.window["ifm_ch"] if layer.window else None
    pairs = [
        (p, s)
        for p in divisors(layer.mh)
        for s in divisors(layer.mw)
        if folding_violation(layer.layer, p, s, layer.mw, layer.mh, channels, layer.wbits, layer.depthwise) is None
    ]
    pe, simd = zip(*pairs, strict=False)
    return np.array(pe), np.array(simd)


def mult_styles(layer: WeightLayer) -> tuple[str, ...]:
    """What the search may build a layer's multipliers of: LUT fabric or DSP slices (FINN's
    ``resType``) for an HLS MVAU; an RTL MVAU always uses DSP slices (the build leaves its
    resType alone)."""
    if layer.depthwise:
        return tuple(sorted({option[3] for option in layer.table}))
    if layer.impl == "hls":
        return ("lut", "dsp")
    return ("dsp",)


def weight_styles(layer: WeightLayer) -> tuple[str, ...]:
    """Where the search may keep a layer's weights: block RAM (FINN's ``auto``) or LUTRAM
    (``distributed``) for an HLS MVAU streaming its weights from an internal memory. Other
    layers keep the style they were built with (FINN's estimate of an RTL MVAU counts no LUTs for
    any style, so offering LUTRAM there would only exploit the estimator)."""
    if layer.depthwise:
        return tuple(sorted({option[2] for option in layer.table}))
    if layer.impl == "hls" and layer.mem_mode == "internal_decoupled":
        return ("auto", "distributed")
    return (layer.ram_style,)


def buffer_styles(layer: WeightLayer, pools: tuple = ()) -> tuple[str, ...]:
    """Where the search may keep the line buffers of the layer's window generator and of the
    pooling units whose fold follows the layer (``pools``): LUTRAM or block RAM
    (:data:`~exitflow.dse.finn_model.BUFFER_STYLES`); a layer with neither keeps FINN's default."""
    if layer.window is not None or layer.window_node is not None or pools:
        return BUFFER_STYLES
    return BUFFER_STYLES[:1]


_EXIT = (
    (1.0, 1.0, 1.0, 1.0),
    (4.0, 1.0, 1.0, 1.0),
    (1.0, 4.0, 1.0, 1.0),
    (1.0, 1.0, 1.0, 0.125),
    (4.0, 1.0, 1.0, 0.125),
    (16.0, 1.0, 1.0, 0.125),
)
WEIGHTINGS = _EXIT + tuple(
    w
    for w in ((float(lut), 1.0, 1.0, dsp) for dsp in (1e6, 1.0, 0.25) for lut in np.geomspace(1 / 64, 64, 37))
    if w not in _EXIT
)
"""How a folding's resources add up to one cost: the budget shares of LUT, BRAM18, URAM and DSP
times these weights. The first treats every resource alike; the next two make LUTs or BRAM18
four times dearer, so the search also sees LUT-lean and BRAM-lean designs (one scalar cost alone
misses designs that trade one for the other); the fourth is the first with DSP slices at an
eighth of their budget share (a DSP slice then replaces LUT multipliers where it saves about 28
LUTs, as in an 8-bit input layer), the fifth and sixth the same with LUTs 4 and 16 times dearer
(what a design that must save LUTs picks: DSP multipliers, block-RAM weights and line buffers).
The rest weigh LUTs from 1/64 to 64 times (geometric steps),
each with DSP slices all but barred (1e6: LUT multipliers wherever an HLS MVAU allows them), at
full and at a quarter price: each layer picks its multipliers on its own, so without the barred
set a LUT-lean weighting moves every layer into DSP slices at once and overruns the DSP budget.
The search uses the first six for designs with early exits and all of them for the designs
without (one exit set, one threshold: cheap), so baseline (a) gets a fine LUT/BRAM/DSP
trade-off."""
EXIT_WEIGHTINGS = 6


@dataclass(frozen=True, eq=False)
class FoldingTable:
    """Every legal folding (PE, SIMD, weight memory style, multiplier resource, line-buffer
    style) of one layer with its resources and cycles, and one lower envelope per cost
    weighting. A pooling unit whose fold follows the layer (``pools``) is part of each folding:
    its fold is :func:`~exitflow.hw.folding.pick_pool` of the MVAU's cycles, its line buffer
    in the folding's style, its resources and cycles in the folding's."""

    layer: WeightLayer
    pe: np.ndarray
    simd: np.ndarray
    resources: np.ndarray  # (foldings, 4): core.resources.COLUMN order (MVAU + window generator)
    cycles: np.ndarray  # slowest of the MVAU and its window generator
    costs: np.ndarray  # (weightings, foldings)
    latency: np.ndarray  # their cycles added up
    ram_style: np.ndarray  # weight memory style of each folding
    in_width: np.ndarray = None  # the layer's input stream (its window generator's, if any)
    out_width: np.ndarray = None  # its output stream
    res_type: np.ndarray = None  # multiplier resource (FINN's resType) of each folding
    mvau_cycles: np.ndarray = None  # the MVAU's own cycles (a pooling unit after it keeps up with these)
    buffer_style: np.ndarray = None  # line-buffer style of each folding
    pool_folds: tuple = ()  # per governed pooling unit: its fold index at each folding

    @classmethod
    def build(cls, layer: WeightLayer, budget: np.ndarray, weightings=WEIGHTINGS, pools: tuple = ()) -> FoldingTable:
        pe, simd = legal_foldings(layer)
        variants = [
            (s, m, b) for s in weight_styles(layer) for m in mult_styles(layer) for b in buffer_styles(layer, pools)
        ]
        n = len(pe)
        pe, simd = np.tile(pe, len(variants)), np.tile(simd, len(variants))
        ram_style, res_type, buffer_style = (
            np.repeat(np.array([v[i] for v in variants], dtype=object), n) for i in range(3)
        )
        costs = layer_costs(layer, pe, simd, ram_style, res_type, buffer_style)
        resources = sum(np.stack([c[r] for r in NAMES], axis=1) for c in costs.values())
        per_node = np.stack([c["cycles"] for c in costs.values()])
        cycles, latency = per_node.max(axis=0), per_node.sum(axis=0)
        mvau = costs[layer.node]["cycles"]
        folds, style = [], np.array([BUFFER_STYLES.index(b) for b in buffer_style])
        for unit in pools:
            k = pick_pool(unit.cycles, mvau)
            resources = resources + unit.resources[style, k]
            cycles = np.maximum(cycles, unit.cycles[k])
            latency = latency + unit.latency[k]
            folds.append(k)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(resources > 0, resources / budget, 0.0)
        weighted = np.array([(share * np.asarray(w)).sum(axis=1) for w in weightings]) + 1e-9 * resources[:, COLUMN.lut]
        in_width, out_width = stream_widths(layer, pe, simd, mvau)
        return cls(
            layer,
            pe,
            simd,
            resources,
            cycles,
            weighted,
            latency,
            ram_style,
            in_width,
            out_width,
            res_type,
            mvau,
            buffer_style,
            tuple(folds),
        )

    def index(self, pe: int, simd: int, ram_style: str, res_type: str, buffer_style: str = BUFFER_STYLES[0]) -> int:
        """The folding (PE, SIMD, weight memory style, multiplier resource, line-buffer style),
        as ``table.index(*choice)`` of a :class:`FoldingChoice`."""
        match = np.flatnonzero(
            (self.pe == pe)
            & (self.simd == simd)
            & (self.ram_style == ram_style)
            & (self.res_type == res_type)
            & (self.buffer_style == buffer_style)
        )
        if not match.size:
            raise KeyError(f"{self.layer.layer}: no folding {(pe, simd, ram_style, res_type, buffer_style)}")
        return int(match[0])

    @property
    def cost(self) -> np.ndarray:
        """The cost under the first weighting (every resource alike)."""
        return self.costs[0]

    def choice(self, k: int) -> FoldingChoice:
        """Folding ``k`` of the table."""
        return FoldingChoice(
            int(self.pe[k]), int(self.simd[k]), str(self.ram_style[k]), str(self.res_type[k]), str(self.buffer_style[k])
        )

    def envelope(self, targets: np.ndarray, weightings: int | None = None) -> np.ndarray:
        """:meth:`cheapest` for the first ``weightings`` cost weightings (default: all) through
        sorted lower envelopes: O(log n) per target; (weightings, targets) indices, -1 where
        nothing is fast enough."""
        order, best = self._envelope
        pos = np.searchsorted(self.cycles[order], np.asarray(targets, dtype=float), side="right") - 1
        return np.where(pos >= 0, best[:weightings, np.maximum(pos, 0)], -1)

    @property
    def _envelope(self):
        cached = self.__dict__.get("_env")
        if cached is None:
            order = np.argsort(self.cycles, kind="stable")
            sorted_cycles = self.cycles[order]
            last_of_run = np.r_[sorted_cycles[1:] != sorted_cycles[:-1], True]
            costs = self.costs[:, order]
            # running argmin of cost over foldings sorted by cycles (ties keep the earlier one)
            running = np.minimum.accumulate(costs, axis=1)
            new = np.ones(costs.shape, dtype=bool)
            new[:, 1:] = costs[:, 1:] < running[:, :-1]
            best = order[np.maximum.accumulate(np.where(new, np.arange(len(order))[None, :], 0), axis=1)]
            # foldings with equal cycles: the envelope at that cycle count must see all of them
            last = np.flatnonzero(last_of_run)
            best = best[:, last[np.searchsorted(last, np.arange(len(order)))]]
            for w, cost in enumerate(self.costs):
                best[w, ~np.isfinite(cost[best[w]])] = -1  # only foldings needing what the budget lacks
            cached = (order, best)
            object.__setattr__(self, "_env", cached)
        return cached

    def cheapest(self, targets: np.ndarray, weighting: int = 0) -> np.ndarray:
        """Index of the cheapest folding with cycles <= target, per target (-1: none fits)."""
        targets = np.asarray(targets, dtype=float)
        fits = self.cycles[None, :] <= targets[:, None]
        costs = np.where(fits, self.costs[weighting][None, :], np.inf)
        best = np.argmin(costs, axis=1)
        return np.where(np.isfinite(costs[np.arange(len(targets)), best]), best, -1)

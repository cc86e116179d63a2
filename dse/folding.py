"""The cheapest legal folding of each layer for a target interval.

For a target of ``t`` cycles per sample, every layer can be folded on its own: the cheapest
legal (PE, SIMD) whose cycles are at most ``t`` does not depend on the other layers. So a search
over the pipeline interval (and exits and thresholds) needs, per layer, only the lower envelope
"cost for at most t cycles", computed once here from FINN's formulas
(:mod:`exitflow.dse.finn_model`).

Cost is the resource use normalised by the budget and summed over LUT, BRAM18, URAM and DSP (a
resource the budget lacks makes any use of it infinitely expensive); ties go to fewer LUTs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .finn_model import RESOURCES, WeightLayer, layer_costs


def legal_foldings(layer: WeightLayer) -> tuple[np.ndarray, np.ndarray]:
    """All (PE, SIMD) FINN can build for the layer: those `exitflow build` accepts."""
    from exitflow.build import divisors, folding_violation

    channels = layer.window["ifm_ch"] if layer.window else None
    pairs = [(p, s) for p in divisors(layer.mh) for s in divisors(layer.mw)
             if folding_violation(layer.layer, p, s, layer.mw, layer.mh, channels, layer.wbits) is None]
    pe, simd = zip(*pairs)
    return np.array(pe), np.array(simd)


@dataclass(frozen=True, eq=False)
class FoldingTable:
    """Every legal folding of one layer with its resources and cycles, and the lower envelope."""

    layer: WeightLayer
    pe: np.ndarray
    simd: np.ndarray
    resources: np.ndarray  # (foldings, 4): lut, bram18, uram, dsp (MVAU + window generator)
    cycles: np.ndarray  # slowest of the MVAU and its window generator
    cost: np.ndarray
    latency: np.ndarray  # their cycles added up

    @classmethod
    def build(cls, layer: WeightLayer, budget: np.ndarray) -> FoldingTable:
        pe, simd = legal_foldings(layer)
        costs = layer_costs(layer, pe, simd)
        resources = sum(np.stack([c[r] for r in RESOURCES], axis=1) for c in costs.values())
        per_node = np.stack([c["cycles"] for c in costs.values()])
        cycles, latency = per_node.max(axis=0), per_node.sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(resources > 0, resources / budget, 0.0)
        cost = share.sum(axis=1) + 1e-9 * resources[:, 0]
        return cls(layer, pe, simd, resources, cycles, cost, latency)

    def envelope(self, targets: np.ndarray) -> np.ndarray:
        """:meth:`cheapest` through a sorted lower envelope: O(log n) per target."""
        order, best = self._envelope
        pos = np.searchsorted(self.cycles[order], np.asarray(targets, dtype=float), side="right") - 1
        return np.where(pos >= 0, best[np.maximum(pos, 0)], -1)

    @property
    def _envelope(self):
        cached = self.__dict__.get("_env")
        if cached is None:
            order = np.argsort(self.cycles, kind="stable")
            costs = self.cost[order]
            best = np.empty(len(order), dtype=np.int64)
            current = 0
            for i in range(len(order)):  # running argmin of cost over foldings sorted by cycles
                if costs[i] < costs[current] or i == 0:
                    current = i
                best[i] = order[current]
            # foldings with equal cycles: the envelope at that cycle count must see all of them
            last_of_run = np.r_[self.cycles[order][1:] != self.cycles[order][:-1], True]
            for i in range(len(order) - 2, -1, -1):
                if not last_of_run[i]:
                    best[i] = best[i + 1]
            cached = (order, best)
            object.__setattr__(self, "_env", cached)
        return cached

    def cheapest(self, targets: np.ndarray) -> np.ndarray:
        """Index of the cheapest folding with cycles <= target, per target (-1: none fits)."""
        targets = np.asarray(targets, dtype=float)
        fits = self.cycles[None, :] <= targets[:, None]
        costs = np.where(fits, self.cost[None, :], np.inf)
        best = np.argmin(costs, axis=1)
        return np.where(np.isfinite(costs[np.arange(len(targets)), best]), best, -1)

"""Throughput and latency of a multi-exit pipeline.

Time is counted per *input* sample. Stage 0 sees every sample; stage k (with its head) sees the
samples that went on at exits 0..k-1, ``reaching_k = taken_exit >= k``, a fraction ``p_k`` of
them. A stage whose slowest unit (its own nodes and its head's) needs ``T_k`` cycles per sample:

* with infinite gate buffers, the pipeline accepts one input every
  ``max_k p_k * T_k`` cycles (ATHEENA's rule: throughput = min_k (clock / T_k) / p_k);
* with a gate of ``D`` samples in front of stage k, a burst of hard samples can still stall it.
  Take ``W`` consecutive inputs holding ``c(W)`` samples that reach stage k, the first arriving
  at an idle stage. When the last of them arrives, ``(W - 1)`` input intervals later, one can be
  in service and ``D`` waiting, so ``c(W) - 1 - D`` must be done already:
  ``(c(W) - 1 - D) * T_k <= (W - 1) * interval``. The model takes the worst window of the exit
  sequence the profile produced (treated as repeating, so windows wrap around) and never goes
  below the long-run ``p_k * T_k``. ``D -> infinity`` recovers the first rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exitflow.core.errors import ConfigError
from exitflow.cosim.built import load_pipeline
from exitflow.cosim.cycle import (
    MIN_SAMPLES,
    CycleReport,
    ExitLatency,
    Pipeline,
    Stage,
    Unit,
    _check_taken,
    steady_state,
    unloaded_latency,
)
from exitflow.hw.folding import record_fifo_for


def reach_fractions(taken: np.ndarray, exits: int) -> np.ndarray:
    """p_k: the fraction of samples that reach stage k (p_0 = 1)."""
    taken = np.asarray(taken)
    return np.array([(taken >= k).mean() for k in range(exits)])


def max_window_counts(flags: np.ndarray) -> np.ndarray:
    """c(W) for W = 1..N: the most ``True`` in any W consecutive entries of the repeating sequence."""
    flags = np.asarray(flags, dtype=np.int64)
    n = len(flags)
    prefix = np.concatenate([[0], np.cumsum(np.concatenate([flags, flags]))])
    start = np.arange(n)
    return np.array([np.max(prefix[start + w] - prefix[start]) for w in range(1, n + 1)])


def input_interval(reaching: np.ndarray, service_cycles: float, buffer_samples: int | None) -> float:
    """Cycles per input sample that a stage of ``service_cycles`` per reaching sample, behind a
    gate of ``buffer_samples`` (None: unbounded), can sustain on this exit sequence."""
    reaching = np.asarray(reaching, dtype=bool)
    average = reaching.mean() * service_cycles
    if buffer_samples is None or not reaching.any():
        return float(average)
    if len(reaching) < 2:
        return float(average)
    counts = max_window_counts(reaching)[1:]  # W = 2..N
    windows = np.arange(2, len(reaching) + 1)
    burst = np.max((counts - 1 - buffer_samples) * service_cycles / (windows - 1))
    return float(max(average, burst))


@dataclass(frozen=True)
class PipelineEstimate:
    fps: float  # samples per second the pipeline accepts
    fps_unbounded: float  # the same with unbounded gates (ATHEENA's rule)
    intervals: tuple[float, ...]  # cycles per input sample each stage needs
    bottleneck: int  # the stage that sets the pace
    reach: tuple[float, ...]  # p_k


def pipeline(
    taken: np.ndarray, stage_cycles: list[float], gate_samples: list[int | None], clock_mhz: float
) -> PipelineEstimate:
    """Throughput of stages with ``stage_cycles[k]`` cycles per sample (the slowest unit of stage
    k and its head); ``gate_samples[k]`` is the buffer in front of stage k (None for stage 0)."""
    taken = np.asarray(taken)
    exits = len(stage_cycles)
    reach = reach_fractions(taken, exits)
    intervals = [input_interval(taken >= k, stage_cycles[k], gate_samples[k] if k else None) for k in range(exits)]
    unbounded = [reach[k] * stage_cycles[k] for k in range(exits)]
    clock = clock_mhz * 1e6
    worst = int(np.argmax(intervals))
    return PipelineEstimate(
        fps=clock / max(intervals),
        fps_unbounded=clock / max(unbounded),
        intervals=tuple(intervals),
        bottleneck=worst,
        reach=tuple(reach),
    )


def sensitivity(
    reach: np.ndarray, stage_cycles: list[float], clock_mhz: float, drift: float = 0.05
) -> dict[str, float]:
    """Throughput (unbounded gates) when every p_k (k > 0) moves by -drift and +drift."""
    out = {}
    for name, sign in (("minus", -1), ("plus", +1)):
        p = np.clip(np.asarray(reach, dtype=float) + sign * drift, 0.0, 1.0)
        p[0] = 1.0
        out[name] = clock_mhz * 1e6 / max(p[k] * stage_cycles[k] for k in range(len(stage_cycles)))
    return out


def latency(taken: np.ndarray, stage_latency: list[float], head_latency: list[float], clock_mhz: float) -> dict:
    """Cycles from input to each exit's result (stages up to k, then head k), and the mean over
    the samples' actual exits, in cycles and microseconds."""
    to_exit = np.cumsum(stage_latency) + np.asarray(head_latency, dtype=float)
    taken = np.asarray(taken)
    mean = float(to_exit[taken].mean()) if len(taken) else 0.0
    return {
        "cycles_to_exit": to_exit.tolist(),
        "us_to_exit": (to_exit / clock_mhz).tolist(),
        "mean_cycles": mean,
        "mean_us": mean / clock_mhz,
    }


def stage_level_fps(
    taken: np.ndarray,
    stage_cycles: list[float],
    head_cycles: list[float],
    gate_depths: list[int],
    gate_words: list[int],
    clock_mhz: float,
    min_samples: int = 4000,
) -> float:
    """The design search's throughput for finite gates: the cycle simulation
    (:mod:`exitflow.cosim.cycle`) of the pipeline at stage level, each stage one unit at
    ``stage_cycles[k]`` (the slowest node of stage k and its head, as above) and its head one unit
    at ``head_cycles[k]``; gates of ``gate_depths[k]`` feature maps of ``gate_words[k]`` words,
    record FIFOs as deep as the deepest gate (as the block design builds them) and the merge, fed
    with the exit sequence ``taken``. The closed form above (:func:`pipeline`) bounds the burst
    stalls from the worst window alone, which is pessimistic for shallow gates and blind to
    blocking between stages; this is what the sweep ranks and sizes gates with."""
    n = len(stage_cycles)
    if n == 1:
        return clock_mhz * 1e6 / stage_cycles[0]
    stages = tuple(
        Stage(
            f"stage{k}",
            (Unit("stage", int(np.ceil(stage_cycles[k]))),),
            (Unit("head", int(np.ceil(head_cycles[k]))),),
            gate_depths[k] if k < n - 1 else None,
            max(1, int(gate_words[k])),
        )
        for k in range(n)
    )
    records = record_fifo_for(max(gate_depths[: n - 1]))
    return simulate(Pipeline(stages, clock_mhz, records), taken, min_samples=min_samples).simulated_fps


# ---------------------------------------------------------------- the cycle simulation, predicted

_model = pipeline  # predict's first argument is named pipeline too


def predict(pipeline: Pipeline, taken: Sequence[int] | np.ndarray):
    """The dse model's estimate (:class:`exitflow.dse.throughput.PipelineEstimate`) for the same
    pipeline and exit sequence."""
    pipeline.check()
    taken = _check_taken(taken, len(pipeline.stages))
    stage_cycles = [s.slowest for s in pipeline.stages]
    gates = [None] + [s.gate_depth for s in pipeline.stages[:-1]]
    return _model(taken, stage_cycles, gates, pipeline.clock_mhz)


def simulate(
    pipeline: Pipeline,
    taken: Sequence[int] | np.ndarray,
    names: Sequence[str] | None = None,
    min_samples: int = MIN_SAMPLES,
    progress: Callable[[int], None] | None = None,
    keep_trace: bool = False,
) -> CycleReport:
    """Run ``taken`` (repeated to at least ``min_samples`` samples and 3 repetitions) through the
    pipeline; throughput over the repetitions between the first and the last, latency per exit
    over the same samples, and the dse model's prediction for the same sequence."""
    exits = len(pipeline.stages)
    taken = _check_taken(taken, exits)
    names = list(names) if names is not None else [s.name for s in pipeline.stages]
    if len(names) != exits:
        raise ConfigError(f"exit names: {len(names)} names for {exits} exits")
    steady = steady_state(pipeline, taken, min_samples, progress)
    trace, (first, end) = steady.trace, steady.window
    estimate = predict(pipeline, taken)
    window = slice(first, end)
    latencies = (trace.done - trace.accept)[window]
    exit_of = trace.exit[window]
    per_exit = []
    for k in range(exits):
        mine = latencies[exit_of == k]
        stats = (
            (float(mine.mean()), float(np.percentile(mine, 50)), float(np.percentile(mine, 99)))
            if len(mine)
            else (None, None, None)
        )
        per_exit.append(
            ExitLatency(
                k,
                names[k],
                int(len(mine)),
                *(None if v is None else round(v, 2) for v in stats),
                unloaded_latency(pipeline, k),
            )
        )
    return CycleReport(
        clock_mhz=pipeline.clock_mhz,
        sequence=steady.sequence,
        repeats=steady.repeats,
        window=steady.window,
        cycles_per_sample=steady.cycles_per_sample,
        simulated_fps=steady.fps,
        predicted_fps=estimate.fps,
        predicted_fps_unbounded=estimate.fps_unbounded,
        stage_cycles=[s.slowest for s in pipeline.stages],
        simulated_stage_cycles=[s.simulated_slowest for s in pipeline.stages],
        predicted_intervals=list(estimate.intervals),
        reach=list(estimate.reach),
        latency=per_exit,
        seconds=steady.seconds,
        trace=trace if keep_trace else None,
    )


def simulate_design(
    run_dir: str | Path,
    design_path: str | Path | None,
    taken: np.ndarray,
    min_samples: int = MIN_SAMPLES,
    progress: Callable[[int], None] | None = None,
) -> CycleReport:
    """The cycle simulation of the design built in ``run_dir`` on an exit sequence (e.g. the
    functional cosimulation's ``Results.exit``)."""
    pipeline, names = load_pipeline(run_dir, design_path)
    return simulate(pipeline, taken, names, min_samples, progress)

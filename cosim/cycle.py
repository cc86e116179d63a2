"""Cycle-level simulation of a multi-exit streaming pipeline, at sample granularity.

The hardware (README: DMA in -> stage 0 -> duplicate -> head 0 and gate 0 -> stage 1 -> ... ->
final head; every exit record -> round-robin merge -> DMA out) is simulated event by event, one
sample at a time, with the exit sequence the functional cosimulation produced:

* **Units.** Every FINN node of every stage and head is a unit with ``c`` cycles per sample
  (``DIR/hw/<graph>/estimate_layer_cycles.json``): it starts a sample when the sample arrives
  and it is free, and finishes ``c`` cycles later. ``c`` is both its initiation interval and its
  latency, FINN's own convention for the critical path (and the dse model's latency: the sum of
  the nodes' cycles). Real nodes overlap consecutive nodes on one sample word by word, so
  latencies here are upper bounds; intervals, hence throughput, are not affected. Nodes of 0
  cycles (data-width converters) are wires at this granularity and are left out.
* **Buffers and back-pressure.** FINN's stream FIFOs hold 2 words, far less than a feature map.
  Their sample-granularity equivalent: a unit holds its finished sample until the next unit takes
  it (blocking after service) and starts nothing new meanwhile. A slow unit therefore stalls every
  unit before it.
* **Duplicate.** Stage k's last unit hands a sample over only when both head k's first unit and
  the gate FIFO can take it (an AXI-stream broadcaster writes both outputs at once).
* **Gate.** The FIFO in front of gate k holds ``gate_depth`` feature maps; a slot frees when the
  gate starts reading the feature map out. The gate takes samples in order: it waits for the
  sample's feature map, for the head's CTU record (records reach it through a
  ``RECORD_FIFO``-record stream, so a stalled gate stalls the head too) and, for a sample that
  goes on, for stage k+1's first unit to be free; it then needs ``gate_cycles`` (feature-map
  words, one per cycle) per sample, forwarded or dropped. A dropped sample's tagged record goes
  to the merge when its words are read.
* **Merge.** ``exitflow_merge`` looks at one input per cycle, round robin, so input k is read at
  cycles ``t = k (mod exits)``; each input is a ``RECORD_FIFO``-record stream (a full one stalls
  its gate, or the final head).
* **Input.** The DMA offers the next sample as soon as stage 0's first unit can take it.

Throughput is measured in steady state: the exit sequence is repeated until at least
``min_samples`` samples run (the dse model treats it as repeating too), and samples per cycle are
counted over whole repetitions, from the cycle the last sample of the first repetition leaves
(fill) to the cycle the last sample of the last-but-one repetition leaves (the last one drains).
Counting outputs rather than inputs keeps it right when a buffer is so deep that the input could
run ahead of a slower stage for the whole run. Latency runs from the cycle a sample enters stage
0 to the cycle its record leaves the merge, under that full load; ``unloaded_cycles`` is the same
for one sample alone.

This module needs numpy alone (the PYNQ driver runs it on the board to predict the throughput
of new thresholds); the pipeline of a built design comes from :mod:`exitflow.cosim.built`.
:func:`exitflow.dse.throughput.simulate` runs this simulator and sets beside it the dse model's
throughput (:func:`exitflow.dse.throughput.predict`) for the same units and exit sequence, with
each stage's cycles the slowest node of the stage and its head.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from exitflow.core.errors import ConfigError

RECORD_FIFO = 2  # records a bare CTU -> gate or exit -> merge stream holds (a stream register); a
# built design has record FIFOs as deep as its deepest gate (exitflow.hw.folding.record_fifo_depth)
MIN_SAMPLES = 10_000  # samples simulated at least: the exit sequence repeats until there are this many
PROGRESS_EVERY = 1_000


@dataclass(frozen=True)
class Unit:
    """One FINN node: ``cycles`` per sample, its interval and its latency in the simulation;
    ``estimate``: FINN's estimate of them, what the dse model predicts with (default: ``cycles``).
    They differ where the graph's streams stall the node (:func:`exitflow.cosim.built._graph_units`)."""

    name: str
    cycles: int
    estimate: int | None = None

    @property
    def predicted(self) -> int:
        return self.cycles if self.estimate is None else self.estimate


@dataclass(frozen=True)
class Stage:
    """Stage k's nodes, head k's nodes (the CTU last) and the gate after the stage."""

    name: str
    units: tuple[Unit, ...]
    head: tuple[Unit, ...]
    gate_depth: int | None = None  # feature maps the gate FIFO holds; None on the last stage
    gate_cycles: int = 1  # the gate's cycles per sample: the stage's output words per feature map

    @property
    def slowest(self) -> int:
        """The slowest unit of the stage and its head by FINN's estimate: the dse model's cycles
        per sample."""
        return max(u.predicted for u in (*self.units, *self.head))

    @property
    def simulated_slowest(self) -> int:
        """The same with the units' simulated cycles (the streams' stalls included)."""
        return max(u.cycles for u in (*self.units, *self.head))


@dataclass(frozen=True)
class Pipeline:
    stages: tuple[Stage, ...]
    clock_mhz: float
    record_fifo: int = RECORD_FIFO  # records the CTU -> gate and exit -> merge streams hold

    def check(self) -> None:
        if not self.stages:
            raise ConfigError("pipeline: no stages")
        if not self.clock_mhz > 0:
            raise ConfigError(f"pipeline: clock must be positive; got {self.clock_mhz} MHz")
        if self.record_fifo < 1:
            raise ConfigError(f"pipeline: record streams must hold at least one record; got {self.record_fifo}")
        last = len(self.stages) - 1
        for k, stage in enumerate(self.stages):
            where = f"pipeline stage {k} ({stage.name})"
            if not stage.units or not stage.head:
                raise ConfigError(f"{where}: the stage and its head need at least one unit each")
            for unit in (*stage.units, *stage.head):
                if unit.cycles < 0 or unit.cycles != int(unit.cycles):
                    raise ConfigError(
                        f"{where}: unit {unit.name} has {unit.cycles} cycles; cycles are whole numbers >= 0"
                    )
            if k < last and (stage.gate_depth is None or stage.gate_depth < 1):
                raise ConfigError(
                    f"{where}: a stage followed by another needs a gate depth >= 1; got {stage.gate_depth}"
                )
            if k == last and stage.gate_depth is not None:
                raise ConfigError(f"{where}: the last stage has no gate; got gate depth {stage.gate_depth}")
            if k < last and stage.gate_cycles < 1:
                raise ConfigError(f"{where}: gate cycles per sample must be >= 1; got {stage.gate_cycles}")


# ------------------------------------------------------------------------------ the simulation


@dataclass
class Trace:
    """Per simulated sample: the cycle it entered stage 0, the cycle its record left the merge,
    its exit."""

    accept: np.ndarray
    done: np.ndarray
    exit: np.ndarray


def _check_taken(taken: np.ndarray, exits: int) -> np.ndarray:
    taken = np.asarray(taken)
    if taken.ndim != 1 or not len(taken):
        raise ConfigError("exit sequence: needs at least one sample (a 1-D array of exit indices)")
    if not np.issubdtype(taken.dtype, np.integer) or taken.min() < 0 or taken.max() >= exits:
        raise ConfigError(f"exit sequence: exit indices must be integers in 0..{exits - 1}")
    return taken.astype(np.int64)


def run(pipeline: Pipeline, taken: Sequence[int] | np.ndarray, progress: Callable[[int], None] | None = None) -> Trace:
    """Simulate the samples of ``taken`` (each one's exit index) entering back to back."""
    pipeline.check()
    stages = pipeline.stages
    exits = len(stages)
    taken = _check_taken(taken, exits)
    n = len(taken)
    cycles = [[int(u.cycles) for u in s.units] for s in stages]
    head_cycles = [[int(u.cycles) for u in s.head] for s in stages]
    # the cycle each unit handed its last sample on (it is free from then on)
    free = [[0] * len(c) for c in cycles]
    head_free = [[0] * len(c) for c in head_cycles]
    depth = [s.gate_depth or 1 for s in stages]
    fifo = [deque(maxlen=d) for d in depth]  # gate starts of the last gate_depth samples
    depth_rec = pipeline.record_fifo
    records = [deque(maxlen=depth_rec) for _ in stages]  # gate starts of the last records read
    gate_free = [0] * exits
    taken_at = [deque(maxlen=depth_rec) for _ in stages]  # merge reads of the last records per input
    merge_last = [-1] * exits
    accept = np.empty(n, dtype=np.int64)
    done = np.empty(n, dtype=np.int64)
    last = exits - 1

    def chain(c: list[int], f: list[int], t: int) -> int:
        """A sample enters unit 0 at ``t``; returns the cycle the last unit finishes it. Every
        unit but the last hands it on when done and the next one is free."""
        for u in range(len(c) - 1):
            t += c[u]
            if f[u + 1] > t:
                t = f[u + 1]
            f[u] = t
        return t + c[-1]

    def merge(k: int, ready: int) -> tuple[int, int]:
        """A record is ready for merge input k at ``ready``: (the cycle it enters the input
        stream, the cycle the merge reads it)."""
        q = taken_at[k]
        if len(q) == depth_rec and q[0] > ready:  # the input stream is full
            ready = q[0]
        t = max(ready, merge_last[k] + 1)
        t += (k - t) % exits
        merge_last[k] = t
        q.append(t)
        return ready, t

    for i in range(n):
        e = int(taken[i])
        t = free[0][0]  # the DMA offers the next sample as soon as stage 0 can take it
        accept[i] = t
        for k in range(e + 1):
            c, f, hc, hf = cycles[k], free[k], head_cycles[k], head_free[k]
            finish = chain(c, f, t)
            handover = hf[0]  # the duplicate writes the head and the gate FIFO at once
            if k < last and len(fifo[k]) == depth[k] and fifo[k][0] > handover:
                handover = fifo[k][0]
            handover = max(finish, handover)
            f[-1] = handover
            decided = chain(hc, hf, handover)
            if k == last:
                ready, read = merge(k, decided)  # the tag takes the record, the merge reads it
                hf[-1] = ready
                done[i] = read + 1
                break
            rec = records[k]
            if len(rec) == depth_rec and rec[0] > decided:
                decided = rec[0]  # the record stream to the gate is full
            hf[-1] = decided
            start = max(handover, decided, gate_free[k])
            goes_on = e > k
            if goes_on and free[k + 1][0] > start:
                start = free[k + 1][0]
            fifo[k].append(start)
            rec.append(start)
            end = start + stages[k].gate_cycles
            if goes_on:
                gate_free[k] = end
                t = start
                continue
            ready, read = merge(k, end)
            gate_free[k] = ready  # the gate waits until its tagged record is written
            done[i] = read + 1
        if progress and (i + 1) % PROGRESS_EVERY == 0:
            progress(PROGRESS_EVERY)
    if progress and n % PROGRESS_EVERY:
        progress(n % PROGRESS_EVERY)
    return Trace(accept, done, taken)


@dataclass(frozen=True)
class SteadyState:
    """Throughput of an exit sequence repeated until it is in steady state (module docstring)."""

    trace: Trace
    sequence: int  # samples in the exit sequence
    repeats: int
    window: tuple[int, int]  # simulated samples [first, last) the throughput is measured over
    cycles_per_sample: float
    fps: float
    seconds: float  # wall time


def steady_state(
    pipeline: Pipeline,
    taken: Sequence[int] | np.ndarray,
    min_samples: int = MIN_SAMPLES,
    progress: Callable[[int], None] | None = None,
) -> SteadyState:
    """Run ``taken`` repeated to at least ``min_samples`` samples and 3 repetitions; samples per
    second over the repetitions between the first and the last."""
    pipeline.check()
    taken = _check_taken(taken, len(pipeline.stages))
    n = len(taken)
    repeats = max(3, math.ceil(min_samples / n))
    start = time.perf_counter()
    trace = run(pipeline, np.tile(taken, repeats), progress)
    seconds = time.perf_counter() - start
    first, end = n, (repeats - 1) * n
    # all samples of repetitions 0..r have left by finished[r]
    finished = np.maximum.accumulate(trace.done)[n - 1 :: n]
    cycles_per_sample = float(finished[repeats - 2] - finished[0]) / (end - first)
    fps = pipeline.clock_mhz * 1e6 / cycles_per_sample if cycles_per_sample > 0 else math.inf
    return SteadyState(trace, n, repeats, (first, end), cycles_per_sample, fps, seconds)


# ------------------------------------------------------------------------------ the figures


@dataclass(frozen=True)
class ExitLatency:
    exit: int
    name: str
    samples: int  # in the measured window
    mean_cycles: float | None
    p50_cycles: float | None
    p99_cycles: float | None
    unloaded_cycles: int  # one sample alone, from stage 0 to the merge's output

    def to_data(self, clock_mhz: float) -> dict:
        def us(value: float | None) -> float | None:
            return None if value is None else round(value / clock_mhz, 3)

        return {
            "exit": self.exit,
            "name": self.name,
            "samples": self.samples,
            "mean_cycles": self.mean_cycles,
            "p50_cycles": self.p50_cycles,
            "p99_cycles": self.p99_cycles,
            "mean_us": us(self.mean_cycles),
            "p50_us": us(self.p50_cycles),
            "p99_us": us(self.p99_cycles),
            "unloaded_cycles": self.unloaded_cycles,
            "unloaded_us": us(self.unloaded_cycles),
        }


@dataclass
class CycleReport:
    """Simulated against predicted throughput, and latency per exit."""

    clock_mhz: float
    sequence: int  # samples in the exit sequence
    repeats: int  # times it was repeated
    window: tuple[int, int]  # simulated samples [first, last) the throughput is measured over
    cycles_per_sample: float  # input interval in steady state
    simulated_fps: float
    predicted_fps: float  # the dse model, finite gates
    predicted_fps_unbounded: float  # the dse model, unbounded gates
    stage_cycles: list[int]  # the dse model's per-stage cycles (slowest unit of stage and head)
    predicted_intervals: list[float]  # the dse model's cycles per input, per stage
    reach: list[float]  # p_k of the sequence
    latency: list[ExitLatency]
    seconds: float  # wall time of the simulation
    trace: Trace | None = field(default=None, repr=False)
    # per stage, its slowest unit as simulated: FINN's estimate, or the interval the graph's
    # streams allow where that is longer (forks, adds, FIFOs; ``exitflow.cosim.built._graph_units``)
    simulated_stage_cycles: list[int] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.simulated_fps / self.predicted_fps

    def to_data(self) -> dict:
        return {
            "simulated_fps": round(self.simulated_fps, 3),
            "predicted_fps": round(self.predicted_fps, 3),
            "ratio": round(self.ratio, 4),
            "predicted_fps_unbounded": round(self.predicted_fps_unbounded, 3),
            "clock_mhz": self.clock_mhz,
            "cycles_per_sample": round(self.cycles_per_sample, 3),
            "stage_cycles": self.stage_cycles,
            "simulated_stage_cycles": self.simulated_stage_cycles,
            "predicted_intervals": [round(v, 3) for v in self.predicted_intervals],
            "reach": [round(p, 6) for p in self.reach],
            "sequence_samples": self.sequence,
            "repeats": self.repeats,
            "measured_window": list(self.window),
            "latency": [lat.to_data(self.clock_mhz) for lat in self.latency],
            "seconds": round(self.seconds, 3),
        }

    def summary(self) -> str:
        lat = ", ".join(f"{x.name} {x.mean_cycles / self.clock_mhz:,.1f} us" for x in self.latency if x.samples)
        return (
            f"cycle simulation: {self.simulated_fps:,.1f} samples/s simulated, {self.predicted_fps:,.1f} predicted "
            f"by the dse model (ratio {self.ratio:.3f}); mean latency per exit: {lat}"
        )


def unloaded_latency(pipeline: Pipeline, exit_index: int) -> int:
    """Cycles from stage 0 to the merge's output for one sample alone that takes ``exit_index``."""
    trace = run(pipeline, [exit_index])
    return int(trace.done[0] - trace.accept[0])


# ------------------------------------------------------------------------------ as data


def pipeline_to_data(pipeline: Pipeline) -> dict:
    """The pipeline as JSON-ready data (``driver.json`` carries it to the board)."""
    return {
        "clock_mhz": pipeline.clock_mhz,
        "record_fifo": pipeline.record_fifo,
        "stages": [
            {
                "name": s.name,
                "units": [[u.name, u.cycles, u.estimate] for u in s.units],
                "head": [[u.name, u.cycles, u.estimate] for u in s.head],
                "gate_depth": s.gate_depth,
                "gate_cycles": s.gate_cycles,
            }
            for s in pipeline.stages
        ],
    }


def pipeline_from_data(data: object, where: str) -> Pipeline:
    """The pipeline :func:`pipeline_to_data` wrote, checked; anything else is one
    :class:`ConfigError` naming ``where``."""

    def units(value: object) -> tuple[Unit, ...]:
        if not isinstance(value, list) or not all(
            isinstance(u, list)
            and len(u) == 3
            and isinstance(u[0], str)
            and isinstance(u[1], int)
            and (u[2] is None or isinstance(u[2], int))
            for u in value
        ):
            raise ValueError
        return tuple(Unit(*u) for u in value)

    try:
        if not isinstance(data, dict) or not isinstance(data["stages"], list):
            raise ValueError
        stages = tuple(
            Stage(str(s["name"]), units(s["units"]), units(s["head"]), s["gate_depth"], int(s["gate_cycles"]))
            for s in data["stages"]
        )
        pipeline = Pipeline(stages, float(data["clock_mhz"]), int(data["record_fifo"]))
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{where}: not a pipeline exitflow wrote (stages, units, gates, clock)") from None
    try:
        pipeline.check()
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return pipeline

"""Thresholds set at run time: what a built design does with other exit thresholds, predicted
from its profile.

Each early exit's CTU holds its threshold constant in a register on an AXI-lite port (the
design's constant until written; ``hls_templates/exitflow_ctu.hpp``). Stages are sized for the
traffic the design's thresholds send them, so new thresholds change more than the accuracy: a
later stage that sees more samples may set the pace. :class:`ThresholdModel` answers, for any
thresholds, from the held-out (test) split of the run's profile:

* the exit each sample takes (:func:`exitflow.quant.policies.route`, the function the hardware
  computes), hence the exit fractions and the accuracy against the final exit's;
* the throughput with the built gates and FIFOs: the cycle simulation
  (:func:`exitflow.cosim.cycle.steady_state`) of the built pipeline on that exit sequence;
* which stage sets the pace (the largest ``p_k * T_k``), with a warning when it is not the one
  that sets it at the design's thresholds, or when the throughput falls.

It needs numpy alone: ``exitflow build`` writes it next to the PYNQ driver (``hw/driver.json``
and ``hw/driver.npz``), and the driver (:meth:`exitflow.boards.driver.ExitflowAccelerator.set_thresholds`)
and ``exitflow predict RUN --thresholds`` read it back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exitflow.core.errors import ConfigError
from exitflow.quant import policies

from .cycle import MIN_SAMPLES, Pipeline, pipeline_from_data, pipeline_to_data, steady_state

SLOWER = 0.97  # warn when new thresholds give less than this share of the design's throughput


@dataclass(frozen=True)
class ExitRegister:
    """One early exit's run-time threshold: what the driver needs to turn a float threshold into
    the constant its CTU compares with, and where that CTU sits."""

    name: str  # the model's exit (the block it follows), as the user names it: conv0
    head: str  # the design's head, the block design cell whose AXI-lite port holds the register
    stage: str
    blocks: tuple[str, ...]  # the stage's backbone blocks
    policy: str
    scale: float
    frac_bits: int
    code_bits: int
    threshold: float  # the design's

    def constant(self, threshold: float) -> int:
        """The register's constant for ``threshold``; a threshold out of the policy's range is
        one :class:`ConfigError` line."""
        if not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise ConfigError(f"exit {self.name}: threshold must be a number; got {threshold!r}")
        try:
            return policies.clamped_code(self.policy, float(threshold), self.scale, self.code_bits, self.frac_bits)
        except ValueError as err:
            raise ConfigError(f"exit {self.name}: {err}") from None

    def to_data(self) -> dict:
        return {
            "name": self.name,
            "head": self.head,
            "stage": self.stage,
            "blocks": list(self.blocks),
            "policy": self.policy,
            "scale": self.scale,
            "frac_bits": self.frac_bits,
            "code_bits": self.code_bits,
            "threshold": self.threshold,
        }


@dataclass(frozen=True)
class Prediction:
    """Exit fractions, accuracy and throughput at some thresholds, against the design's."""

    thresholds: dict[str, float]  # per early exit, the design's where not given
    exits: list[str]  # the kept exits, the final one last
    fractions: list[float]
    accuracy: float
    final_accuracy: float  # every sample at the final exit
    fps: float  # cycle simulation, built gates
    design_fps: float  # the same at the design's thresholds
    pace: str  # the stage that sets the pace
    samples: int
    split: str
    warnings: list[str] = field(default_factory=list)

    @property
    def drop_pp(self) -> float:
        return 100.0 * (self.final_accuracy - self.accuracy)

    def lines(self, design: Mapping[str, float] | None = None) -> list[str]:
        """The prediction as text: one row per exit, then accuracy, throughput and warnings;
        ``design``: the design's thresholds, shown beside changed ones."""
        design = design or {}
        width = max(len(n) for n in self.exits)
        rows = [f"{'exit'.ljust(width)}  threshold        fraction"]
        for name, fraction in zip(self.exits, self.fractions, strict=True):
            t = self.thresholds.get(name)
            if t is None:
                shown = "final"
            elif name in design and design[name] != t:
                shown = f"{t:g} (was {design[name]:g})"
            else:
                shown = f"{t:g}"
            rows.append(f"{name.ljust(width)}  {shown.ljust(15)}  {fraction:8.3f}")
        rows.append(
            f"accuracy {100 * self.accuracy:.2f} % (final exit {100 * self.final_accuracy:.2f} %, drop "
            f"{self.drop_pp:.2f} pp) on the {self.split} split's {self.samples} samples"
        )
        rows.append(
            f"throughput {self.fps:,.0f} samples/s with the built gates (design's thresholds: "
            f"{self.design_fps:,.0f}); pace set by {self.pace}"
        )
        return rows + [f"warning: {w}" for w in self.warnings]

    def to_data(self) -> dict:
        return {
            "thresholds": self.thresholds,
            "exits": self.exits,
            "fractions": [round(f, 6) for f in self.fractions],
            "accuracy": round(self.accuracy, 6),
            "final_accuracy": round(self.final_accuracy, 6),
            "drop_pp": round(self.drop_pp, 4),
            "fps": round(self.fps, 3),
            "design_fps": round(self.design_fps, 3),
            "pace": self.pace,
            "samples": self.samples,
            "split": self.split,
            "warnings": self.warnings,
        }


def resolve(
    registers: tuple[ExitRegister, ...], changes: Mapping[str, float | None], final: str | None = None
) -> dict[str, float]:
    """``changes`` keyed by exit name (``conv0``) or head (``exit_conv0``), as exit name ->
    threshold; None is the design's threshold. Each threshold is checked (its register constant
    computed). An unknown exit, an exit given twice or an illegal threshold is one
    :class:`ConfigError` line."""
    by_key = {r.name: r for r in registers} | {r.head: r for r in registers}
    out: dict[str, float] = {}
    for key, value in changes.items():
        reg = by_key.get(key)
        if reg is None:
            known = ", ".join(r.name for r in registers) or "none (the design has no early exit)"
            why = f"; {key} is the final exit, which takes every sample" if key == final else ""
            raise ConfigError(f"unknown exit {key!r}{why}; exits with a threshold: {known}")
        if reg.name in out:
            raise ConfigError(f"exit {reg.name} given twice")
        out[reg.name] = reg.threshold if value is None else value
        reg.constant(out[reg.name])  # checks the range
    return out


@dataclass(frozen=True)
class ThresholdModel:
    """A built design's exits, the profile columns of its kept exits and its pipeline."""

    exits: tuple[ExitRegister, ...]  # the early exits, in cascade order
    final: str  # the final exit's name
    codes: np.ndarray  # (samples, early exits): each early exit's confidence code
    classes: np.ndarray  # (samples, kept exits): each kept exit's class
    labels: np.ndarray  # (samples,)
    pipeline: Pipeline
    split: str = "test"
    # min_samples -> the design's exit sequence and throughput (:meth:`_at_design`)
    _design: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n, early = len(self.labels), len(self.exits)
        if self.codes.shape != (n, early) or self.classes.shape != (n, early + 1) or n == 0:
            raise ConfigError(
                f"threshold model: codes {self.codes.shape}, classes {self.classes.shape} and labels ({n},) "
                f"do not fit {early} early exits"
            )
        if len(self.pipeline.stages) != early + 1:
            raise ConfigError(f"threshold model: {len(self.pipeline.stages)} stages for {early + 1} exits")

    # -- thresholds -> exits -> figures ------------------------------------------------------
    def thresholds(self, changes: Mapping[str, float | None] | None = None) -> dict[str, float]:
        """Every early exit's threshold: the design's, with ``changes`` (by exit or head name;
        None: the design's)."""
        return {e.name: e.threshold for e in self.exits} | resolve(self.exits, changes or {}, self.final)

    def constants(self, changes: Mapping[str, float | None] | None = None) -> list[int]:
        t = self.thresholds(changes)
        return [e.constant(t[e.name]) for e in self.exits]

    def taken(self, changes: Mapping[str, float | None] | None = None) -> np.ndarray:
        """The exit each profiled sample takes at these thresholds."""
        if not self.exits:
            return np.zeros(len(self.labels), dtype=np.int64)
        codes = np.concatenate([self.codes, np.zeros((len(self.codes), 1), dtype=self.codes.dtype)], axis=1)
        return policies.route([e.policy for e in self.exits], codes, self.constants(changes), self.classes)

    def _at_design(self, min_samples: int) -> tuple[np.ndarray, float]:
        """The design's exit sequence and its simulated throughput, computed once per
        ``min_samples`` (every prediction compares with them)."""
        if min_samples not in self._design:
            taken = self.taken()
            self._design[min_samples] = (taken, steady_state(self.pipeline, taken, min_samples).fps)
        return self._design[min_samples]

    def _pace(self, taken: np.ndarray) -> int:
        """The stage with the most work per input sample: reach times its slowest unit."""
        loads = [np.mean(taken >= k) * s.slowest for k, s in enumerate(self.pipeline.stages)]
        return int(np.argmax(loads))

    def _stage_label(self, k: int) -> str:
        stage = self.pipeline.stages[k]
        blocks = self.exits[k].blocks if k < len(self.exits) else ()
        return f"{stage.name} ({', '.join(blocks)})" if blocks else stage.name

    def predict(self, changes: Mapping[str, float | None] | None = None, min_samples: int = MIN_SAMPLES) -> Prediction:
        """Exit fractions, accuracy and throughput at the design's thresholds with ``changes``."""
        thresholds = self.thresholds(changes)
        taken = self.taken(changes)
        design_taken, design_fps = self._at_design(min_samples)
        n = len(taken)
        rows = np.arange(n)
        accuracy = float(np.mean(self.classes[rows, taken] == self.labels))
        final_accuracy = float(np.mean(self.classes[:, -1] == self.labels))
        fps = design_fps if np.array_equal(taken, design_taken) else steady_state(self.pipeline, taken, min_samples).fps
        pace, design_pace = self._pace(taken), self._pace(design_taken)
        warnings = []
        if pace != design_pace or fps < SLOWER * design_fps:
            warnings.append(
                f"{self._stage_label(pace)} would set the pace: {fps:,.0f} samples/s predicted against "
                f"{design_fps:,.0f} at the design's thresholds (it was sized for the traffic those send it)"
            )
        names = [e.name for e in self.exits] + [self.final]
        return Prediction(
            thresholds=thresholds,
            exits=names,
            fractions=(np.bincount(taken, minlength=len(names)) / n).tolist(),
            accuracy=accuracy,
            final_accuracy=final_accuracy,
            fps=fps,
            design_fps=design_fps,
            pace=self._stage_label(pace),
            samples=n,
            split=self.split,
            warnings=warnings,
        )

    # -- files -----------------------------------------------------------------------------------
    def to_data(self) -> dict:
        """The JSON part (``driver.json``'s ``prediction``); the arrays go to :meth:`arrays`."""
        return {"final": self.final, "split": self.split, "pipeline": pipeline_to_data(self.pipeline)}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"codes": self.codes, "classes": self.classes, "labels": self.labels}

    def save(self, driver_json: Path) -> None:
        """The arrays beside ``driver_json`` (``driver.npz``); ``driver.json`` takes
        :meth:`to_data` under ``prediction`` and the registers under ``registers``."""
        np.savez_compressed(driver_json.with_suffix(".npz"), **self.arrays())

    @classmethod
    def load(cls, driver_json: str | Path) -> ThresholdModel:
        """From ``driver.json`` and the arrays beside it (``driver.npz``); every problem is one
        :class:`ConfigError` line naming the file."""
        driver_json = Path(driver_json)
        data = _read_driver(driver_json)
        exits = _registers(data, driver_json)
        arrays = driver_json.with_suffix(".npz")
        try:
            prediction = data["prediction"]
            final, split = str(prediction["final"]), str(prediction["split"])
            pipeline_data = prediction["pipeline"]
        except (KeyError, TypeError):
            why = data.get("no_prediction")
            raise ConfigError(
                f"{driver_json}: holds no prediction ({why or 'the run had no profile when it was built'}); "
                f"run `exitflow profile` and `exitflow build` again"
            ) from None
        pipeline = pipeline_from_data(pipeline_data, str(driver_json))
        try:
            with np.load(arrays, allow_pickle=False) as npz:
                codes, classes, labels = (npz[k] for k in ("codes", "classes", "labels"))
        except FileNotFoundError:
            raise ConfigError(f"{arrays}: not found; {AGAIN}") from None
        except Exception as err:  # noqa: BLE001 (zipfile, zlib, numpy format errors of a damaged file)
            raise ConfigError(
                f"{arrays}: unreadable, truncated or not the driver's arrays ({type(err).__name__}); {AGAIN}"
            ) from None
        if any(a.dtype.kind not in "iu" for a in (codes, classes, labels)) or codes.ndim != 2 or classes.ndim != 2:
            raise ConfigError(f"{arrays}: codes, classes and labels must be integer tables; {AGAIN}")
        try:
            return cls(exits, final, codes, classes, labels, pipeline, split)
        except ConfigError as err:
            raise ConfigError(f"{arrays}: {err}; {AGAIN}") from None


AGAIN = "run `exitflow build` again (it writes driver.json and driver.npz)"


def _read_driver(driver_json: Path) -> dict:
    """``driver.json``, parsed; a missing or damaged file is one :class:`ConfigError` line."""
    try:
        data = json.loads(driver_json.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{driver_json}: not found; {AGAIN}") from None
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict):
        raise ConfigError(f"{driver_json}: not a driver file with threshold registers exitflow wrote; {AGAIN}")
    return data


def load_registers(driver_json: str | Path) -> tuple[ExitRegister, ...]:
    """The early exits' registers in ``driver.json`` (``registers``), checked."""
    driver_json = Path(driver_json)
    return _registers(_read_driver(driver_json), driver_json)


def _registers(data: dict, driver_json: Path) -> tuple[ExitRegister, ...]:
    try:
        exits = tuple(
            ExitRegister(
                str(e["name"]),
                str(e["head"]),
                str(e["stage"]),
                tuple(str(b) for b in e["blocks"]),
                str(e["policy"]),
                float(e["scale"]),
                int(e["frac_bits"]),
                int(e["code_bits"]),
                float(e["threshold"]),
            )
            for e in data["registers"]
        )
    except (ValueError, KeyError, TypeError):
        raise ConfigError(
            f"{driver_json}: not a driver file with threshold registers exitflow wrote; {AGAIN}"
        ) from None
    for e in exits:
        if e.policy not in policies.POLICIES or not 0 < e.code_bits <= 64 or not e.scale > 0:
            raise ConfigError(f"{driver_json}: exit {e.name} has a bad policy, scale or code width; {AGAIN}")
    return exits


def profile_columns(arrays: Mapping[str, np.ndarray], design, split: str, where: str) -> tuple[np.ndarray, ...]:
    """The profile's (``exitflow.quant.profile.load_profile``) columns of ``design``'s kept exits on
    ``split``: (codes of the early exits under their policies, classes of every kept exit, labels,
    the early exits' column indices). An early exit is named by the last block of its stage."""
    names = [str(n) for n in arrays["exit_names"]]
    early = design.stages[:-1]
    missing = [s.blocks[-1] for s in early if s.blocks[-1] not in names]
    if missing:
        raise ConfigError(
            f"{where}: the design's exits {', '.join(missing)} are not among the profiled exits {', '.join(names)}; "
            "profile the run the design was made for"
        )
    columns = [names.index(s.blocks[-1]) for s in early]
    n = len(arrays[f"{split}_labels"])
    codes = np.zeros((n, len(early)), dtype=np.int64)
    for k, (stage, j) in enumerate(zip(early, columns, strict=True)):
        codes[:, k] = arrays[f"{split}_code_{stage.head.policy}"][:, j]
    # the final exit's class: the last profiled exit's, which every sample left over takes
    classes = arrays[f"{split}_pred"][:, [*columns, len(names) - 1]].astype(np.int64)
    return codes, classes, arrays[f"{split}_labels"].astype(np.int64), columns

"""The files that pass between exitflow's steps, one frozen dataclass each, and the run folder that
holds them.

Every file here is written by one step and read by later ones (or by the user); each is read and
written through its dataclass with the strict schema loader (:mod:`exitflow.core.schema`), so a
damaged, truncated or foreign file is one line naming the file, the key and the fix, never a
``KeyError`` three modules away.

==========================  ======================  ==========================================
file                        dataclass               written by -> read by
==========================  ======================  ==========================================
``hw/stages/manifest.json``  :class:`ExportManifest`  export -> build, QONNX execution
``hw/<graph>/layers.json``   :class:`LayerMap`        build -> sweep (inventory), cosim
``hw/build.json``            :class:`BuildSummary`    build -> Vivado project, cosim, report
``sweep/pareto.json``        :class:`ParetoReport`    sweep -> run, report, benchmarks
``sweep/design.yaml``        :class:`~exitflow.core.design.Design` (``load_design``/``save_design``)
==========================  ======================  ==========================================

:class:`RunDir` owns the paths of a run folder: every module asks it where a file lives instead
of joining names of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from exitflow.core.files import user_path
from exitflow.core.resources import Resources
from exitflow.core.schema import FieldError, FrozenMap, load_json_file, write_json_file

# ---------------------------------------------------------------------------- the export manifest


@dataclass(frozen=True, kw_only=True)
class WeightLayer:
    """FINN's matrix view of one weight layer: ``mw`` inputs (Cin*k*k for a convolution) by ``mh``
    outputs, ``wbits``-bit weights; ``cin`` (input channels) for a convolution only. A depthwise
    convolution (FINN's VVAU) has ``depthwise`` set, ``mw`` = k*k (each channel's window) and
    ``mh`` = the channels. ``name`` is the folding key: a block name (built-in backbone; with
    ``.module`` where a block has several layers), a module name (custom backbone), or
    ``hidden``/``classifier`` in a head."""

    name: str
    mw: int
    mh: int
    cin: int | None = field(default=None, metadata={"omit_none": True})
    wbits: int
    depthwise: bool | None = field(default=None, metadata={"omit_none": True})

    @property
    def signature(self) -> tuple[str, int, int]:
        """(kind, inputs per output, outputs): how the build finds the layer's node in FINN's
        graph (:func:`exitflow.hw.finn_flow.layer_signature`)."""
        return ("depthwise" if self.depthwise else "matrix", self.mw, self.mh)

    def __post_init__(self) -> None:
        for key in ("mw", "mh", "wbits"):
            if getattr(self, key) < 1:
                raise FieldError(key, f"must be a positive integer; got {getattr(self, key)}")


@dataclass(frozen=True, kw_only=True)
class StageFile:
    """One exported stage: the backbone blocks between two kept exits."""

    file: str
    blocks: tuple[str, ...]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    layers: tuple[WeightLayer, ...]


@dataclass(frozen=True, kw_only=True)
class HeadFile:
    """One exported exit head: its integer logits are ``scale`` times the graph's output."""

    file: str
    exit: str
    scale: float
    logit_bits: int
    num_classes: int
    layers: tuple[WeightLayer, ...]


@dataclass(frozen=True, kw_only=True)
class ExportManifest:
    """``stages/manifest.json``: the QONNX files of the kept exits (the final one last), stage k
    and head k each."""

    FILE = "manifest.json"

    exits: tuple[str, ...]
    stages: tuple[StageFile, ...]
    heads: tuple[HeadFile, ...]

    def __post_init__(self) -> None:
        if not len(self.exits) == len(self.stages) == len(self.heads):
            raise FieldError(
                "stages",
                f"{len(self.exits)} exits need as many stages and heads; got {len(self.stages)} and {len(self.heads)}",
            )

    @classmethod
    def read(cls, folder: str | Path, fix: str = "export the stages again (exitflow export)") -> ExportManifest:
        return load_json_file(cls, Path(folder) / cls.FILE, fix)

    def write(self, folder: str | Path) -> Path:
        return write_json_file(self, Path(folder) / self.FILE)


# ---------------------------------------------------------------------------- layers.json


@dataclass(frozen=True, kw_only=True)
class LayerMap:
    """``hw/<graph>/layers.json``: which FINN node each of the model's weight layers became, and
    how the graph's integer input stream is typed and scaled (the first stage only)."""

    FILE = "layers.json"

    layers: FrozenMap[str, str]
    input_datatype: str = ""
    input_scale: float = 1.0

    def __post_init__(self) -> None:
        for layer, node in self.layers.items():
            if not node:
                raise FieldError(f"layers.{layer}", "must name a FINN node; got ''")
        if len(set(self.layers.values())) != len(self.layers):
            raise FieldError("layers", "two layers name the same FINN node")

    @classmethod
    def read(cls, folder: str | Path, fix: str) -> LayerMap:
        return load_json_file(cls, Path(folder) / cls.FILE, fix)

    def write(self, folder: str | Path) -> Path:
        return write_json_file(self, Path(folder) / self.FILE)


# ---------------------------------------------------------------------------- build.json


@dataclass(frozen=True, kw_only=True)
class GraphReport:
    """One built FINN graph (a stage or a head): FINN's resource estimates added up over its
    nodes, its slowest node's cycles and its node count."""

    name: str
    kind: Literal["stage", "head"]
    lut: float
    ff: float
    bram18: int
    uram: int
    dsp: int
    interval_cycles: int  # slowest node
    nodes: int

    @property
    def resources(self) -> Resources:
        return Resources(self.lut, self.bram18, self.uram, self.dsp)


@dataclass(frozen=True, kw_only=True)
class GateCheck:
    """Whether a gate's FIFO (``fifo_words`` stream words) covers its head's decision latency."""

    stage: str
    fifo_words: int
    head_latency_cycles: int
    covers: bool


@dataclass(frozen=True, kw_only=True)
class BitfileStatus:
    """What the Vivado half of the build needs, what this machine lacks, and the command to run
    where the tools are."""

    tools: str
    missing: tuple[str, ...]
    project: str
    command: str


@dataclass(frozen=True, kw_only=True)
class BuildSummary:
    """``hw/build.json``, written last, atomically: its presence says the build finished."""

    FILE = "build.json"

    design: str  # the design YAML built (absolute path)
    board: str
    part: str
    gates: tuple[GateCheck, ...]
    clock_mhz: float
    input_shape: tuple[int, ...]
    graphs: tuple[GraphReport, ...]
    bitfile: BitfileStatus

    @classmethod
    def read(cls, hw: str | Path, fix: str) -> BuildSummary:
        return load_json_file(cls, Path(hw) / cls.FILE, fix)

    def write(self, hw: str | Path) -> Path:
        return write_json_file(self, Path(hw) / self.FILE)


# ---------------------------------------------------------------------------- pareto.json


@dataclass(frozen=True, kw_only=True)
class DesignPoint:
    """One design of the search, as ``pareto.json`` lists it: exits by name, validation accuracy,
    resources (LUT, BRAM18, URAM, DSP), the interval target, the fraction of samples reaching
    each stage, and latencies to each kept exit."""

    exits: tuple[str, ...]
    thresholds: tuple[float, ...]
    fps: float
    val_accuracy: float
    lut: float
    bram18: float
    uram: float
    dsp: float
    interval_cycles: float
    reach: tuple[float, ...]
    gate_depth: int | None  # None without early exits (no gates)
    headroom: float | None
    latency_cycles_to_exit: tuple[int, ...]
    latency_us_to_exit: tuple[float, ...]
    mean_latency_cycles: float
    mean_latency_us: float
    # the accuracy floor (dse.risk): drops in percentage points below the final exit on each
    # split, the p-value of the fixed-sequence test (None: not tested) and what the design is
    # certified to keep (None: not certified, or no certificate asked for: --confidence 1)
    val_drop_pp: float | None = None
    test_drop_pp: float | None = None
    policy: str | None = None  # the exit policy of its early exits (None: no early exits)
    p_value: float | None = None
    certified_at: str | None = None

    @property
    def resources(self) -> Resources:
        return Resources(self.lut, self.bram18, self.uram, self.dsp)


@dataclass(frozen=True, kw_only=True)
class ChosenDesign(DesignPoint):
    """The chosen design, with what the search found out about it beyond the front's figures."""

    test_accuracy: float
    fps_with_gates: float
    fps_with_gates_on_test_traffic: float | None
    gain_with_gates: float
    stage_resources: tuple[Resources, ...]  # each stage with its head
    active_bound: str  # what keeps it from being faster
    fps_if_reach_minus_5pp: float
    fps_if_reach_plus_5pp: float
    # the StreamingFIFOs of each stage with its head as the build sizes them (in stage_resources)
    stage_fifos: tuple[Resources, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class FrontDesign(DesignPoint):
    active_bound: str


@dataclass(frozen=True, kw_only=True)
class EqualThroughputDesign(DesignPoint):
    """The cheapest design with exits (LUTs) reaching the no-exit design's throughput with its
    finite gates."""

    fps_with_gates: float
    lut_fraction: float  # its LUTs over the no-exit design's


@dataclass(frozen=True, kw_only=True)
class SetFoldingPoint:
    """FINN's SetFolding at one target, judged by FINN's estimator (:mod:`exitflow.dse.finn_baseline`)."""

    target_cycles: int
    fps: float
    lut: float
    bram18: float
    uram: float
    dsp: float
    fits: bool
    buildable: bool
    why_not_buildable: str | None

    @property
    def resources(self) -> Resources:
        return Resources(self.lut, self.bram18, self.uram, self.dsp)


@dataclass(frozen=True, kw_only=True)
class CertificateSummary:
    """How the accuracy floor was certified (:mod:`exitflow.dse.risk`): with probability at least
    ``confidence`` over the draw of the validation data, every certified design keeps ``floor``."""

    confidence: float
    floor: str  # e.g. "drop <= 1 pp below the final exit"
    method: str
    ordering_samples: int  # validation samples that ordered the hypotheses
    testing_samples: int  # validation samples that tested them
    tested: int  # threshold configurations tested, in order, until the first not rejected
    certified: int  # threshold configurations certified
    configurations: int  # threshold configurations with at least one design that fits


@dataclass(frozen=True, kw_only=True)
class ParetoReport:
    """``sweep/pareto.json``: the chosen design, the baselines under the same budget, and the front."""

    FILE = "pareto.json"

    board: str
    utilisation_cap: float
    budget: Resources
    chosen: ChosenDesign
    no_exit_baseline: DesignPoint
    equal_throughput: EqualThroughputDesign | None
    gain_vs_no_exit: float
    final_exit_test_accuracy: float
    finn_setfolding_baseline: SetFoldingPoint | None
    gain_vs_finn_setfolding: float | None
    front: tuple[FrontDesign, ...]
    certificate: CertificateSummary | None = None  # None: the floor was a point estimate (--confidence 1)

    @classmethod
    def read(cls, sweep: str | Path, fix: str) -> ParetoReport:
        return load_json_file(cls, Path(sweep) / cls.FILE, fix)

    def write(self, sweep: str | Path) -> Path:
        return write_json_file(self, Path(sweep) / self.FILE)


# ---------------------------------------------------------------------------- the run folder


@dataclass(frozen=True)
class RunDir:
    """The paths of one run folder (made absolute once, here: FINN resolves relative folders
    against its own config folder). The layout, by the step that writes it::

        train    model.pt  checkpoint.pt  config.yaml  train_log.json
        profile  profile.npz  profile.json  profile.png
        sweep    sweep/{pareto.json, pareto.png, resources.png, design.yaml, inventory/, finn_baseline/}
        export   stages/ (exitflow export)
        build    hw/{build.json, stages/, <graph>/, vivado/, deploy/, driver.json}
        cosim    cosim/report.json
        report   report.html
        run      run.json (the step records of `exitflow run`), log/
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", user_path(self.root))

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    def __fspath__(self) -> str:
        return str(self.root)

    def __str__(self) -> str:
        return str(self.root)

    # train
    @property
    def model(self) -> Path:
        return self.root / "model.pt"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def train_log(self) -> Path:
        return self.root / "train_log.json"

    # profile
    @property
    def profile(self) -> Path:
        return self.root / "profile.npz"

    @property
    def profile_summary(self) -> Path:
        return self.root / "profile.json"

    @property
    def profile_plot(self) -> Path:
        return self.root / "profile.png"

    # sweep
    @property
    def sweep(self) -> Path:
        return self.root / "sweep"

    @property
    def pareto(self) -> Path:
        return self.sweep / ParetoReport.FILE

    @property
    def design(self) -> Path:
        """The design the sweep chose, which build and cosim take unless given another."""
        return self.sweep / "design.yaml"

    @property
    def inventory(self) -> Path:
        return self.sweep / "inventory"

    # build
    @property
    def hw(self) -> Path:
        return self.root / "hw"

    @property
    def build_summary(self) -> Path:
        return self.hw / BuildSummary.FILE

    @property
    def stages(self) -> Path:
        return self.hw / "stages"

    @property
    def vivado(self) -> Path:
        return self.hw / "vivado"

    @property
    def deploy(self) -> Path:
        """The bitfile and its ``.hwh`` (``hw/vivado/make_bitfile.sh`` writes them)."""
        return self.hw / "deploy"

    @property
    def driver(self) -> Path:
        """The record format the PYNQ driver reads (:mod:`exitflow.boards.driver`)."""
        return self.hw / "driver.json"

    # export
    @property
    def exported(self) -> Path:
        """``exitflow export``'s stage and head files (the build exports its own into ``hw/stages``)."""
        return self.root / "stages"

    # cosim, report, run
    @property
    def cosim_report(self) -> Path:
        return self.root / "cosim" / "report.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def run_record(self) -> Path:
        return self.root / "run.json"

    @property
    def log(self) -> Path:
        return self.root / "log"

    def read_pareto(self) -> ParetoReport:
        return ParetoReport.read(self.sweep, f"run `exitflow sweep {self.root}` again")

    def read_build(self, hw: Path | None = None) -> BuildSummary:
        return BuildSummary.read(hw or self.hw, f"run `exitflow build {self.root}` again")


__all__ = [
    "BitfileStatus",
    "BuildSummary",
    "ChosenDesign",
    "DesignPoint",
    "EqualThroughputDesign",
    "ExportManifest",
    "FrontDesign",
    "GateCheck",
    "GraphReport",
    "HeadFile",
    "LayerMap",
    "ParetoReport",
    "RunDir",
    "SetFoldingPoint",
    "StageFile",
    "WeightLayer",
]

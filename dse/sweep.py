"""``exitflow sweep``: search a trained, profiled run for the best multi-exit design on a board.

1. Build the design that keeps every candidate exit (each segment its own stage) into
   ``DIR/sweep/inventory`` and inventory its stages and heads (FINN's estimates, once).
2. Route every threshold configuration (exits kept, a threshold per exit) on the validation
   split's profile, certify the accuracy floor over them (:class:`AccuracyFloor`), and search
   the interval targets and foldings of those that keep it (:mod:`exitflow.dse.search`) under
   the board's resources after the shell, times the utilisation cap.
3. Keep the Pareto front, pick the design for the objective under the accuracy floor, check its
   gates against bursts of hard samples (:mod:`exitflow.dse.throughput`), count the FIFOs of the
   designs it reports as the build sizes them (:mod:`exitflow.dse.fifo_pricing`), report the test split.
   Baselines, same budget: (a) the best design without early exits (from the same search);
   (b) FINN's SetFolding without exits, judged by FINN's estimator (:mod:`exitflow.dse.finn_baseline`).
4. Write ``DIR/sweep/pareto.json``, ``pareto.png``, ``resources.png`` and ``design.yaml``
   (loadable by ``exitflow build``).
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from exitflow.core.artifacts import (
    BuildSummary,
    CertificateSummary,
    ChosenDesign,
    DesignPoint,
    EqualThroughputDesign,
    FrontDesign,
    ParetoReport,
    RunDir,
    SetFoldingPoint,
)
from exitflow.core.catalogue import get_board
from exitflow.core.design import MAX_EARLY_EXITS, OBJECTIVES, POLICIES, Design, ExitHead, Stage, kept_exits, save_design
from exitflow.core.errors import ConfigError, ExitflowError
from exitflow.core.files import atomic_write
from exitflow.core.resources import LABELS, Resources
from exitflow.core.schema import FrozenMap, dump_yaml
from exitflow.dse import finn_model
from exitflow.hls_templates.registry import register_finn_ops
from exitflow.hw import finn_flow
from exitflow.hw.build import build
from exitflow.hw.folding import stream_words
from exitflow.quant.policies import route, threshold_code

from . import risk
from .fifo_pricing import ATTEMPTS as PRICING_ATTEMPTS
from .fifo_pricing import FifoPricer
from .finn_baseline import finn_setfolding_baseline
from .search import (
    Candidate,
    GraphCost,
    SearchSpace,
    Segment,
    ValidationProfile,
    active_bound,
    configurations,
    cost,
    graph_cost,
    pareto,
    route_counts,
    routing_cost,
)
from .throughput import sensitivity, stage_level_fps

MAX_PROB_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)
GATE_DEPTH = 8  # feature maps each gate holds in the inventory build
GATE_DEPTHS = (2, 4, 8)  # gate depths the search tries (deeper ones: only for the chosen design)
HEADROOMS = (1.0, 1.25, 1.5)  # stages after the first sized for min(1, h * p_s) of the samples (dse.search)
DEEPER_GATES = (4, 8, 16, 32, 64, 128)  # what the chosen design's gates may grow to while that pays
INVENTORY_DESIGN = "inventory_design.yaml"  # in sweep/: the design the inventory was built from


@dataclass(frozen=True)
class SweepResult:
    chosen: Candidate
    no_exit: Candidate
    front: list[Candidate]
    gain: float  # chosen fps / best no-exit fps under the same budget
    test_accuracy: float
    final_test_accuracy: float
    fps_with_gates: float
    bound: str  # what keeps the chosen design from being faster
    sensitivity: dict  # fps when every p_k moves by -5 / +5 percentage points
    budget: Resources  # available to the design
    finn_baseline: SetFoldingPoint | None  # FINN's SetFolding without exits, judged by FINN's estimator
    front_bounds: list = field(default_factory=list)  # active bound of each front design
    candidates: list = field(default_factory=list, repr=False)  # every design that fits
    finn_points: list[SetFoldingPoint] = field(default_factory=list, repr=False)  # SetFolding at every target
    search_stats: dict = field(default_factory=dict)  # seconds, designs evaluated
    gate_depth: int = GATE_DEPTH  # feature maps each gate of the chosen design holds
    # the cheapest design with exits (in LUTs) that reaches the no-exit design's throughput with
    # its finite gates, and that throughput; None when none does
    equal_throughput: Candidate | None = None
    equal_throughput_fps: float | None = None
    fps_with_gates_test: float | None = None  # the chosen design with its gates on the test split's exit sequence
    report: ParetoReport | None = field(default=None, repr=False)  # what the sweep wrote to pareto.json
    floor: AccuracyFloor | None = field(default=None, repr=False)  # which designs keep the accuracy floor

    @property
    def gain_with_gates(self) -> float:
        """The chosen design's throughput with its finite gates over the best without exits."""
        return self.fps_with_gates / self.no_exit.fps


def sweep(
    run_dir: str | Path,
    board_name: str,
    objective: str = "throughput",
    min_accuracy: float | None = None,
    max_drop_pp: float | None = 1.0,
    util: float = 0.85,
    policy: str | tuple[str, ...] = "max_prob",
    max_exits: int = 3,
    max_latency_us: float | None = None,
    confidence: float = risk.DEFAULT_CONFIDENCE,
    log=print,
    exhaustive: bool = False,
) -> SweepResult:
    """Search the run for the best multi-exit design on the board and write ``sweep/`` (the steps
    are the module's). With ``confidence`` below 1, the chosen design keeps the accuracy floor
    with that probability over the draw of the validation data (:mod:`exitflow.dse.risk`); at 1,
    the floor is met on the validation split (a point estimate). Only the threshold
    configurations keeping the floor are costed, since only they can be chosen or shown on the
    front; ``exhaustive`` costs every one (the reference that search is tested against; the same
    result, at a time and memory that grow with every design that fits)."""
    run = RunDir(run_dir)
    policies = _check_options(util, objective, max_exits, confidence, policy)
    board = get_board(board_name)
    config, model, prof = _load_run(run)
    budget = Resources.of(board.available).scaled(util)
    limits = np.array(budget)  # the budget as the vectorised search takes it
    segments = _inventory(run, model, config.model.backbone, board, limits, log)
    show = sys.stderr.isatty()  # progress bars on a terminal only
    candidates, floor, stats = _search_designs(
        segments,
        prof,
        policies,
        board.clock_mhz,
        limits,
        max_exits,
        show,
        exhaustive,
        _Floor(min_accuracy, max_drop_pp, confidence, log),
    )
    eligible, no_exit = _eligible(candidates, floor, max_latency_us, board.name, util, model.exit_names)
    gates = GateSimulator(prof, segments, board.clock_mhz, show)
    pricer = FifoPricer(run, segments, lambda c: _design(c, segments, config.model.backbone, board, c.gate_depth))
    log("sizing the FIFOs of the designs to report (exitflow's FINN steps, no code generation)")
    s = _select(eligible, no_exit, objective, segments, limits, gates, pricer, log)
    front = pareto([c for c in candidates if not c.exits or floor.admits(c)])
    log("judging FINN's SetFolding on the network without exits")
    finn_best, finn_points = finn_setfolding_baseline(run.root, model, config, board, budget, run.sweep)
    result = SweepResult(
        chosen=s.chosen,
        no_exit=s.no_exit,
        front=front,
        gain=s.chosen.fps / s.no_exit.fps,
        test_accuracy=s.test_accuracy,
        final_test_accuracy=float(prof["test_correct"][:, -1].mean()),
        fps_with_gates=s.fps_with_gates,
        bound=active_bound(s.chosen, segments, budget, gate_depth=s.chosen.gate_depth),
        sensitivity=sensitivity(np.array(s.chosen.reach), list(s.chosen.stage_cycles), board.clock_mhz),
        budget=budget,
        finn_baseline=SetFoldingPoint(**finn_best) if finn_best else None,
        front_bounds=[active_bound(c, segments, budget) for c in front],
        candidates=list(candidates),
        finn_points=[SetFoldingPoint(**p) for p in finn_points],
        search_stats={
            **stats,
            "selection_seconds": s.seconds,
            "simulations": s.simulations,
            "fifo_builds": pricer.builds,
            "fifo_seconds": round(pricer.seconds, 1),
        },
        gate_depth=s.chosen.gate_depth,
        equal_throughput=s.equal_throughput,
        equal_throughput_fps=s.equal_throughput_fps,
        fps_with_gates_test=s.fps_with_gates_test,
        floor=floor,
    )
    result = replace(result, report=_pareto_report(result, model.exit_names, board, util))
    _write(run, result, segments, config.model.backbone, board)
    return result


# ---------------------------------------------------------------------------- inventory


def _check_options(util: float, objective: str, max_exits: int, confidence: float, policy) -> tuple[str, ...]:
    """The options checked (one line each for a bad one); returns the exit policies to search."""
    policies = (policy,) if isinstance(policy, str) else tuple(policy)
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies or len(set(policies)) != len(policies):
        raise ConfigError(
            f"--policies: must be distinct exit policies from {', '.join(POLICIES)}; "
            f"got {', '.join(policies) or 'none'}"
        )
    if not 0.0 < confidence <= 1.0:
        raise ConfigError(f"--confidence: must be in (0, 1] (e.g. 0.9; 1 keeps the point estimate); got {confidence}")
    if not 0.0 < util <= 1.0:
        raise ConfigError(f"--util: must be in (0, 1]; got {util}")
    if objective not in OBJECTIVES:
        raise ConfigError(f"--objective: must be {' or '.join(OBJECTIVES)}; got {objective!r}")
    if isinstance(max_exits, bool) or not isinstance(max_exits, int) or max_exits < 0:
        raise ConfigError(f"--max-exits: must be an integer >= 0 (early exits per design); got {max_exits!r}")
    if max_exits > MAX_EARLY_EXITS:
        raise ConfigError(
            f"--max-exits: at most {MAX_EARLY_EXITS} (the block design reaches each early exit's threshold register "
            f"through one control interconnect); got {max_exits}"
        )
    return policies


def _load_run(run: RunDir):
    """(run configuration, trained model, profile) of the run, the profile checked against the
    model's exits."""
    # torch: when the sweep runs, not when the command line loads dse.sweep (quant.profile too)
    from exitflow.quant import checkpoint as ckpt
    from exitflow.quant.profile import load_profile

    config, model, _ = ckpt.load_model(run.root)
    prof = load_profile(run.root)  # checked: one line for a missing, damaged or foreign file
    if list(prof["exit_names"]) != list(model.exit_names):
        raise ConfigError(
            f"{run.profile}: profiled exits {list(prof['exit_names'])} are not the model's "
            f"{model.exit_names}; run `exitflow profile {run.root}` again"
        )
    return config, model, prof


def _segments_design(model, backbone: str, board_name: str) -> Design:
    """The design keeping every candidate exit, each segment its own stage ``seg<k>`` with head
    ``head<k>``."""
    exits = model.exit_names
    stages = []
    for k, blocks in enumerate(model.stage_blocks(exits)):
        last = k == len(exits) - 1
        head = ExitHead(name=f"head{k}", threshold=None if last else 0.9)
        stages.append(Stage(name=f"seg{k}", blocks=tuple(blocks), head=head, gate_depth=None if last else GATE_DEPTH))
    return Design(model=backbone, board=board_name, stages=tuple(stages))


def _inventory(run: RunDir, model, backbone: str, board, limits: np.ndarray, log) -> list[Segment]:
    """Build the design keeping every candidate exit into ``sweep/inventory`` (again only when its
    design, exitflow's FINN flow or the model changed) and inventory its stages and heads."""
    run.sweep.mkdir(parents=True, exist_ok=True)
    design = _segments_design(model, backbone, board.name)
    text = dump_yaml(design, set_only=True) + f"# built by exitflow's FINN flow {_flow_digest()}\n"
    path, built = run.sweep / INVENTORY_DESIGN, run.inventory / BuildSummary.FILE
    fresh = (
        path.exists()
        and path.read_text() == text
        and built.exists()
        and built.stat().st_mtime >= run.model.stat().st_mtime
    )
    if not fresh:
        atomic_write(path, lambda tmp: tmp.write_text(text))
        log("building every candidate stage and head once to take FINN's estimates")
        build(run.root, path, log=lambda line: None, hw_dir=run.inventory, vivado_project=None, codegen=False)
    return [
        Segment(
            model.exit_names[k],
            stage.blocks,
            graph_cost(run.inventory / stage.name, board.part, limits),
            graph_cost(run.inventory / stage.head.name, board.part, limits),
            *_streams(run.inventory, k),
        )
        for k, stage in enumerate(design.stages)
    ]


def _flow_digest() -> str:
    """A digest of exitflow's FINN step list and the folding rules it applies from the model
    (window and pooling folds): an inventory built by another flow is built again."""
    return hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (finn_flow, finn_model))).hexdigest()[:16]


def _streams(inventory: Path, k: int) -> tuple[int, int, int]:
    """(output stream width, words per feature map) of segment k, its head's record width, and
    the PE of its last unit when that is a weight layer (else 0)."""
    # qonnx: heavy, and needed only once the inventory is built
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    register_finn_ops()

    node = ModelWrapper(str(inventory / f"seg{k}" / "model_hw.onnx")).graph.node[-1]
    last = getCustomOp(node)
    ctu = getCustomOp(ModelWrapper(str(inventory / f"head{k}" / "model_hw.onnx")).graph.node[-1])
    pe = last.get_nodeattr("PE") if node.op_type.startswith("MVAU") else 0
    width, words = last.get_outstream_width(), stream_words(last)
    if node.op_type.startswith("Pool"):  # its fold follows the design's folding: counted at its widest
        scale = last.get_nodeattr("Channels") // last.get_nodeattr("PE")
        width, words = width * scale, words // scale
    return width, words, ctu.get_outstream_width(), pe


# ---------------------------------------------------------------------------- search


@dataclass(frozen=True)
class _Floor:
    """The accuracy floor as the sweep was asked for it."""

    min_accuracy: float | None
    max_drop_pp: float | None
    confidence: float
    log: Callable


def _search_designs(
    segments,
    prof,
    policies,
    clock_mhz: float,
    limits: np.ndarray,
    max_exits: int,
    show: bool,
    exhaustive: bool,
    asked: _Floor,
):
    """(the designs that fit ``limits`` and may be chosen or shown, the accuracy floor, the
    search's stats: seconds, designs evaluated, candidate exits, threshold configurations found,
    skipped and costed) on the validation split's profile.

    The threshold configurations are routed and the floor certified before any is costed
    (:func:`~exitflow.dse.search.configurations`, :class:`AccuracyFloor`): only those keeping the
    floor, and the designs without early exits, are costed, since no other design can be chosen
    or shown on the front. ``exhaustive`` costs every configuration (the reference the streamlined
    search is tested against; its time and memory grow with every design that fits)."""
    space = SearchSpace(
        tuple(policies),
        MAX_PROB_THRESHOLDS,
        limits,
        clock_mhz,
        max_exits=max_exits,
        gate_depths=GATE_DEPTHS,
        headrooms=HEADROOMS,
    )
    profile = ValidationProfile(
        {p: prof[f"val_code_{p}"] for p in policies}, prof["val_correct"], prof["scales"], prof["val_pred"]
    )
    stats: dict = {"candidate_exits": len(segments) - 1}
    started = time.perf_counter()
    routings = configurations(segments, profile, space, stats=stats)
    floor = AccuracyFloor.of(
        routings,
        space.threshold_grid,
        segments,
        prof,
        asked.min_accuracy,
        asked.max_drop_pp,
        asked.confidence,
        asked.log,
    )
    if not exhaustive:
        routings = [
            r.take(np.array([floor.admits_key(k) for k in r.keys()], dtype=bool)) if r.subset else r for r in routings
        ]
    candidates = cost(
        segments,
        routings,
        space,
        progress=lambda items: tqdm(items, desc="sweep", unit="exit set", disable=not show, leave=False),
        stats=stats,
    )
    stats["search_seconds"] = time.perf_counter() - started
    stats["costed_configurations"] = sum(len(r.combos) for r in routings)
    return candidates, floor, stats


def _accuracy_floor(val_correct: np.ndarray, min_accuracy: float | None, max_drop_pp: float | None) -> float:
    """``min_accuracy``, else the final exit's validation accuracy less ``max_drop_pp`` points."""
    if min_accuracy is not None:
        return min_accuracy
    return float(val_correct[:, -1].mean()) - (max_drop_pp or 0.0) / 100.0


def _work(graph: GraphCost) -> float:
    """Bit operations of one graph per sample: each weight layer's multiply-accumulates (its
    cycles at PE = SIMD = 1) times its weight and activation bits. Labels play no part: the
    certificate orders its hypotheses by this."""
    return float(sum(t.cycles.max() * t.layer.wbits * t.layer.abits for t in graph.tables))


def _taken(prof, policy: str, exits: tuple[int, ...], thresholds: tuple[float, ...], split: str, n: int) -> np.ndarray:
    """Each sample's exit on ``split`` (an index into the kept exits) for a threshold
    configuration of ``n`` segments under ``policy``."""
    if not exits:
        return np.zeros(len(prof[f"{split}_correct"]), dtype=np.int64)
    kept = kept_exits(exits, n - 1)
    codes = prof[f"{split}_code_{policy}"][:, kept]
    constants = [threshold_code(policy, t, float(prof["scales"][k])) for t, k in zip(thresholds, exits, strict=True)]
    return route(policy, codes, constants, prof[f"{split}_pred"][:, kept])


def _reorder(counts: risk.Counts, order: list[int]) -> risk.Counts:
    """``counts`` of configurations in the routings' order, in ``order``."""
    pick = lambda a: None if a is None else np.asarray(a)[order]  # noqa: E731
    return risk.Counts(
        paired=tuple(pick(a) for a in counts.paired),
        samples=counts.samples,
        disagreements=pick(counts.disagreements),
        work=pick(counts.work),
    )


def _key(c: Candidate) -> tuple:
    """A candidate's threshold configuration: what decides each sample's exit."""
    return (c.policy if c.exits else "", c.exits, c.thresholds)


@dataclass(frozen=True)
class Outcomes:
    """What each threshold configuration does to each sample of one split (configurations x
    samples): whether its exit is right, whether its exit names another class than the final
    exit, and the bit operations the sample runs through (:func:`_work`)."""

    correct: np.ndarray
    disagree: np.ndarray
    work: np.ndarray


def outcomes(keys: list, segments: list[Segment], prof, split: str) -> Outcomes:
    """:class:`Outcomes` of the configurations ``keys`` ((policy, exits, thresholds)) on ``split``
    (sample by sample, for a few configurations: the sweep itself counts, :func:`_split_counts`)."""
    n = len(segments)
    correct_at, pred_at = prof[f"{split}_correct"], prof[f"{split}_pred"]
    samples = np.arange(len(correct_at))
    correct = np.zeros((len(keys), len(samples)), dtype=bool)
    disagree = np.zeros_like(correct)
    work = np.zeros((len(keys), len(samples)), dtype=np.float32)
    for i, (policy, exits, thresholds) in enumerate(keys):
        kept = np.asarray(kept_exits(exits, n - 1))
        taken = kept[_taken(prof, policy, exits, thresholds, split, n)]  # candidate exit of each sample
        correct[i] = correct_at[samples, taken]
        disagree[i] = pred_at[samples, taken] != pred_at[:, -1]
        work[i] = _exit_work(segments, list(kept))[np.searchsorted(kept, taken)]
    return Outcomes(correct, disagree, work)


def _exit_work(segments: list[Segment], kept: list[int]) -> np.ndarray:
    """The work of a sample leaving at each kept exit: the stages it runs and the heads of the
    exits it passes."""
    body = np.cumsum([_work(seg.body) for seg in segments])
    return body[kept] + np.cumsum([_work(segments[k].head) for k in kept])


@dataclass(frozen=True)
class _Counts:
    """Per configuration, counted over the samples of one split (:func:`_split_counts`): right
    answers; on the certificate's ordering and testing parts (:func:`exitflow.dse.risk.split`,
    validation split only) what :func:`exitflow.dse.risk.certify_counts` needs."""

    right: np.ndarray
    ordering: risk.Counts | None = None
    testing: risk.Counts | None = None


def _split_counts(routings: list, segments: list[Segment], prof, split: str, parts: bool, grid) -> _Counts:
    """:class:`_Counts` of every combination of ``routings`` (of thresholds from ``grid``) on
    ``split``, configurations in the routings' order, each routed by
    :func:`~exitflow.dse.search.route_counts` (bit sets of samples; nothing per sample and
    configuration is kept)."""
    correct_at, pred_at = prof[f"{split}_correct"], prof[f"{split}_pred"]
    final = correct_at[:, -1]
    samples = len(final)
    ordering, testing = risk.split(samples) if parts else (None, None)
    in_ordering, in_testing = np.zeros(samples, dtype=bool), np.zeros(samples, dtype=bool)
    if parts:
        in_ordering[ordering], in_testing[testing] = True, True
    o, t = in_ordering[None, :], in_testing[None, :]
    columns: dict[str, list] = {}
    for r in routings:
        kept = r.kept
        right = correct_at[:, kept].T  # (kept exits, samples)
        marks = {"right": right}
        if parts:
            loss, gain = final[None, :] & ~right, ~final[None, :] & right
            disagree = pred_at[:, kept].T != pred_at[None, :, -1]
            marks.update(
                o_disagree=disagree & o,
                o_loss=loss & o,
                o_gain=gain & o,
                o_error=~right & o,
                o_work=np.broadcast_to(o, right.shape),
                t_loss=loss & t,
                t_gain=gain & t,
                t_error=~right & t,
            )
        weights = [_exit_work(segments, kept) if name == "o_work" else None for name in marks]
        policy = r.policy or "max_prob"  # without early exits, every policy routes alike
        codes = prof[f"{split}_code_{policy}"][:, kept]
        scales = [float(prof["scales"][k]) for k in r.subset]
        _, sums = route_counts(policy, codes, pred_at[:, kept], scales, grid, list(marks.values()), weights)
        for name, total in zip(marks, sums, strict=True):
            columns.setdefault(name, []).append(total[r.index])
    joined = {name: np.concatenate(v) for name, v in columns.items()}
    if not parts:
        return _Counts(joined["right"])
    return _Counts(
        right=joined["right"],
        ordering=risk.Counts(
            paired=(joined["o_loss"], joined["o_gain"], joined["o_error"]),
            samples=len(ordering),
            disagreements=joined["o_disagree"],
            work=joined["o_work"] / len(ordering),
        ),
        testing=risk.Counts(paired=(joined["t_loss"], joined["t_gain"], joined["t_error"]), samples=len(testing)),
    )


@dataclass(frozen=True, eq=False)
class AccuracyFloor:
    """Which threshold configurations (exits kept, a threshold per exit) keep the accuracy floor:
    with ``certificate`` (confidence below 1), those :func:`exitflow.dse.risk.certify` certifies;
    without, those meeting it on the validation split. Also each configuration's drop on the
    validation and test splits, for the report."""

    keys: list  # (policy, exits, thresholds) of every configuration the search may cost
    val_drop: np.ndarray  # below the final exit, a fraction, per configuration
    test_drop: np.ndarray
    admitted: np.ndarray  # bool per configuration
    certificate: risk.Certificate | None
    text: str  # the floor in words
    final_val_accuracy: float = 0.0  # the final exit's, on the validation split

    @classmethod
    def of(cls, routings, grid, segments, prof, min_accuracy, max_drop_pp, confidence, log) -> AccuracyFloor:
        """The floor over the configurations of ``routings`` (:func:`~exitflow.dse.search.configurations`,
        thresholds from ``grid``), counted without costing any of them."""
        keys = [k for r in routings for k in r.keys()]
        order = sorted(range(len(keys)), key=keys.__getitem__)  # the configurations in a fixed order
        keys = [keys[i] for i in order]
        certifying = confidence < 1.0
        test = _split_counts(routings, segments, prof, "test", False, grid)
        val_final, test_final = prof["val_correct"][:, -1], prof["test_correct"][:, -1]
        val_accuracy = np.concatenate([r.accuracy for r in routings])[order]  # as the search routed it
        val_drop = val_final.mean() - val_accuracy
        test_drop = test_final.mean() - test.right[order] / len(test_final)
        if min_accuracy is not None:
            floor, text = risk.Floor(max_drop=None, min_accuracy=min_accuracy), f"accuracy >= {min_accuracy:g}"
        else:
            drop = max_drop_pp or 0.0
            floor, text = risk.Floor(max_drop=drop / 100.0), f"drop <= {drop:g} pp below the final exit"
        if not certifying:  # the point estimate: the floor met on the validation split
            least = _accuracy_floor(prof["val_correct"], min_accuracy, max_drop_pp)
            return cls(keys, val_drop, test_drop, val_accuracy >= least - 1e-12, None, text, val_final.mean())
        # without early exits, the drop is 0 by definition: only an absolute floor needs a test
        untested = [i for i, k in enumerate(keys) if not k[1]] if floor.max_drop is not None else []
        val = _split_counts(routings, segments, prof, "val", True, grid)
        ordering, testing = (_reorder(c, order) for c in (val.ordering, val.testing))
        certificate = risk.certify_counts(ordering, testing, floor, confidence, exclude=untested)
        admitted = np.zeros(len(keys), dtype=bool)
        admitted[list(certificate.certified) + untested] = True
        found = cls(keys, val_drop, test_drop, admitted, certificate, text, val_final.mean())
        log(found.summary())
        return found

    def admits_key(self, key: tuple) -> bool:
        return bool(self.admitted[self._positions[key]])

    def closest(self) -> tuple[tuple, float]:
        """(the configuration with the best validation accuracy, its validation drop)."""
        i = int(np.argmin(self.val_drop))
        return self.keys[i], float(self.val_drop[i])

    def index(self, c: Candidate) -> int:
        return self._positions[_key(c)]

    @property
    def _positions(self) -> dict:
        cached = self.__dict__.get("_by_key")
        if cached is None:
            cached = {k: i for i, k in enumerate(self.keys)}
            object.__setattr__(self, "_by_key", cached)
        return cached

    def admits(self, c: Candidate) -> bool:
        return bool(self.admitted[self.index(c)])

    def summary(self) -> str:
        """One line: how many configurations are certified, and where the test stopped."""
        cert = self.certificate
        early = sum(1 for i in cert.certified if self.keys[i][1])
        line = (
            f"accuracy floor ({self.text}) certified at confidence {cert.confidence:g} for "
            f"{len(cert.certified)} of {len(self.keys)} threshold configurations ({early} with early exits; "
            f"{cert.ordering_samples} validation samples ordered them, {cert.testing_samples} tested them)"
        )
        stopped = [i for i in cert.tested if i not in cert.certified]
        if stopped:
            i = stopped[0]
            line += (
                f"; the test stopped at a design with validation drop {100 * self.val_drop[i]:.2f} pp "
                f"(p = {cert.p_values[i]:.3f})"
            )
        return line

    def fields(self, c: Candidate) -> dict:
        """What pareto.json lists about ``c``'s accuracy floor (DesignPoint's fields)."""
        i = self.index(c)
        cert = self.certificate
        certified = None
        if cert is not None and self.admitted[i]:
            certified = f"{self.text}, confidence {cert.confidence:g}"
        return dict(
            val_drop_pp=100 * float(self.val_drop[i]),
            test_drop_pp=100 * float(self.test_drop[i]),
            p_value=None if cert is None or i not in cert.p_values else float(cert.p_values[i]),
            certified_at=certified,
        )

    def report(self) -> CertificateSummary | None:
        cert = self.certificate
        if cert is None:
            return None
        return CertificateSummary(
            confidence=cert.confidence,
            floor=self.text,
            method=risk.METHOD,
            ordering_samples=cert.ordering_samples,
            testing_samples=cert.testing_samples,
            tested=len(cert.tested),
            certified=len(cert.certified),
            configurations=len(self.keys),
        )


def _eligible(
    candidates: list[Candidate],
    floor: AccuracyFloor,
    max_latency_us: float | None,
    board_name: str,
    util: float,
    names: list[str],
):
    """(the candidates keeping the accuracy floor and the latency limit, those without early
    exits); no design without exits, or none meeting the constraints, is one error naming the
    closest."""
    eligible = [
        c for c in candidates if floor.admits(c) and (max_latency_us is None or c.mean_latency_us <= max_latency_us)
    ]
    no_exit = [c for c in candidates if c.exits == ()]
    if not no_exit:
        raise ExitflowError(
            f"resource budget: no design without early exits fits {board_name} at {util:.0%} "
            "utilisation (raise --util or choose a larger board)"
        )
    if not eligible:
        by_accuracy = [c for c in candidates if floor.admits(c)]
        if not by_accuracy:
            key, drop = floor.closest()
            how = (
                "reaches it"
                if floor.certificate is None
                else f"is certified at confidence {floor.certificate.confidence:g}"
            )
            costed = [c.fps for c in candidates if _key(c) == key]
            speed = f" at {max(costed):,.0f} samples/s" if costed else ""
            raise ExitflowError(
                f"accuracy floor ({floor.text}): no design {how}; the closest reaches "
                f"{floor.final_val_accuracy - drop:.4f} on validation{speed} "
                f"(exits: {', '.join(names[k] for k in key[1]) or 'none, the final exit alone'})"
            )
        closest = min(by_accuracy, key=lambda c: c.mean_latency_us)
        raise ExitflowError(
            f"latency limit {max_latency_us} us: no design meets it at the accuracy floor; the closest "
            f"has {closest.mean_latency_us:.1f} us mean latency at {closest.fps:,.0f} samples/s"
        )
    return eligible, no_exit


# ---------------------------------------------------------------------------- selection with finite gates


@dataclass(frozen=True)
class _Selection:
    """What the selection with finite gates found: the chosen design (its gates deepened), the best
    design without exits, the cheapest with exits matching that one's throughput with its gates."""

    chosen: Candidate
    no_exit: Candidate
    fps_with_gates: float  # the chosen design with its gates, on the validation traffic
    fps_with_gates_test: float  # the same on the test split's traffic
    test_accuracy: float
    equal_throughput: Candidate | None
    equal_throughput_fps: float | None
    seconds: float
    simulations: int


def _select(
    eligible: list[Candidate],
    no_exit: list[Candidate],
    objective: str,
    segments: list[Segment],
    limits: np.ndarray,
    gates: GateSimulator,
    pricer: FifoPricer,
    log,
) -> _Selection:
    """Choose the design for the objective with its finite gates, find the equal-throughput
    design, each with its FIFOs sized as the build sizes them (:mod:`exitflow.dse.fifo_pricing`),
    deepen the chosen design's gates while that pays, and evaluate it on the test split."""
    selecting = time.perf_counter()
    chosen = pricer.fitting(lambda pool: _choose(pool, objective, gates), eligible, limits, "chosen design", log)
    best_no_exit = pricer.fitting(
        lambda pool: max(pool, key=lambda c: (c.fps, -c.resources.lut)),
        no_exit,
        limits,
        "best design without exits",
        log,
    )
    equal, equal_fps = _equal_throughput(eligible, best_no_exit.fps, gates.gated_alike, pricer, limits)
    chosen, gated_fps = _deepen_gates(chosen, segments, limits, gates)
    test_fps = gates.on_test_split(chosen)
    seconds = time.perf_counter() - selecting
    gates.close()
    return _Selection(
        chosen=chosen,
        no_exit=best_no_exit,
        fps_with_gates=gated_fps,
        fps_with_gates_test=test_fps,
        test_accuracy=gates.test_accuracy(chosen),
        equal_throughput=equal,
        equal_throughput_fps=equal_fps,
        seconds=seconds,
        simulations=gates.simulations,
    )


class GateSimulator:
    """Throughput of designs with finite gates on a split's exit sequence from the profile
    (:func:`~exitflow.dse.throughput.stage_level_fps`). On the validation split each design and
    depth is simulated once (every candidate stays alive in the search's list, so its id is a
    safe key), and designs alike in what the simulation sees share one run."""

    def __init__(self, prof, segments: list[Segment], clock_mhz: float, show: bool):
        self.prof, self.segments, self.clock_mhz = prof, segments, clock_mhz
        self._by_design: dict = {}  # (id of the candidate, gate depth) -> fps
        self._alike: dict = {}  # what the simulation sees -> fps
        self._bar = tqdm(desc="simulating gates", unit="design", disable=not show, leave=False)

    @property
    def simulations(self) -> int:
        return len(self._by_design)

    def close(self) -> None:
        self._bar.close()

    def kept(self, c: Candidate) -> list[int]:
        return kept_exits(c.exits, len(self.segments) - 1)

    def taken(self, c: Candidate, split: str) -> np.ndarray:
        """Each sample's exit on ``split`` (an index into the design's kept exits)."""
        return _taken(self.prof, c.policy, c.exits, c.thresholds, split, len(self.segments))

    def simulate(self, c: Candidate, split: str, depth: int) -> float:
        """One simulation of ``c`` with gates of ``depth`` feature maps on ``split``'s exit
        sequence, at most its throughput with unbounded gates."""
        fps = stage_level_fps(
            self.taken(c, split),
            list(c.stage_cycles),
            list(c.head_cycles),
            [depth] * len(c.exits),
            [self.segments[k].words(c.folding) for k in self.kept(c)],
            self.clock_mhz,
        )
        return min(c.fps, fps)

    def gated(self, c: Candidate, depth: int) -> float:
        """Throughput with gates of ``depth`` feature maps on the validation exit sequence,
        simulated once per design and depth."""
        if not c.exits:
            return c.fps
        key = (id(c), depth)
        if key not in self._by_design:
            self._by_design[key] = self.simulate(c, "val", depth)
        return self._by_design[key]

    def gated_alike(self, c: Candidate) -> float:
        """:meth:`gated` at the design's own gate depth; designs alike in what the simulation
        sees (exits, thresholds, stage and head cycles, gate words and depth) share one run."""
        key = (
            _key(c),
            c.stage_cycles,
            c.head_cycles,
            c.gate_depth,
            tuple(self.segments[k].words(c.folding) for k in self.kept(c)),
        )
        if key not in self._alike:
            self._alike[key] = self.gated(c, c.gate_depth)
            self._bar.update()
        return self._alike[key]

    def on_test_split(self, c: Candidate) -> float:
        """The same simulation on the test split's traffic, which the search never saw."""
        return self.simulate(c, "test", c.gate_depth) if c.exits else c.fps

    def test_accuracy(self, c: Candidate) -> float:
        taken = self.taken(c, "test")
        correct = self.prof["test_correct"]
        return float(correct[np.arange(len(taken)), np.asarray(self.kept(c))[taken]].mean())


def _choose(eligible: list[Candidate], objective: str, gates: GateSimulator) -> Candidate:
    """The design for the objective: the fastest with its finite gates (throughput), or the
    lowest mean latency."""
    if objective != "throughput":
        return min(eligible, key=lambda c: (c.mean_latency_us, -c.fps, -c.accuracy))
    # the finite gates (each candidate's own depth, in its budget) decide. A design's
    # throughput with finite gates is at most its unbounded-gate throughput, so going down the
    # designs by the latter and stopping once it falls below the best simulated so far finds
    # the best design with finite gates exactly (branch and bound)
    ranked = sorted(eligible, key=lambda c: (c.fps, c.accuracy, -c.resources.lut), reverse=True)
    chosen, best = ranked[0], -1.0
    for c in ranked:
        if c.fps < best:
            break
        fps = gates.gated_alike(c)
        if (fps, c.accuracy, -c.resources.lut) > (best, chosen.accuracy, -chosen.resources.lut):
            chosen, best = c, fps
    return chosen


EQUAL_THROUGHPUT_RUNS = 4000  # simulations the search for the equal-throughput design may take


def _equal_throughput(
    eligible: list[Candidate], target_fps: float, gated_fps, pricer: FifoPricer, limits: np.ndarray
) -> tuple[Candidate | None, float | None]:
    """The design with exits that reaches ``target_fps`` (the best no-exit design's throughput)
    with its finite gates for the fewest LUTs, and still fits ``limits`` once its FIFOs are sized
    as the build sizes them: candidates whose unbounded-gate throughput reaches it, fewest LUTs
    first, each simulated with its gates (``gated_fps``) until one does (at most
    :data:`EQUAL_THROUGHPUT_RUNS` simulations) and priced (at most
    :data:`~exitflow.dse.fifo_pricing.ATTEMPTS` builds)."""
    matching = sorted(
        (c for c in eligible if c.exits and c.fps >= target_fps),
        key=lambda c: (c.resources.lut, c.resources.bram18, -c.fps),
    )
    runs = priced = 0
    for c in matching:
        fps = gated_fps(c)
        runs += 1
        if fps >= target_fps:
            with_fifos = pricer.price(c)
            priced += 1
            if with_fifos.resources.fits(limits):
                return with_fifos, fps
            if priced >= PRICING_ATTEMPTS:
                break
        if runs >= EQUAL_THROUGHPUT_RUNS:
            break
    return None, None


# ---------------------------------------------------------------------------- gate deepening


def _deepen_gates(
    chosen: Candidate, segments: list[Segment], limits: np.ndarray, gates: GateSimulator
) -> tuple[Candidate, float]:
    """(the chosen design with deeper gates where the budget has room and bursts of hard samples
    still stall a stage, its cost counted again; its throughput with those gates)."""
    if not chosen.exits:
        return chosen, gates.gated(chosen, chosen.gate_depth)
    depth = _paying_gate_depth(chosen, segments, limits, gates)
    return _with_gate_depth(chosen, segments, depth), gates.gated(chosen, depth)


def _paying_gate_depth(chosen: Candidate, segments: list[Segment], limits: np.ndarray, gates: GateSimulator) -> int:
    """The deepest of :data:`DEEPER_GATES` each step to which fits the budget and still pays."""
    searched = routing_cost(segments, chosen.exits, chosen.gate_depth)  # what the search budgeted
    base = np.array(chosen.resources) - searched[0].sum(axis=0) - searched[1]
    depth = chosen.gate_depth
    for deeper in (d for d in DEEPER_GATES if d > chosen.gate_depth):
        if gates.gated(chosen, depth) >= chosen.fps * 0.999:
            break
        deeper_gates, rest = routing_cost(segments, chosen.exits, deeper)  # (gates x 4, merge and record FIFOs)
        if np.any(base + deeper_gates.sum(axis=0) + rest > limits + 1e-9):
            break
        if gates.gated(chosen, deeper) < gates.gated(chosen, depth) * 1.005:
            break  # deeper gates no longer pay
        depth = deeper
    return depth


def _with_gate_depth(chosen: Candidate, segments: list[Segment], depth: int) -> Candidate:
    """``chosen`` with gates (and record FIFOs) of ``depth`` feature maps in place of those the
    search budgeted, in its resources and its stages'."""
    searched = routing_cost(segments, chosen.exits, chosen.gate_depth)
    gates, rest = routing_cost(segments, chosen.exits, depth)
    extra, extra_rest = gates - searched[0], rest - searched[1]
    last = len(chosen.stage_resources) - 1
    stages = [
        Resources(*np.add(r, extra[s] if s < last else extra_rest).tolist())
        for s, r in enumerate(chosen.stage_resources)
    ]
    return replace(
        chosen,
        resources=Resources(*np.add(chosen.resources, extra.sum(axis=0) + extra_rest).tolist()),
        stage_resources=tuple(stages),
        gate_depth=depth,
    )


# ---------------------------------------------------------------------------- writing


def _point(cls, c: Candidate, names: list[str], clock_mhz: float, floor: AccuracyFloor | None = None, **extra):
    """``c`` as ``pareto.json`` lists it (a :class:`DesignPoint` or a subclass, ``extra`` its own
    fields or overriding the point's; ``floor`` adds its drops and certificate)."""
    fields = dict(
        **(floor.fields(c) if floor is not None else {}),
        policy=c.policy if c.exits else None,
        exits=tuple(names[k] for k in c.exits),
        thresholds=tuple(c.thresholds),
        fps=c.fps,
        val_accuracy=c.accuracy,
        **c.resources.as_dict(),
        interval_cycles=c.target,
        reach=tuple(c.reach),
        gate_depth=c.gate_depth if c.exits else None,
        headroom=c.headroom if c.exits else None,
        latency_cycles_to_exit=tuple(round(t * clock_mhz) for t in c.latency_us),
        latency_us_to_exit=tuple(c.latency_us),
        mean_latency_cycles=c.mean_latency_us * clock_mhz,
        mean_latency_us=c.mean_latency_us,
    )
    return cls(**{**fields, **extra})


def _pareto_report(r: SweepResult, names: list[str], board, util: float) -> ParetoReport:
    clock = board.clock_mhz
    chosen = _point(
        ChosenDesign,
        r.chosen,
        names,
        clock,
        r.floor,
        gate_depth=r.gate_depth if r.chosen.exits else None,
        test_accuracy=r.test_accuracy,
        fps_with_gates=r.fps_with_gates,
        fps_with_gates_on_test_traffic=r.fps_with_gates_test,
        gain_with_gates=r.gain_with_gates,
        stage_resources=tuple(Resources(*res) for res in r.chosen.stage_resources),
        active_bound=r.bound,
        fps_if_reach_minus_5pp=r.sensitivity["minus"],
        fps_if_reach_plus_5pp=r.sensitivity["plus"],
        stage_fifos=tuple(Resources(*f) for f in r.chosen.fifos) if r.chosen.fifos is not None else None,
    )
    # the cheapest design with exits (LUTs) matching the no-exit throughput with its finite gates
    equal = None
    if r.equal_throughput is not None:
        equal = _point(
            EqualThroughputDesign,
            r.equal_throughput,
            names,
            clock,
            r.floor,
            fps_with_gates=r.equal_throughput_fps,
            lut_fraction=r.equal_throughput.resources.lut / r.no_exit.resources.lut,
        )
    return ParetoReport(
        board=board.name,
        utilisation_cap=util,
        budget=r.budget,
        chosen=chosen,
        no_exit_baseline=_point(DesignPoint, r.no_exit, names, clock, r.floor),
        equal_throughput=equal,
        gain_vs_no_exit=r.gain,
        final_exit_test_accuracy=r.final_test_accuracy,
        finn_setfolding_baseline=r.finn_baseline,
        gain_vs_finn_setfolding=(r.chosen.fps / r.finn_baseline.fps) if r.finn_baseline is not None else None,
        certificate=r.floor.report() if r.floor is not None else None,
        front=tuple(
            _point(FrontDesign, c, names, clock, r.floor, active_bound=b)
            for c, b in zip(r.front, r.front_bounds, strict=False)
        ),
    )


def _write(run: RunDir, r: SweepResult, segments, backbone: str, board) -> None:
    """``pareto.json`` (``r.report``), the chosen ``design.yaml`` and the plots."""
    r.report.write(run.sweep)
    save_design(_design(r.chosen, segments, backbone, board, r.gate_depth), run.design)
    _plots(run.sweep, r)


def _design(c: Candidate, segments, backbone: str, board, gate_depth: int = GATE_DEPTH):
    kept = kept_exits(c.exits, len(segments) - 1)
    stages, start = [], 0
    for s, end in enumerate(kept):
        last = s == len(kept) - 1
        blocks = [b for seg in segments[start : end + 1] for b in seg.blocks]
        folding = {}
        for seg in segments[start : end + 1]:
            folding.update(
                {layer: choice.layer_folding() for layer, choice in c.folding.get(seg.body.name, {}).items()}
            )
        head_fold = {
            layer: choice.layer_folding() for layer, choice in c.folding.get(segments[end].head.name, {}).items()
        }
        name = f"exit_{segments[end].exit}".replace(".", "_") if not last else "final"
        stages.append(
            Stage(
                name=f"stage{s}",
                blocks=tuple(blocks),
                folding=FrozenMap(folding),
                gate_depth=None if last else gate_depth,
                head=ExitHead(
                    name=name,
                    policy=c.policy,
                    threshold=None if last else c.thresholds[s],
                    folding=FrozenMap(head_fold),
                ),
            )
        )
        start = end + 1
    return Design(model=backbone, board=board.name, clock_mhz=board.clock_mhz, stages=tuple(stages))


def _plots(out: Path, r: SweepResult) -> None:
    """``pareto.png`` (the front against the baselines and the chosen design) and ``resources.png``
    (the chosen design's stages against the budget)."""
    # matplotlib: heavy, and needed only for the plots
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _front_plot(plt, out, r)
    _resources_plot(plt, out, r)


def _front_plot(plt, out: Path, r: SweepResult) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    front = sorted(r.front, key=lambda c: c.fps)
    sc = ax.scatter(
        [c.fps for c in front],
        [100 * c.accuracy for c in front],
        c=[c.resources.lut for c in front],
        cmap="viridis",
        s=18,
        label="Pareto front of the designs keeping the floor (colour: LUT)",
    )
    fig.colorbar(sc, ax=ax, label="LUT")
    ax.scatter(
        [r.no_exit.fps], [100 * r.no_exit.accuracy], marker="s", color="red", s=60, label="best without early exits"
    )
    if r.finn_baseline is not None:
        ax.scatter(
            [r.finn_baseline.fps],
            [100 * r.no_exit.accuracy],
            marker="D",
            color="orange",
            s=50,
            label="FINN SetFolding, no exits",
        )
    ax.scatter(
        [r.fps_with_gates],
        [100 * r.chosen.accuracy],
        marker="*",
        color="black",
        s=140,
        label=f"chosen: {r.gain_with_gates:.2f}x with its gates ({r.gain:.2f}x unbounded)",
    )
    if r.equal_throughput is not None:
        e = r.equal_throughput
        ax.scatter(
            [r.equal_throughput_fps],
            [100 * e.accuracy],
            marker="^",
            color="magenta",
            s=60,
            label=f"matches the no-exit throughput: {e.resources.lut / r.no_exit.resources.lut:.0%} of its LUTs",
        )
    ax.set(xscale="log", xlabel="throughput (samples/s)", ylabel="validation accuracy (%)", title="Design space")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower left")
    atomic_write(out / "pareto.png", lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


def _resources_plot(plt, out: Path, r: SweepResult) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6), constrained_layout=True)
    stages = [Resources(*res) for res in r.chosen.stage_resources]
    stage_names = [f"stage {k}" for k in range(len(stages))]
    for ax, key in zip(axes, ("lut", "bram18", "dsp"), strict=False):
        bottom = 0.0
        for name, res in zip(stage_names, stages, strict=False):
            ax.bar(["chosen"], [getattr(res, key)], bottom=bottom, label=name)
            bottom += getattr(res, key)
        ax.bar(["no exits"], [getattr(r.no_exit.resources, key)], color="grey", label="best without exits")
        ax.axhline(getattr(r.budget, key), color="red", linestyle="--", label="budget")
        ax.set_title(getattr(LABELS, key))
    axes[0].legend(fontsize=7)
    fig.suptitle("Resources per stage (with its head) against the board budget")
    atomic_write(out / "resources.png", lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)

"""``exitflow sweep``: search a trained, profiled run for the best multi-exit design on a board.

1. Build the design that keeps every candidate exit (each segment its own stage) into
   ``DIR/sweep/inventory`` and inventory its stages and heads (FINN's estimates, once).
2. Search exits, thresholds and interval targets (:mod:`exitflow.dse.search`) under the board's
   resources after the shell, times the utilisation cap, on the validation split's profile.
3. Keep the Pareto front, pick the design for the objective under the accuracy floor, check its
   gates against bursts of hard samples (:mod:`exitflow.dse.throughput`), report the test split.
   Baselines, same budget: (a) the best design without early exits (from the same search);
   (b) FINN's SetFolding without exits, judged by FINN's estimator (:mod:`exitflow.dse.finn_baseline`).
4. Write ``DIR/sweep/pareto.json``, ``pareto.png``, ``resources.png`` and ``design.yaml``
   (loadable by ``exitflow build``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml

from exitflow.core.catalogue import get_board
from exitflow.core.design import OBJECTIVES, Design, ExitHead, Stage, kept_exits, save_design
from exitflow.core.errors import ConfigError, ExitflowError
from exitflow.core.files import atomic_write, user_path
from exitflow.core.resources import LABELS, Resources
from exitflow.core.schema import FrozenMap
from exitflow.dse import finn_model
from exitflow.hls_templates.registry import register_finn_ops
from exitflow.hw import finn_flow
from exitflow.hw.build import build
from exitflow.hw.folding import stream_words
from exitflow.quant.policies import route, threshold_code

from .finn_baseline import finn_setfolding_baseline
from .search import (
    Candidate,
    SearchSpace,
    Segment,
    ValidationProfile,
    active_bound,
    graph_cost,
    pareto,
    routing_cost,
    search,
)
from .throughput import sensitivity, stage_level_fps

MAX_PROB_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)
GATE_DEPTH = 8  # feature maps each gate holds in the inventory build
GATE_DEPTHS = (2, 4, 8)  # gate depths the search tries (deeper ones: only for the chosen design)
HEADROOMS = (1.0, 1.25, 1.5)  # stages after the first sized for min(1, h * p_s) of the samples (dse.search)
DEEPER_GATES = (4, 8, 16, 32, 64, 128)  # what the chosen design's gates may grow to while that pays


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
    finn_baseline: dict | None  # FINN's SetFolding without exits, judged by FINN's estimator
    front_bounds: list = field(default_factory=list)  # active bound of each front design
    candidates: list = field(default_factory=list, repr=False)  # every design that fits
    finn_points: list = field(default_factory=list, repr=False)  # SetFolding at every target
    search_stats: dict = field(default_factory=dict)  # seconds, designs evaluated
    gate_depth: int = GATE_DEPTH  # feature maps each gate of the chosen design holds
    # the cheapest design with exits (in LUTs) that reaches the no-exit design's throughput with
    # its finite gates, and that throughput; None when none does
    equal_throughput: Candidate | None = None
    equal_throughput_fps: float | None = None
    fps_with_gates_test: float | None = None  # the chosen design with its gates on the test split's exit sequence

    @property
    def gain_with_gates(self) -> float:
        """The chosen design's throughput with its finite gates over the best without exits."""
        return self.fps_with_gates / self.no_exit.fps


def _segments_design(model, config, board_name: str) -> tuple[dict, list[list[str]]]:
    """The design keeping every candidate exit, and the blocks of each segment."""
    exits = model.exit_names
    blocks = model.stage_blocks(exits)
    stages = []
    for k, b in enumerate(blocks):
        last = k == len(exits) - 1
        stage = {"name": f"seg{k}", "blocks": b, "head": {"name": f"head{k}"}}
        if not last:
            stage["gate_depth"] = GATE_DEPTH
            stage["head"]["threshold"] = 0.9
        stages.append(stage)
    return {"model": config.model.backbone, "board": board_name, "stages": stages}, blocks


def sweep(
    run_dir: str | Path,
    board_name: str,
    objective: str = "throughput",
    min_accuracy: float | None = None,
    max_drop_pp: float | None = 1.0,
    util: float = 0.85,
    policy: str = "max_prob",
    max_exits: int = 3,
    max_latency_us: float | None = None,
    log=print,
) -> SweepResult:
    # torch: when the sweep runs, not when the command line loads dse.sweep
    from exitflow.quant import checkpoint as ckpt

    run_dir = user_path(run_dir)
    if not 0.0 < util <= 1.0:
        raise ConfigError(f"--util: must be in (0, 1]; got {util}")
    if objective not in OBJECTIVES:
        raise ConfigError(f"--objective: must be {' or '.join(OBJECTIVES)}; got {objective!r}")
    if isinstance(max_exits, bool) or not isinstance(max_exits, int) or max_exits < 0:
        raise ConfigError(f"--max-exits: must be an integer >= 0 (early exits per design); got {max_exits!r}")
    board = get_board(board_name)
    config, model, _ = ckpt.load_model(run_dir)
    # torch at import (quant.profile), as above
    from exitflow.quant.profile import load_profile

    profile_path = run_dir / "profile.npz"
    prof = load_profile(run_dir)  # checked: one line for a missing, damaged or foreign file
    if list(prof["exit_names"]) != list(model.exit_names):
        raise ConfigError(
            f"{profile_path}: profiled exits {list(prof['exit_names'])} are not the model's "
            f"{model.exit_names}; run `exitflow profile {run_dir}` again"
        )
    out = run_dir / "sweep"
    out.mkdir(parents=True, exist_ok=True)
    design, blocks = _segments_design(model, config, board.name)
    text = yaml.safe_dump(design, sort_keys=False) + f"# built by exitflow's FINN flow {_flow_digest()}\n"
    inventory_design = out / "inventory_design.yaml"
    fresh = (
        inventory_design.exists()
        and inventory_design.read_text() == text
        and (out / "inventory" / "build.json").exists()
        and (out / "inventory" / "build.json").stat().st_mtime >= (run_dir / "model.pt").stat().st_mtime
    )
    if not fresh:
        inventory_design.write_text(text)
        log("building every candidate stage and head once to take FINN's estimates")
        build(run_dir, inventory_design, log=lambda line: None, hw_dir=out / "inventory", vivado_project=None)
    budget = Resources.of(board.available).scaled(util)
    limits = np.array(budget)  # the budget as the vectorised search takes it
    segments = [
        Segment(
            model.exit_names[k],
            tuple(b),
            graph_cost(out / "inventory" / f"seg{k}", board.part, limits),
            graph_cost(out / "inventory" / f"head{k}", board.part, limits),
            *_streams(out / "inventory", k),
        )
        for k, b in enumerate(blocks)
    ]
    codes, correct = prof[f"val_code_{policy}"], prof["val_correct"]
    from tqdm import tqdm

    show = sys.stderr.isatty()
    import time

    started = time.perf_counter()
    stats: dict = {}
    space = SearchSpace(
        policy,
        MAX_PROB_THRESHOLDS,
        limits,
        board.clock_mhz,
        max_exits=max_exits,
        gate_depths=GATE_DEPTHS,
        headrooms=HEADROOMS,
    )
    candidates = search(
        segments,
        ValidationProfile(codes, correct, prof["scales"]),
        space,
        progress=lambda items: tqdm(items, desc="sweep", unit="exit set", disable=not show, leave=False),
        stats=stats,
    )
    search_seconds, designs = time.perf_counter() - started, stats["designs"]
    final_acc = float(correct[:, -1].mean())
    floor = min_accuracy if min_accuracy is not None else final_acc - (max_drop_pp or 0.0) / 100.0
    eligible = [
        c
        for c in candidates
        if c.accuracy >= floor - 1e-12 and (max_latency_us is None or c.mean_latency_us <= max_latency_us)
    ]
    no_exit = [c for c in candidates if c.exits == ()]
    if not no_exit:
        raise ExitflowError(
            f"resource budget: no design without early exits fits {board.name} at {util:.0%} "
            "utilisation (raise --util or choose a larger board)"
        )
    if not eligible:
        by_accuracy = [c for c in candidates if c.accuracy >= floor - 1e-12]
        if not by_accuracy:
            closest = max(candidates, key=lambda c: (c.accuracy, c.fps))
            raise ExitflowError(
                f"accuracy floor {floor:.4f}: no design reaches it; the closest reaches "
                f"{closest.accuracy:.4f} at {closest.fps:,.0f} samples/s (exits {list(closest.exits)})"
            )
        closest = min(by_accuracy, key=lambda c: c.mean_latency_us)
        raise ExitflowError(
            f"latency limit {max_latency_us} us: no design meets it at the accuracy floor; the closest "
            f"has {closest.mean_latency_us:.1f} us mean latency at {closest.fps:,.0f} samples/s"
        )

    def taken_on(c: Candidate, split: str) -> np.ndarray:
        kept = kept_exits(c.exits, len(segments) - 1)
        constants = [
            threshold_code(policy, t, float(prof["scales"][k])) for t, k in zip(c.thresholds, c.exits, strict=False)
        ]
        codes_ = prof[f"{split}_code_{policy}"][:, kept]
        return route(policy, codes_, constants) if c.exits else np.zeros(len(codes_), dtype=np.int64)

    simulated: dict = {}

    def gated(c: Candidate, depth: int) -> float:
        """Throughput with gates of ``depth`` feature maps on the validation exit sequence
        (:func:`~exitflow.dse.throughput.stage_level_fps`), simulated once per design and depth
        (every candidate stays alive in ``candidates``, so its id is a safe key)."""
        if not c.exits:
            return c.fps
        key = (id(c), depth)
        if key not in simulated:
            kept = kept_exits(c.exits, len(segments) - 1)
            fps = stage_level_fps(
                taken_on(c, "val"),
                list(c.stage_cycles),
                list(c.head_cycles),
                [depth] * len(c.exits),
                [segments[k].words(c.folding) for k in kept],
                board.clock_mhz,
            )
            simulated[key] = min(c.fps, fps)
        return simulated[key]

    alike: dict = {}
    runs = tqdm(desc="simulating gates", unit="design", disable=not show, leave=False)

    def gated_alike(c: Candidate) -> float:
        """:func:`gated` at the design's own gate depth; designs alike in what the simulation
        sees (exits, thresholds, stage and head cycles, gate words and depth) share one run."""
        key = (
            c.exits,
            c.thresholds,
            c.stage_cycles,
            c.head_cycles,
            c.gate_depth,
            tuple(segments[k].words(c.folding) for k in kept_exits(c.exits, len(segments) - 1)),
        )
        if key not in alike:
            alike[key] = gated(c, c.gate_depth)
            runs.update()
        return alike[key]

    selecting = time.perf_counter()
    if objective == "throughput":
        # the finite gates (each candidate's own depth, in its budget) decide. A design's
        # throughput with finite gates is at most its unbounded-gate throughput, so going down the
        # designs by the latter and stopping once it falls below the best simulated so far finds
        # the best design with finite gates exactly (branch and bound)
        ranked = sorted(eligible, key=lambda c: (c.fps, c.accuracy, -c.resources.lut), reverse=True)
        chosen, best = ranked[0], -1.0
        for c in ranked:
            if c.fps < best:
                break
            fps = gated_alike(c)
            if (fps, c.accuracy, -c.resources.lut) > (best, chosen.accuracy, -chosen.resources.lut):
                chosen, best = c, fps
    else:
        chosen = min(eligible, key=lambda c: (c.mean_latency_us, -c.fps, -c.accuracy))
    best_no_exit = max(no_exit, key=lambda c: (c.fps, -c.resources.lut))
    equal, equal_fps = _equal_throughput(eligible, best_no_exit.fps, gated_alike)
    # deeper gates where the budget has room and bursts of hard samples still stall a stage
    depth = chosen.gate_depth
    if chosen.exits:

        def outside(d):  # (gates x 4, the rest: merge and record FIFOs) at gate depth d
            return routing_cost(segments, chosen.exits, d)

        searched = outside(chosen.gate_depth)  # what the search budgeted
        base = np.array(chosen.resources) - searched[0].sum(axis=0) - searched[1]
        for deeper in (d for d in DEEPER_GATES if d > chosen.gate_depth):
            if gated(chosen, depth) >= chosen.fps * 0.999:
                break
            gates, rest = outside(deeper)
            if np.any(base + gates.sum(axis=0) + rest > limits + 1e-9):
                break
            if gated(chosen, deeper) < gated(chosen, depth) * 1.005:
                break  # deeper gates no longer pay
            depth = deeper
    gated_fps = gated(chosen, depth)
    if chosen.exits:  # the chosen gates (and record FIFOs) in place of those the search budgeted
        gates, rest = outside(depth)
        extra, extra_rest = gates - searched[0], rest - searched[1]
        last = len(chosen.stage_resources) - 1
        stages = [
            Resources(*np.add(r, extra[s] if s < last else extra_rest).tolist())
            for s, r in enumerate(chosen.stage_resources)
        ]
        chosen = replace(
            chosen,
            resources=Resources(*np.add(chosen.resources, extra.sum(axis=0) + extra_rest).tolist()),
            stage_resources=tuple(stages),
            gate_depth=depth,
        )
    kept = kept_exits(chosen.exits, len(segments) - 1)
    stage_cycles = list(chosen.stage_cycles)
    test_taken = taken_on(chosen, "test")
    test_fps = chosen.fps
    if chosen.exits:  # the same simulation on the test split's traffic, which the search never saw
        test_fps = min(
            chosen.fps,
            stage_level_fps(
                test_taken,
                stage_cycles,
                list(chosen.head_cycles),
                [depth] * len(chosen.exits),
                [segments[k].words(chosen.folding) for k in kept],
                board.clock_mhz,
            ),
        )
    selection_seconds = time.perf_counter() - selecting
    runs.close()
    test_correct = prof["test_correct"]
    test_acc = float(test_correct[np.arange(len(test_taken)), np.asarray(kept)[test_taken]].mean())
    front = pareto(candidates)

    log("judging FINN's SetFolding on the network without exits")
    finn_baseline, finn_points = finn_setfolding_baseline(run_dir, model, config, board, budget, out)
    drift = sensitivity(np.array(chosen.reach), stage_cycles, board.clock_mhz)
    result = SweepResult(
        chosen,
        best_no_exit,
        front,
        chosen.fps / best_no_exit.fps,
        test_acc,
        float(test_correct[:, -1].mean()),
        gated_fps,
        active_bound(chosen, segments, budget, gate_depth=depth),
        drift,
        budget,
        finn_baseline,
        gate_depth=depth,
        equal_throughput=equal,
        equal_throughput_fps=equal_fps,
        fps_with_gates_test=test_fps,
    )
    result.front_bounds.extend(active_bound(c, segments, budget) for c in front)
    result.candidates.extend(candidates)
    result.finn_points.extend(finn_points)
    result.search_stats.update(
        search_seconds=search_seconds,
        designs=designs,
        candidate_exits=len(segments) - 1,
        selection_seconds=selection_seconds,
        simulations=len(simulated),
        skipped_threshold_combinations=stats["skipped_threshold_combinations"],
    )
    _write(out, result, segments, model, config.model.backbone, board, budget, util)
    return result


EQUAL_THROUGHPUT_RUNS = 4000  # simulations the search for the equal-throughput design may take


def _equal_throughput(eligible: list[Candidate], target_fps: float, gated_fps) -> tuple[Candidate | None, float | None]:
    """The design with exits that reaches ``target_fps`` (the best no-exit design's throughput)
    with its finite gates for the fewest LUTs: candidates whose unbounded-gate throughput reaches
    it, fewest LUTs first, each simulated with its gates (``gated_fps``) until one does (at most
    :data:`EQUAL_THROUGHPUT_RUNS` simulations)."""
    matching = sorted(
        (c for c in eligible if c.exits and c.fps >= target_fps),
        key=lambda c: (c.resources.lut, c.resources.bram18, -c.fps),
    )
    runs = 0
    for c in matching:
        fps = gated_fps(c)
        runs += 1
        if fps >= target_fps:
            return c, fps
        if runs >= EQUAL_THROUGHPUT_RUNS:
            break
    return None, None


def _flow_digest() -> str:
    """A digest of exitflow's FINN step list and the folding rules it applies from the model
    (window and pooling folds): an inventory built by another flow is built again."""
    import hashlib

    return hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (finn_flow, finn_model))).hexdigest()[:16]


def _streams(inventory: Path, k: int) -> tuple[int, int, int]:
    """(output stream width, words per feature map) of segment k, its head's record width, and
    the PE of its last unit when that is a weight layer (else 0)."""
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


def _as_json(c: Candidate, names: list[str], clock_mhz: float) -> dict:
    return {
        "exits": [names[k] for k in c.exits],
        "thresholds": list(c.thresholds),
        "fps": c.fps,
        "val_accuracy": c.accuracy,
        **c.resources.as_dict(),
        "interval_cycles": c.target,
        "reach": list(c.reach),
        "gate_depth": c.gate_depth if c.exits else None,
        "headroom": c.headroom if c.exits else None,
        "latency_cycles_to_exit": [round(t * clock_mhz) for t in c.latency_us],
        "latency_us_to_exit": list(c.latency_us),
        "mean_latency_cycles": c.mean_latency_us * clock_mhz,
        "mean_latency_us": c.mean_latency_us,
    }


def _write(out: Path, r: SweepResult, segments, model, backbone: str, board, budget, util) -> None:
    names = model.exit_names
    report = {
        "board": board.name,
        "utilisation_cap": util,
        "budget": budget.as_dict(),
        "chosen": {
            **_as_json(r.chosen, names, board.clock_mhz),
            "test_accuracy": r.test_accuracy,
            "fps_with_gates": r.fps_with_gates,
            "fps_with_gates_on_test_traffic": r.fps_with_gates_test,
            "gate_depth": r.gate_depth if r.chosen.exits else None,
            "gain_with_gates": r.gain_with_gates,
            "stage_resources": [Resources(*res).as_dict() for res in r.chosen.stage_resources],
            "active_bound": r.bound,
            "fps_if_reach_minus_5pp": r.sensitivity["minus"],
            "fps_if_reach_plus_5pp": r.sensitivity["plus"],
        },
        "no_exit_baseline": _as_json(r.no_exit, names, board.clock_mhz),
        # the cheapest design with exits (LUTs) matching the no-exit throughput with its finite gates
        "equal_throughput": (
            {
                **_as_json(r.equal_throughput, names, board.clock_mhz),
                "fps_with_gates": r.equal_throughput_fps,
                "lut_fraction": r.equal_throughput.resources.lut / r.no_exit.resources.lut,
            }
            if r.equal_throughput is not None
            else None
        ),
        "gain_vs_no_exit": r.gain,
        "final_exit_test_accuracy": r.final_test_accuracy,
        "finn_setfolding_baseline": r.finn_baseline,
        "gain_vs_finn_setfolding": (r.chosen.fps / r.finn_baseline["fps"]) if r.finn_baseline else None,
        "front": [
            {**_as_json(c, names, board.clock_mhz), "active_bound": b}
            for c, b in zip(r.front, r.front_bounds, strict=False)
        ],
    }
    atomic_write(out / "pareto.json", lambda p: p.write_text(json.dumps(report, indent=1)))
    save_design(_design(r.chosen, segments, backbone, board, r.gate_depth), out / "design.yaml")
    _plots(out, r, names)


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
                    policy="max_prob",
                    threshold=None if last else c.thresholds[s],
                    folding=FrozenMap(head_fold),
                ),
            )
        )
        start = end + 1
    return Design(model=backbone, board=board.name, clock_mhz=board.clock_mhz, stages=tuple(stages))


def _plots(out: Path, r: SweepResult, names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    front = sorted(r.front, key=lambda c: c.fps)
    sc = ax.scatter(
        [c.fps for c in front],
        [100 * c.accuracy for c in front],
        c=[c.resources.lut for c in front],
        cmap="viridis",
        s=18,
        label="Pareto front (colour: LUT)",
    )
    fig.colorbar(sc, ax=ax, label="LUT")
    ax.scatter(
        [r.no_exit.fps], [100 * r.no_exit.accuracy], marker="s", color="red", s=60, label="best without early exits"
    )
    if r.finn_baseline:
        ax.scatter(
            [r.finn_baseline["fps"]],
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

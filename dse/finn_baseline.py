"""Baseline (b): FINN's own SetFolding on the network without early exits, judged by FINN's own
estimator. exitflow builds the single-stage design once, then for a sweep of targets applies
``SetFolding(target_cycles_per_frame)`` to its stage and head graphs, inserts the width
converters FINN's builder would (``InsertDWC``, as exitflow's own build does), and reads
``res_estimation`` and ``exp_cycles_per_layer``; the fastest result within the budget is the
baseline. (SetFolding does not enforce SIMD >= MW/1024, so some of its foldings cannot generate HLS code:
each point says whether FINN could build it, and why not.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exitflow.core.artifacts import RunDir
from exitflow.core.design import Design, ExitHead, Stage
from exitflow.core.files import atomic_write
from exitflow.core.resources import Resources
from exitflow.core.schema import dump_yaml
from exitflow.hls_templates.registry import register_finn_ops
from exitflow.hw.build import build
from exitflow.hw.finn_flow import finn_chatter
from exitflow.hw.folding import folding_violation

TARGETS = tuple(int(v) for v in np.unique(np.round(np.geomspace(32, 2e6, 40))))


def finn_setfolding_baseline(
    run_dir: Path, model, config, board, budget: Resources, out: Path
) -> tuple[dict | None, list[dict]]:
    """(the fastest SetFolding result within the budget, every SetFolding result). What FINN says
    meanwhile (SetFolding warns about every op it does not know) goes to ``run_dir/log/finn.log``.
    The points are plain dicts (the keys of :class:`~exitflow.core.artifacts.SetFoldingPoint`,
    which the sweep makes of them)."""
    # qonnx: heavy, and needed only when the baseline is judged
    from qonnx.core.modelwrapper import ModelWrapper

    register_finn_ops()
    blocks = model.stage_blocks(model.kept_exits([]))[0]  # one stage: the whole network
    whole = Stage(name="whole", blocks=tuple(blocks), head=ExitHead(name="classifier"))
    design = Design(model=config.model.backbone, board=board.name, stages=(whole,))
    folder = out / "finn_baseline"
    atomic_write(folder / "design.yaml", lambda tmp: tmp.write_text(dump_yaml(design, set_only=True)))
    hw = folder / "hw"
    if not (hw / "build.json").exists():
        build(run_dir, folder / "design.yaml", log=lambda line: None, hw_dir=hw, vivado_project=None)
    graphs = [ModelWrapper(str(hw / graph / "model_specialized.onnx")) for graph in (whole.name, whole.head.name)]
    best, points = None, []
    with finn_chatter(RunDir(run_dir).log / "finn.log") as log_file:  # SetFolding warns hundreds of times
        log_file.write(f"== SetFolding baseline of {board.name}, targets {list(TARGETS)}\n")
        for target in TARGETS:
            point = _setfolding_point(graphs, target, board, budget)
            points.append(point)
            if point["fits"] and (best is None or point["fps"] > best["fps"]):
                best = point
    return best, points


def _setfolding_point(graphs, target: int, board, budget: Resources) -> dict:
    """SetFolding of every graph at ``target`` cycles per frame, judged by FINN's estimator."""
    # FINN and qonnx: heavy, loaded only when the baseline is judged
    from finn.analysis.fpgadataflow.exp_cycles_per_layer import exp_cycles_per_layer
    from finn.analysis.fpgadataflow.res_estimation import res_estimation
    from finn.transformation.fpgadataflow.insert_dwc import InsertDWC
    from finn.transformation.fpgadataflow.set_folding import SetFolding
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from qonnx.transformation.general import GiveUniqueNodeNames

    resources = Resources(0.0, 0.0, 0.0, 0.0)
    slowest = 0
    problems = []
    for graph in graphs:
        folded = graph.transform(SetFolding(target_cycles_per_frame=target))
        problems += _unbuildable(folded)
        # the width converters FINN's builder inserts before stitching, as exitflow's build does
        folded = folded.transform(InsertDWC()).transform(GiveUniqueNodeNames())
        folded = folded.transform(SpecializeLayers(board.part)).transform(GiveUniqueNodeNames())
        res = folded.analysis(lambda m: res_estimation(m, board.part))
        resources += Resources.total(Resources.from_finn(r) for r in res.values())
        slowest = max(slowest, max(folded.analysis(exp_cycles_per_layer).values()))
    return {
        "target_cycles": target,
        "fps": board.clock_mhz * 1e6 / slowest,
        **{key: float(value) for key, value in resources.as_dict().items()},
        "fits": resources.fits(budget),
        "buildable": not problems,
        "why_not_buildable": problems[0] if problems else None,
    }


def _unbuildable(model) -> list[str]:
    """FINN's code-generation rules (:func:`exitflow.hw.folding.folding_violation`) that a folding
    SetFolding chose breaks: it does not check SIMD >= MW/1024, which FINN's HLS MVAU asserts."""
    # qonnx: heavy, loaded only when the baseline is judged
    from qonnx.custom_op.registry import getCustomOp

    out = []
    for node in model.graph.node:
        if node.op_type.startswith("MVAU"):
            inst = getCustomOp(node)
            problem = folding_violation(
                node.name,
                inst.get_nodeattr("PE"),
                inst.get_nodeattr("SIMD"),
                inst.get_nodeattr("MW"),
                inst.get_nodeattr("MH"),
                None,
                inst.get_input_datatype(1).bitwidth(),
            )
            if problem:
                out.append(f"{node.name}: {problem[1]}")
    return out

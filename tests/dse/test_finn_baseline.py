"""dse/finn_baseline.py: FINN's own SetFolding over a sweep of targets on the single-stage design,
judged by FINN's estimator: the fastest point within the budget, and which points FINN can build."""

import copy
import shutil
import types

import numpy as np
import pytest
import yaml
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.custom_op.registry import getCustomOp

from exitflow.core.catalogue import get_board
from exitflow.dse import finn_baseline
from exitflow.dse.finn_baseline import TARGETS, _setfolding_point, _unbuildable, finn_setfolding_baseline

from ..conftest import tiny_mlp

BOARD = get_board("Pynq-Z2")


@pytest.fixture(scope="module")
def hw(tmp_path_factory):
    """The hw/ folder of a built single-stage design of a tiny two-layer net: the stage graph
    ``whole`` and its final head ``classifier`` (with its CTU), as the build leaves them."""
    from exitflow.hw.finn_flow import FlowState, run_flow

    folder = tmp_path_factory.mktemp("baseline")
    tiny_mlp(folder)
    for name, ctu in (("whole", None), ("classifier", {"policy": "max_prob", "threshold": None, "scale": 0.1})):
        state = FlowState(
            name=name, part=BOARD.part, clock_ns=10.0, layers=["a", "b"], folding={}, out=folder / "hw" / name, ctu=ctu
        )
        run_flow(folder / "g.onnx", folder / "hw" / name, state)
    (folder / "hw" / "build.json").write_text("{}")
    return folder / "hw"


def _graphs(hw):
    return [ModelWrapper(str(hw / name / "model_specialized.onnx")) for name in ("whole", "classifier")]


def test_targets_sweep_from_32_to_2_million_cycles():
    assert TARGETS[0] == 32 and TARGETS[-1] == 2_000_000
    assert list(TARGETS) == sorted(set(TARGETS)) and 30 <= len(TARGETS) <= 40
    assert all(isinstance(t, int) for t in TARGETS)


def test_a_point_is_judged_by_finns_estimator(hw):
    budget = np.array([53200.0, 280.0, 0.0, 220.0])
    fast, slow = (_setfolding_point(_graphs(hw), t, BOARD, budget) for t in (32, 100_000))
    for point in (fast, slow):
        assert set(point) == {
            *("target_cycles", "fps", "lut", "bram18", "uram", "dsp", "fits", "buildable", "why_not_buildable")
        }
        assert point["fits"] is True and point["buildable"] is True and point["why_not_buildable"] is None
        assert point["uram"] == 0.0
    assert fast["target_cycles"] == 32 and slow["target_cycles"] == 100_000
    # the unfolded layers take 8*16 = 128 cycles: a target below that folds them, one above does not
    assert slow["fps"] == pytest.approx(BOARD.clock_mhz * 1e6 / 128)
    assert fast["fps"] >= BOARD.clock_mhz * 1e6 / 32
    assert fast["lut"] > slow["lut"]
    none = _setfolding_point(_graphs(hw), 32, BOARD, np.zeros(4))
    assert none["fits"] is False and none["lut"] == fast["lut"]


class _TwoBlocks:
    """The MultiExitModel members the baseline asks, for a model of blocks fc0, fc1 whose final
    exit follows fc1: without early exits, one stage holds both blocks."""

    exit_names = ["exit0", "fc1"]

    def kept_exits(self, exits):
        return [e for e in self.exit_names[:-1] if e in exits] + [self.exit_names[-1]]

    def stage_blocks(self, kept):
        assert kept == ["fc1"]
        return [["fc0", "fc1"]]


def test_the_baseline_is_the_fastest_point_within_the_budget(hw, tmp_path, monkeypatch):
    run_dir, out = tmp_path / "run", tmp_path / "dse"
    shutil.copytree(hw, out / "finn_baseline" / "hw")  # already built: build is not called again

    def no_build(*args, **kwargs):
        raise AssertionError("the design was built again")

    monkeypatch.setattr(finn_baseline, "build", no_build)
    monkeypatch.setattr(finn_baseline, "TARGETS", (32, 64, 100_000))
    model = _TwoBlocks()
    config = types.SimpleNamespace(model=types.SimpleNamespace(backbone="lenet"))
    roomy = np.array([1e9, 1e9, 1e9, 1e9])
    best, points = finn_setfolding_baseline(run_dir, model, config, BOARD, roomy, out)
    assert [p["target_cycles"] for p in points] == [32, 64, 100_000]
    assert best == max(points, key=lambda p: p["fps"]) and best["target_cycles"] == 32
    design = yaml.safe_load((out / "finn_baseline" / "design.yaml").read_text())
    assert design == {
        "model": "lenet",
        "board": "Pynq-Z2",
        "stages": [{"name": "whole", "blocks": ["fc0", "fc1"], "head": {"name": "classifier"}}],
    }
    log = (run_dir / "log" / "finn.log").read_text()
    assert "== SetFolding baseline of Pynq-Z2, targets [32, 64, 100000]" in log
    # a budget only the slowest point fits: that one; none: no baseline
    tight = np.array([points[2]["lut"], points[2]["bram18"], 0.0, points[2]["dsp"]])
    assert points[0]["lut"] > tight[0]
    best, _ = finn_setfolding_baseline(run_dir, model, config, BOARD, tight, out)
    assert best is not None and best["target_cycles"] == 100_000
    best, points = finn_setfolding_baseline(run_dir, model, config, BOARD, np.zeros(4), out)
    assert best is None and not any(p["fits"] for p in points)


def test_a_folding_finn_cannot_generate_is_named(hw):
    graph = _graphs(hw)[0]
    assert _unbuildable(graph) == []
    broken = copy.deepcopy(graph)
    node = next(n for n in broken.graph.node if n.op_type.startswith("MVAU"))
    inst = getCustomOp(node)
    inst.set_nodeattr("MW", 4096)  # SIMD 1 is below MW/1024 = 4
    inst.set_nodeattr("SIMD", 1)
    (problem,) = _unbuildable(broken)
    assert problem.startswith(f"{node.name}: 1 is below MW/1024 = 4 for {node.name}")

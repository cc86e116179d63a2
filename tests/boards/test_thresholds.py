"""Thresholds set at run time on a built design: the registers in the block design and driver.json,
the driver's register writes and predictions (numpy alone, as on the board), and
`exitflow predict`."""

import dataclasses
import json
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from exitflow.boards.driver import ExitflowAccelerator, register_writes
from exitflow.core.errors import ConfigError
from exitflow.cosim.thresholds import ThresholdModel
from exitflow.hls_templates.records import THRESHOLD_REGISTER_OFFSET


@pytest.fixture(scope="module")
def run_dir(agreement_built):
    """The shared agreement design (tests/boards/conftest.py): conv0 max_prob at 0.9, fc0
    agreement at 0.8, the final exit fc1; profiled, built, in a folder with a space."""
    return agreement_built.parent


class FakeOverlay:
    """What the driver needs of a pynq Overlay, without a board."""

    dma = object()
    ip_dict: dict = {}


def test_block_design_wires_one_register_per_early_exit(run_dir):
    tcl = (run_dir / "hw" / "vivado" / "block_design.tcl").read_text()
    assert "CONFIG.NUM_MI {4}" in tcl  # the DMA, the id source, two CTU registers
    wired = re.findall(r"ctrl_sc/(M\d\d)_AXI\] \[get_bd_intf_pins (\w+)/(\w+)\]", tcl)
    assert wired == [
        ("M00", "dma", "S_AXI_LITE"),
        ("M01", "ids", "s_axi_control"),
        ("M02", "exit0", "s_axi_control_0"),
        ("M03", "exit1", "s_axi_control_0"),
    ]
    assert "final/s_axi_control" not in tcl  # the final exit takes every sample: no register


def test_driver_json_names_each_register_as_the_ctu_holds_it(run_dir):
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    from exitflow.hls_templates.registry import register_finn_ops

    register_finn_ops()
    data = json.loads((run_dir / "hw" / "driver.json").read_text())
    regs = {r["name"]: r for r in data["registers"]}
    assert list(regs) == ["conv0", "fc0"] and [r["head"] for r in regs.values()] == ["exit0", "exit1"]
    model = ThresholdModel.load(run_dir / "hw" / "driver.json")
    for reg in model.exits:
        ctu = getCustomOp(ModelWrapper(str(run_dir / "hw" / reg.head / "model_hw.onnx")).graph.node[-1]).params()
        assert (reg.policy, reg.scale, reg.code_bits, reg.threshold) == (
            ctu.policy,
            ctu.scale,
            ctu.code_bits,
            ctu.threshold,
        )
        for t in (0.3, 0.5, 0.75, 0.9, 0.97, 1.0):  # the constant a CTU built for t would compile
            assert reg.constant(t) == dataclasses.replace(ctu, threshold=t).threshold_constant


def test_prediction_at_the_design_thresholds_is_what_cosim_predicts(run_dir):
    from exitflow.cosim.functional import load_built, predicted_fractions
    from exitflow.dse.throughput import simulate_design

    model = ThresholdModel.load(run_dir / "hw" / "driver.json")
    p = model.predict()
    fractions, _ = predicted_fractions(load_built(run_dir, run_dir / "design.yaml"))
    assert np.allclose(p.fractions, fractions, atol=1e-6)
    simulated = simulate_design(run_dir, run_dir / "design.yaml", model.taken())
    assert p.fps == simulated.simulated_fps and p.design_fps == p.fps and p.warnings == []
    lower = model.predict({"conv0": 0.5})
    assert lower.fractions[0] >= p.fractions[0] and lower.thresholds == {"conv0": 0.5, "fc0": 0.8}


DECOY = textwrap.dedent(
    """
    import importlib.abc, json, sys, warnings

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "finn", "qonnx", "onnx", "brevitas", "yaml", "jinja2", "scipy", "pynq"}:
                raise ImportError(f"{name} is not on the board")

    sys.meta_path.insert(0, Refuse())
    from exitflow.boards.driver import ExitflowAccelerator

    class Overlay:
        dma = object()
        ip_dict = {}

    acc = ExitflowAccelerator("exitflow.bit", sys.argv[1], overlay=Overlay())
    writes = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = acc.set_thresholds({"conv0": 0.6, "exit1": 0.95}, write=lambda *w: writes.append(w))
    print(json.dumps({"writes": writes, "prediction": p.to_data(), "warned": len(caught),
                      "loaded": sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "yaml", "qonnx"})}))
    """
)


def test_driver_on_the_board_needs_numpy_alone(run_dir, tmp_path):
    """driver.json and driver.npz copied to a deploy folder; the driver imported with torch, FINN,
    QONNX, yaml and pynq refused: it writes the registers and predicts from those two files."""
    deploy = tmp_path / "deploy folder"
    deploy.mkdir()
    for name in ("driver.json", "driver.npz"):
        shutil.copy(run_dir / "hw" / name, deploy / name)
    out = subprocess.run(
        [sys.executable, "-c", DECOY, str(deploy / "driver.json")], capture_output=True, text=True, cwd=deploy
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    assert got["loaded"] == []
    model = ThresholdModel.load(run_dir / "hw" / "driver.json")
    c0, c1 = (reg.constant(t) for reg, t in zip(model.exits, (0.6, 0.95), strict=True))
    bits = [reg.code_bits for reg in model.exits]
    assert [tuple(w) for w in got["writes"]] == [
        ("exit0", THRESHOLD_REGISTER_OFFSET, (1 << bits[0]) | c0),
        ("exit1", THRESHOLD_REGISTER_OFFSET, (1 << bits[1]) | c1),
    ]
    assert got["prediction"] == model.predict({"conv0": 0.6, "fc0": 0.95}).to_data()


def test_set_thresholds_checks_everything_before_writing(run_dir):
    acc = ExitflowAccelerator("x.bit", run_dir / "hw" / "driver.json", overlay=FakeOverlay())
    writes = []
    for bad, message in [
        ({"conv0": 0.7, "fc1": 0.5}, "unknown exit 'fc1'"),
        ({"conv0": 0.7, "fc0": 1.5}, r"exit fc0: agreement threshold must be in \(0, 1\]"),
    ]:
        with pytest.raises(ConfigError, match=message):
            acc.set_thresholds(bad, write=lambda *w: writes.append(w))
    assert writes == [] and acc.thresholds == {"conv0": 0.9, "fc0": 0.8}
    acc.set_thresholds({"conv0": 0.7}, write=lambda *w: writes.append(w))
    assert acc.thresholds == {"conv0": 0.7, "fc0": 0.8} and len(writes) == 1
    acc.set_thresholds({"conv0": None}, write=lambda *w: writes.append(w))  # back to the design's value
    assert writes[-1] == ("exit0", THRESHOLD_REGISTER_OFFSET, 0) and acc.thresholds["conv0"] == 0.9
    assert register_writes(acc.registers, {}) == []


def test_predict_command(run_dir, exitflow_cmd):
    def predict(*args):
        return subprocess.run(
            [*exitflow_cmd, "predict", run_dir.name, *args], capture_output=True, text=True, cwd=run_dir.parent
        )

    out = predict("--thresholds", "conv0=0.6", "fc0=design")
    assert out.returncode == 0, out.stderr
    assert re.search(r"^conv0\s+0\.6 \(was 0\.9\)", out.stdout, re.M) and "samples/s with the built gates" in out.stdout
    data = json.loads(predict("--thresholds", "conv0=0.6,fc0=0.8", "--json").stdout)
    model = ThresholdModel.load(run_dir / "hw" / "driver.json")
    assert data == model.predict({"conv0": 0.6}).to_data()
    for args, message in [
        (["--thresholds", "fc1=0.5"], "unknown exit 'fc1'"),
        (["--thresholds", "conv0=high"], "conv0=high is not a number"),
        (["--thresholds", "conv0"], "expected EXIT=VALUE"),
        (["--thresholds", "conv0=1.5"], r"max_prob threshold must be in \(0, 1\]"),
    ]:
        bad = predict(*args)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert re.search(message, bad.stderr), bad.stderr


def test_predict_without_a_build_is_one_line(tmp_path, exitflow_cmd):
    (tmp_path / "empty run").mkdir()
    out = subprocess.run([*exitflow_cmd, "predict", "empty run"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and "no finished build" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_the_report_shows_what_other_thresholds_would_do(run_dir):
    from exitflow.app.report import RUN_TIME_THRESHOLDS, collect, render

    data = collect(run_dir)
    model = ThresholdModel.load(run_dir / "hw" / "driver.json")
    header, design, *others = data.thresholds
    assert header.cells == ("conv0", "fc0", "fc1") and len(others) == len(RUN_TIME_THRESHOLDS)
    p = model.predict()
    assert design.cells[-3:] == (f"{100 * p.accuracy:.2f} %", f"{p.fps:,.0f}", p.pace)
    for row, t in zip(others, RUN_TIME_THRESHOLDS, strict=True):
        q = model.predict({"conv0": t, "fc0": t})
        assert row.label == f"{t:g} on conv0, fc0" and row.cells[-2] == f"{q.fps:,.0f}"
    assert 'id="thresholds-table"' in render(data)

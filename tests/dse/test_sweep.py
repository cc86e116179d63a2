"""`exitflow sweep` end to end on a small run: files, constraints, and a design `build` accepts."""

import json
import subprocess

import pytest
import yaml

from exitflow.design import load_design


@pytest.fixture(scope="module")
def swept(digits_run, exitflow_cmd):
    from exitflow.quant.profile import profile

    profile(digits_run, plot=False)
    out = subprocess.run([*exitflow_cmd, "sweep", str(digits_run), "--board", "Pynq-Z2"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return digits_run, out.stdout


@pytest.mark.slow
def test_sweep_writes_its_outputs(swept):
    run, stdout = swept
    assert "chosen: exits" in stdout and "the best design without early exits" in stdout
    for name in ("pareto.json", "pareto.png", "resources.png", "design.yaml"):
        assert (run / "sweep" / name).exists(), name
    report = json.loads((run / "sweep" / "pareto.json").read_text())
    budget = report["budget"]
    chosen = report["chosen"]
    assert chosen["lut"] <= budget["lut"] and chosen["bram18"] <= budget["bram18"] and chosen["dsp"] <= budget["dsp"]
    assert chosen["val_accuracy"] >= report["no_exit_baseline"]["val_accuracy"] - 0.01 - 1e-9  # 1 pp floor
    assert chosen["fps"] >= report["no_exit_baseline"]["fps"]  # the no-exit design is a candidate too
    assert report["gain_vs_no_exit"] == pytest.approx(chosen["fps"] / report["no_exit_baseline"]["fps"])
    assert len(report["front"]) >= 1
    # latency to each kept exit, in cycles and microseconds at the board's clock; the early one answers first
    assert len(chosen["latency_cycles_to_exit"]) == len(chosen["exits"]) + 1
    assert chosen["latency_cycles_to_exit"] == sorted(chosen["latency_cycles_to_exit"])
    assert chosen["latency_cycles_to_exit"][-1] == round(chosen["latency_us_to_exit"][-1] * 100.0)  # Pynq-Z2: 100 MHz
    assert chosen["mean_latency_cycles"] == pytest.approx(chosen["mean_latency_us"] * 100.0)
    bounds = [d["active_bound"] for d in report["front"]] + [chosen["active_bound"]]
    assert all(b.startswith(("resource budget", "streaming floor", "folding-legality limit", "the ")) for b in bounds)
    finn = report["finn_setfolding_baseline"]
    assert finn is not None and finn["lut"] <= budget["lut"] and finn["fps"] > 0
    assert report["gain_vs_finn_setfolding"] == pytest.approx(chosen["fps"] / finn["fps"])
    assert chosen["fps_if_reach_plus_5pp"] <= chosen["fps"] * (1 + 1e-9) <= chosen["fps_if_reach_minus_5pp"] * (1 + 1e-6) + 1e-6
    # the chosen design's gate depth and headroom are search variables; its gates are in its budget
    if chosen["exits"]:
        assert chosen["gate_depth"] >= 2 and chosen["headroom"] >= 1.0
    else:  # no gates in a design without exits
        assert chosen["gate_depth"] is None and chosen["headroom"] is None
    assert chosen["fps_with_gates"] <= chosen["fps"] * (1 + 1e-9)
    # the cheapest design with exits matching the no-exit throughput with its finite gates
    equal = report["equal_throughput"]
    assert equal is not None
    assert equal["exits"] and equal["fps_with_gates"] >= report["no_exit_baseline"]["fps"]
    assert equal["lut_fraction"] == pytest.approx(equal["lut"] / report["no_exit_baseline"]["lut"])
    assert equal["val_accuracy"] >= report["no_exit_baseline"]["val_accuracy"] - 0.01 - 1e-9


@pytest.mark.slow
def test_chosen_design_builds(swept, exitflow_cmd):
    run, _ = swept
    design = load_design(run / "sweep" / "design.yaml")
    assert design.board == "Pynq-Z2" and design.model == "lenet"
    out = subprocess.run([*exitflow_cmd, "build", str(run), "--design", str(run / "sweep" / "design.yaml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    built = json.loads((run / "hw" / "build.json").read_text())
    assert [g["name"] for g in built["graphs"] if g["kind"] == "stage"] == [s.name for s in design.stages]


def test_sweep_needs_a_profile(tmp_path, digits_run, exitflow_cmd):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(digits_run, run, ignore=shutil.ignore_patterns("hw", "stages", "sweep", "profile.*"))
    out = subprocess.run([*exitflow_cmd, "sweep", str(run), "--board", "Pynq-Z2"], capture_output=True, text=True)
    assert out.returncode == 2 and "profile.npz: not found; run `exitflow profile" in out.stderr
    bad = subprocess.run([*exitflow_cmd, "sweep", str(run), "--board", "Pynq-Z9"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown board 'Pynq-Z9'" in bad.stderr
    util = subprocess.run([*exitflow_cmd, "sweep", str(run), "--board", "Pynq-Z2", "--util", "1.5"], capture_output=True, text=True)
    assert util.returncode == 2 and "--util: must be in (0, 1]" in util.stderr


@pytest.mark.slow
def test_constraints_no_design_meets_name_the_closest(swept, exitflow_cmd):
    run, _ = swept
    out = subprocess.run([*exitflow_cmd, "sweep", str(run), "--board", "Pynq-Z2", "--min-accuracy", "1.01"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "accuracy floor 1.0100: no design reaches it; the closest reaches" in out.stderr
    out = subprocess.run([*exitflow_cmd, "sweep", str(run), "--board", "Pynq-Z2", "--max-latency-us", "0.001"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "latency limit 0.001 us: no design meets it" in out.stderr

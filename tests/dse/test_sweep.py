"""`exitflow sweep` end to end on a small run: files, constraints, and a design `build` accepts."""

import json
import subprocess

import numpy as np
import pytest

from exitflow.core.design import load_design
from exitflow.dse.fifo_pricing import fifo_resources


@pytest.fixture(scope="module")
def swept(digits_run, exitflow_cmd):
    from exitflow.quant.profile import profile

    profile(digits_run, plot=False)
    # the point estimate (--confidence 1): 270 validation samples cannot certify early exits at
    # 1 pp (test_default_sweep_certifies_the_floor), and these tests need a design with exits
    out = subprocess.run(
        [*exitflow_cmd, "sweep", str(digits_run), "--board", "Pynq-Z2", "--confidence", "1"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    SWEEP_STDERR.append(out.stderr)
    return digits_run, out.stdout


SWEEP_STDERR: list[str] = []  # what the `swept` sweep printed on stderr


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
    # a point estimate: no certificate, the drops on both splits
    assert report["certificate"] is None and chosen["certified_at"] is None and chosen["p_value"] is None
    final_val = report["no_exit_baseline"]["val_accuracy"]
    assert chosen["val_drop_pp"] == pytest.approx(100 * (final_val - chosen["val_accuracy"]))
    assert chosen["test_drop_pp"] == pytest.approx(100 * (report["final_exit_test_accuracy"] - chosen["test_accuracy"]))
    assert "accuracy floor met on the validation split (a point estimate, --confidence 1)" in stdout
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
    assert (
        chosen["fps_if_reach_plus_5pp"]
        <= chosen["fps"] * (1 + 1e-9)
        <= chosen["fps_if_reach_minus_5pp"] * (1 + 1e-6) + 1e-6
    )
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
    # it is a design the board holds, its FIFOs as the build sizes them included
    assert all(equal[k] <= budget[k] + 1e-9 for k in ("lut", "bram18", "uram", "dsp"))
    assert equal["lut_fraction"] == pytest.approx(equal["lut"] / report["no_exit_baseline"]["lut"])
    assert equal["val_accuracy"] >= report["no_exit_baseline"]["val_accuracy"] - 0.01 - 1e-9


@pytest.mark.slow
def test_chosen_design_builds(swept, exitflow_cmd):
    run, _ = swept
    design = load_design(run / "sweep" / "design.yaml")
    assert design.board == "Pynq-Z2" and design.model == "lenet"
    out = subprocess.run(
        [*exitflow_cmd, "build", str(run), "--design", str(run / "sweep" / "design.yaml")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    built = json.loads((run / "hw" / "build.json").read_text())
    assert [g["name"] for g in built["graphs"] if g["kind"] == "stage"] == [s.name for s in design.stages]
    # the FIFOs the sweep counted for the chosen design are those the build sized
    reported = json.loads((run / "sweep" / "pareto.json").read_text())["chosen"]["stage_fifos"]
    sized = [fifo_resources(run / "hw" / s.name) + fifo_resources(run / "hw" / s.head.name) for s in design.stages]
    assert [list(f.values()) for f in reported] == [f.tolist() for f in sized]


@pytest.mark.slow
def test_default_sweep_certifies_the_floor(swept, exitflow_cmd, tmp_path):
    """At the default confidence 0.9, every design says how it keeps the floor; on 216 testing
    samples even a design without a single loss cannot be certified at 1 pp (p > 0.1), so the
    chosen design has no early exits and the sweep says why."""
    import shutil

    run = tmp_path / "run with spaces"
    shutil.copytree(swept[0], run, ignore=shutil.ignore_patterns("hw", "stages"))
    out = subprocess.run([*exitflow_cmd, "sweep", str(run), "--board", "Pynq-Z2"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    report = json.loads((run / "sweep" / "pareto.json").read_text())
    cert, chosen = report["certificate"], report["chosen"]
    assert cert["confidence"] == 0.9 and cert["floor"] == "drop <= 1 pp below the final exit"
    val = len(np.load(run / "profile.npz")["val_labels"])
    assert cert["ordering_samples"] + cert["testing_samples"] == val and cert["testing_samples"] > 0.7 * val
    assert 1 <= cert["tested"] <= cert["configurations"]
    assert cert["certified"] == cert["tested"] - 1  # the sequence stopped at its first failure
    if cert["certified"] == 0:
        assert chosen["exits"] == [] and chosen["p_value"] is None
        assert "none with early exits: 216 validation samples tested them" in out.stdout
    # without early exits the drop is 0 by definition: certified without a test
    assert chosen["certified_at"] == "drop <= 1 pp below the final exit, confidence 0.9" or chosen["exits"]
    designs = [*report["front"], report["no_exit_baseline"], chosen]
    for d in designs:
        if d["exits"] and d["certified_at"] is not None:
            assert d["p_value"] <= 0.1
        if d["p_value"] is not None and d["p_value"] > 0.1:
            assert d["certified_at"] is None
    assert "accuracy floor (drop <= 1 pp below the final exit) at confidence 0.9: the chosen design" in out.stdout


DROP = 0.2  # pp: the digits run's configurations drop 0 or 0.37 pp on validation, so some keep it and some not


@pytest.mark.slow
def test_costing_only_what_keeps_the_floor_changes_nothing(swept, tmp_path):
    """The sweep costs only the threshold configurations that keep the accuracy floor (and the
    designs without exits); costing every one (``exhaustive``) finds the same chosen design, the
    same best design without exits, the same equal-throughput design and the same front."""
    import shutil

    from exitflow.dse.sweep import _key, sweep

    run = tmp_path / "run"
    shutil.copytree(swept[0], run, ignore=shutil.ignore_patterns("hw", "stages"))

    def seen(c):
        return None if c is None else (_key(c), c.fps, c.accuracy, tuple(c.resources), c.gate_depth, c.headroom)

    found = {}
    for exhaustive in (False, True):
        found[exhaustive] = sweep(
            run,
            "Pynq-Z2",
            confidence=1.0,
            max_drop_pp=DROP,
            policy=("max_prob", "agreement"),
            log=print,
            exhaustive=exhaustive,
        )
    lean, full = found[False], found[True]
    for name in ("chosen", "no_exit", "equal_throughput"):
        assert seen(getattr(lean, name)) == seen(getattr(full, name)), name
    assert [seen(c) for c in lean.front] == [seen(c) for c in full.front]
    assert lean.fps_with_gates == full.fps_with_gates
    assert any(c.exits for c in lean.front) and all(not c.exits or lean.floor.admits(c) for c in lean.front)
    stats, every = lean.search_stats, full.search_stats
    assert stats["configurations"] == every["configurations"] == every["costed_configurations"]
    assert stats["costed_configurations"] < every["costed_configurations"]
    assert stats["designs"] < every["designs"]


def test_sweep_needs_a_profile(tmp_path, digits_run, exitflow_cmd):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(digits_run, run, ignore=shutil.ignore_patterns("hw", "stages", "sweep", "profile.*"))
    out = subprocess.run([*exitflow_cmd, "sweep", str(run), "--board", "Pynq-Z2"], capture_output=True, text=True)
    assert out.returncode == 2 and "profile.npz: not found; run `exitflow profile" in out.stderr
    bad = subprocess.run([*exitflow_cmd, "sweep", str(run), "--board", "Pynq-Z9"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown board 'Pynq-Z9'" in bad.stderr
    util = subprocess.run(
        [*exitflow_cmd, "sweep", str(run), "--board", "Pynq-Z2", "--util", "1.5"], capture_output=True, text=True
    )
    assert util.returncode == 2 and "--util: must be in (0, 1]" in util.stderr


@pytest.mark.slow
def test_constraints_no_design_meets_name_the_closest(swept, exitflow_cmd):
    run, _ = swept
    out = subprocess.run(
        [*exitflow_cmd, "sweep", str(run), "--board", "Pynq-Z2", "--min-accuracy", "1.0"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "accuracy floor (accuracy >= 1): no design is certified at confidence 0.9; the closest" in out.stderr
    closest = out.stderr.split("the closest")[1]
    assert "on validation" in closest and "(exits: " in closest and "[" not in closest  # names, not indices
    point = subprocess.run(
        [*exitflow_cmd, "sweep", str(run), "--board", "Pynq-Z2", "--min-accuracy", "1.0", "--confidence", "1"],
        capture_output=True,
        text=True,
    )
    assert point.returncode == 2 and "accuracy floor (accuracy >= 1): no design reaches it" in point.stderr
    for bad in ("0", "1.5", "nan"):
        out = subprocess.run(
            [*exitflow_cmd, "sweep", str(run), "--board", "Pynq-Z2", "--confidence", bad],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 2 and out.stderr.count("\n") == 1
        assert "--confidence: must be a probability in (0, 1]" in out.stderr
    out = subprocess.run(
        [*exitflow_cmd, "sweep", str(run), "--board", "Pynq-Z2", "--max-latency-us", "0.001"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "latency limit 0.001 us: no design meets it" in out.stderr


def _damaged_profiles(good: bytes):
    import io

    import numpy as np

    with np.load(io.BytesIO(good)) as npz:
        arrays = {k: npz[k] for k in npz.files}
    wrong_shape = dict(arrays, val_correct=arrays["val_correct"][:, :1])
    no_codes = {k: v for k, v in arrays.items() if not k.startswith("val_code")}
    no_samples = dict(arrays, **{k: v[:0] for k, v in arrays.items() if k.startswith("test_")})

    def npz_bytes(data):
        buffer = io.BytesIO()
        np.savez(buffer, **data)
        return buffer.getvalue()

    return {
        "empty": (b"", "profile.npz: empty file; run `exitflow profile"),
        "truncated": (good[: len(good) // 2], "profile.npz: unreadable, truncated or not an .npz"),
        "random bytes": (np.random.default_rng(0).bytes(5000), "profile.npz: unreadable, truncated or not an .npz"),
        "other keys": (
            npz_bytes({"x": np.zeros(3), "y": np.ones(3)}),
            "profile.npz: not a profile exitflow wrote (lacks exit_names, frac_bits, scales, logit_bits, ...)",
        ),
        "no codes": (
            npz_bytes(no_codes),
            "profile.npz: not a profile exitflow wrote (lacks val_code_max_prob, val_code_margin)",
        ),
        "wrong shape": (npz_bytes(wrong_shape), "profile.npz: val_correct has shape"),
        "no samples": (npz_bytes(no_samples), "profile.npz: test_labels has shape (0,)"),
    }


@pytest.fixture(scope="module")
def profiled_copy(digits_run, tmp_path_factory):
    """A copy of the digits run with its profile, so that the tests may damage the profile."""
    import shutil

    from exitflow.quant.profile import profile

    run = tmp_path_factory.mktemp("damaged") / "run"
    shutil.copytree(digits_run, run, ignore=shutil.ignore_patterns("hw", "stages", "sweep", "profile.*", "cosim"))
    profile(run, plot=False)
    return run, (run / "profile.npz").read_bytes()


@pytest.mark.parametrize(
    "damage", ["empty", "truncated", "random bytes", "other keys", "no codes", "wrong shape", "no samples"]
)
def test_a_damaged_profile_is_one_line(profiled_copy, exitflow_cmd, damage):
    from exitflow.core.errors import ConfigError
    from exitflow.quant.profile import load_profile

    run, good = profiled_copy
    content, message = _damaged_profiles(good)[damage]
    (run / "profile.npz").write_bytes(content)
    try:
        with pytest.raises(ConfigError) as err:
            load_profile(run)
        assert message in str(err.value) and "\n" not in str(err.value)
        out = subprocess.run([*exitflow_cmd, "sweep", str(run), "--board", "Pynq-Z2"], capture_output=True, text=True)
        assert out.returncode == 2, out.stderr
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
        assert out.stderr.startswith("exitflow sweep: error: ") and message in out.stderr
        assert f"run `exitflow profile {run}` again" in out.stderr
        assert (run / "profile.npz").read_bytes() == content  # nothing written over it
        assert not (run / "sweep").exists()
    finally:
        (run / "profile.npz").write_bytes(good)
    assert set(load_profile(run)) >= {"exit_names", "val_code_max_prob", "test_logits"}  # the real one reads


def test_sweep_refuses_a_negative_max_exits_from_python(digits_run):
    from exitflow.core.errors import ConfigError
    from exitflow.dse.sweep import sweep

    with pytest.raises(ConfigError, match=r"--max-exits: must be an integer >= 0 \(early exits per design\); got -1"):
        sweep(digits_run, "Pynq-Z2", max_exits=-1)
    with pytest.raises(ConfigError, match=r"--max-exits: at most 14 \(the block design .*\); got 15"):
        sweep(digits_run, "Pynq-Z2", max_exits=15)


@pytest.mark.slow
def test_finn_chatter_goes_to_the_log_not_the_terminal(swept):
    run, stdout = swept
    printed = SWEEP_STDERR[0] + stdout
    assert "doesn't know how to handle" not in printed and "op_type" not in printed, printed[:2000]
    assert "WARNING" not in printed and "Warning" not in printed, printed[:2000]
    assert SWEEP_STDERR[0] == "", SWEEP_STDERR[0][:2000]  # not on a terminal: no bar, nothing at all
    log = (run / "log" / "finn.log").read_text()
    assert "== SetFolding baseline of Pynq-Z2" in log
    assert "SetFolding doesn't know how to handle op_type ConfidenceThreshold" in log
    assert log.count("\n") > 10


def test_finn_chatter_catches_loggers_prints_and_warnings(tmp_path, capfd):
    import logging
    import sys
    import warnings

    from exitflow.hw.finn_flow import finn_chatter

    finn_log = logging.getLogger("finn_logger")
    before = (finn_log.handlers[:], finn_log.propagate, finn_log.level)
    path = tmp_path / "log" / "finn.log"
    path.parent.mkdir()
    path.write_text("earlier run\n")
    with finn_chatter(path):
        finn_log.warning("SetFolding doesn't know how to handle op_type ConfidenceThreshold_hls")
        logging.getLogger("qonnx.transformation").warning("a qonnx warning")
        print("a FINN print")
        sys.stderr.write("a FINN stderr line\n")
        warnings.warn("a FINN UserWarning", stacklevel=1)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    log = path.read_text()
    assert log.startswith("earlier run\n")  # appended, nothing already written is lost
    for line in (
        "WARNING finn_logger: SetFolding doesn't know how to handle op_type ConfidenceThreshold_hls",
        "WARNING qonnx.transformation: a qonnx warning",
        "a FINN print",
        "a FINN stderr line",
        "a FINN UserWarning",
    ):
        assert line in log, line
    assert (finn_log.handlers, finn_log.propagate, finn_log.level) == before

"""`exitflow cosim` through the console script: the report, the exit codes, and bad input that
leaves an earlier report untouched."""

import json
import shutil
import subprocess

import pytest
import yaml


def run(cmd, *args):
    return subprocess.run([*cmd, *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def run_copy(lenet_built, tmp_path_factory):
    """A copy of a built lenet run, so that the tests may break it."""
    run_dir, design = lenet_built
    copy = tmp_path_factory.mktemp("cli") / "run"
    shutil.copytree(run_dir, copy)
    return copy, copy / "design.yaml"


@pytest.mark.slow
def test_cosim_writes_the_report(exitflow_cmd, run_copy):
    run_dir, design = run_copy
    out = run(exitflow_cmd, "cosim", str(run_dir), "--design", str(design), "--reference-samples", "5")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("bit-exact: vectorised ") and f"wrote {run_dir}/cosim/report.json" in out.stdout
    report = json.loads((run_dir / "cosim" / "report.json").read_text())
    assert report["bit_exact"] is True and report["mismatch_count"] == 0 and report["mismatches"] == []
    assert set(report["engines"]) == {"vectorised", "finn"}
    assert report["engines"]["finn"]["samples"] == 5 == report["engines_compared"]
    assert (
        report["engines"]["vectorised"]["matches_model"]
        == report["samples"]
        == report["engines"]["vectorised"]["samples"]
    )
    fractions = report["exit_fractions"]
    assert sum(fractions["measured"]) == pytest.approx(1.0) and len(fractions["measured"]) == 2
    assert fractions["predicted"] == pytest.approx(fractions["measured"])  # whole test split, from profile.npz
    assert fractions["predicted_from"].endswith("(test split, 269 samples)")


def _bad(exitflow_cmd, run_dir, *args):
    report = run_dir / "cosim" / "report.json"
    before = report.read_bytes() if report.exists() else None
    out = run(exitflow_cmd, "cosim", str(run_dir), *args)
    assert out.returncode == 2, out.stderr
    assert out.stdout == "" and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert (report.read_bytes() if report.exists() else None) == before  # an earlier report stays as it was
    return out.stderr.strip()


@pytest.mark.slow
def test_bad_sample_counts(exitflow_cmd, run_copy):
    run_dir, design = run_copy
    assert (
        _bad(exitflow_cmd, run_dir, "--design", str(design), "--samples", "0")
        == "exitflow cosim: error: --samples: must be a positive number of test samples; got 0"
    )
    assert (
        _bad(exitflow_cmd, run_dir, "--design", str(design), "--samples", "100000")
        == "exitflow cosim: error: --samples: 100000 is not in 1..269, the size of the test split"
    )


@pytest.mark.slow
def test_design_for_another_model(exitflow_cmd, run_copy, tmp_path):
    run_dir, design = run_copy
    data = yaml.safe_load(design.read_text())
    data["model"] = "cnv"
    other = tmp_path / "cnv.yaml"
    other.write_text(yaml.safe_dump(data))
    err = _bad(exitflow_cmd, run_dir, "--design", str(other))
    assert (
        err == f"exitflow cosim: error: {other}: model: the design is for 'cnv', the run folder holds a 'lenet' model"
    )


@pytest.mark.slow
def test_hardware_from_another_design(exitflow_cmd, run_copy, tmp_path):
    run_dir, design = run_copy
    data = yaml.safe_load(design.read_text())
    data["stages"][0]["head"]["threshold"] = 0.5
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(data))
    err = _bad(exitflow_cmd, run_dir, "--design", str(other))
    assert "the hardware is from another design: build it with `exitflow build" in err


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_missing_or_corrupt_stage_file(exitflow_cmd, run_copy, tmp_path, damage):
    run_dir, design = run_copy
    broken = tmp_path / "run"
    shutil.copytree(run_dir, broken)
    graph = broken / "hw" / "s1" / "model_hw.onnx"
    if damage == "missing":
        graph.unlink()
    else:
        graph.write_bytes(b"not an onnx file")
    err = _bad(exitflow_cmd, broken, "--design", str(design))
    expected = "missing" if damage == "missing" else "corrupt ONNX file (DecodeError)"
    assert err.startswith(f"exitflow cosim: error: {graph}: {expected}") and "exitflow build" in err


@pytest.mark.slow
def test_mismatch_exits_4_with_the_report(exitflow_cmd, run_copy, tmp_path):
    import numpy as np
    from qonnx.core.modelwrapper import ModelWrapper

    run_dir, design = run_copy
    broken = tmp_path / "run"
    shutil.copytree(run_dir, broken)
    path = broken / "hw" / "exit1" / "model_hw.onnx"
    model = ModelWrapper(str(path))
    node = model.graph.node[0]
    w = model.get_initializer(node.input[1])
    model.set_initializer(node.input[1], np.where(w == w.max(), w.min(), w.max()).astype(w.dtype))
    model.save(str(path))
    out = run(exitflow_cmd, "cosim", str(broken), "--design", str(design), "--engine", "vectorised")
    assert out.returncode == 4, out.stderr
    assert out.stderr.count("\n") == 1 and "samples differ; first: sample " in out.stderr
    report = json.loads((broken / "cosim" / "report.json").read_text())
    assert report["bit_exact"] is False and report["mismatch_count"] > 0
    first = report["mismatches"][0]
    assert first["graph"] == "head exit1" and first["layer"] == "classifier" and first["element"] is not None
    assert set(report["engines"]) == {"vectorised"}


@pytest.mark.slow
def test_cycle_adds_the_pipeline_simulation(exitflow_cmd, run_copy):
    run_dir, design = run_copy
    out = run(exitflow_cmd, "cosim", str(run_dir), "--design", str(design), "--engine", "vectorised", "--cycle")
    assert out.returncode == 0, out.stderr
    assert "cycle simulation: " in out.stdout and "predicted by the dse model (ratio " in out.stdout
    report = json.loads((run_dir / "cosim" / "report.json").read_text())
    cycle = report["cycle"]
    assert cycle["simulated_fps"] > 0 and cycle["predicted_fps"] > 0
    assert cycle["ratio"] == pytest.approx(cycle["simulated_fps"] / cycle["predicted_fps"], rel=1e-3)
    assert [lat["name"] for lat in cycle["latency"]] == report["exits"]
    measured = report["exit_fractions"]["measured"]
    assert cycle["reach"][1] == pytest.approx(1 - measured[0], abs=1e-5)
    for lat in cycle["latency"]:
        assert lat["p50_cycles"] <= lat["p99_cycles"]
        assert lat["mean_us"] == pytest.approx(lat["mean_cycles"] / cycle["clock_mhz"], abs=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize(
    "content, message",
    [
        ("[1, 2]", 'expected {"layers": {layer name: FINN node name}}, got a JSON list'),
        ('{"layers": ["conv0"]}', "got 'layers' of type list"),
        ('{"layers": {"conv0": 3}}', "got 'conv0': 3"),
        ('{"nodes": {}}', "got no 'layers' key"),
        ("{not json", "unreadable or not JSON (JSONDecodeError)"),
    ],
)
def test_layers_json_of_the_wrong_shape(exitflow_cmd, run_copy, tmp_path, content, message):
    run_dir, design = run_copy
    broken = tmp_path / "run"
    shutil.copytree(run_dir, broken, ignore=shutil.ignore_patterns("cosim"))
    layers = broken / "hw" / "s0" / "layers.json"
    assert layers.is_file()
    layers.write_text(content)
    err = _bad(exitflow_cmd, broken, "--design", str(design))
    assert err.startswith(f"exitflow cosim: error: {layers}: ") and message in err and "exitflow build" in err
    assert layers.read_text() == content


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage, message",
    [
        ("empty", "profile.npz: empty file"),
        ("truncated", "profile.npz: unreadable, truncated or not an .npz"),
        ("random", "profile.npz: unreadable, truncated or not an .npz"),
        ("other keys", "profile.npz: not a profile exitflow wrote (lacks exit_names"),
    ],
)
def test_a_damaged_profile_stops_the_cosimulation(exitflow_cmd, run_copy, tmp_path, damage, message):
    import io

    import numpy as np

    run_dir, design = run_copy
    broken = tmp_path / "run"
    shutil.copytree(run_dir, broken, ignore=shutil.ignore_patterns("cosim"))
    good = (broken / "profile.npz").read_bytes()
    other = io.BytesIO()
    np.savez(other, x=np.zeros(2))
    content = {
        "empty": b"",
        "truncated": good[: len(good) // 3],
        "random": np.random.default_rng(1).bytes(4096),
        "other keys": other.getvalue(),
    }[damage]
    (broken / "profile.npz").write_bytes(content)
    err = _bad(exitflow_cmd, broken, "--design", str(design), "--engine", "vectorised")
    assert err.startswith("exitflow cosim: error: ") and message in err
    assert f"run `exitflow profile {broken}` again" in err

"""Run-time thresholds predicted from a profile (exitflow.cosim.thresholds), on a synthetic design:
the routing, the throughput of the cycle simulation and the pace warning."""

import json

import numpy as np
import pytest

from exitflow.core.errors import ConfigError
from exitflow.cosim.cycle import Pipeline, Stage, Unit, pipeline_from_data, pipeline_to_data, steady_state
from exitflow.cosim.thresholds import ExitRegister, ThresholdModel, load_registers, resolve
from exitflow.quant import policies

N = 400
SCALE = 0.25


def registers(t0=0.5, t1=0.8):
    return (
        ExitRegister("b0", "exit_b0", "stage0", ("b0",), "max_prob", SCALE, 10, 14, t0),
        ExitRegister("b1", "exit_b1", "stage1", ("b1", "b2"), "max_prob", SCALE, 10, 14, t1),
    )


def pipeline(slow_stage1=400):
    """Stage 0 paces the design at its thresholds (100 cycles a sample); stage 1 is sized for the
    quarter of the samples those send it."""
    return Pipeline(
        (
            Stage("stage0", (Unit("a", 100),), (Unit("h0", 10),), 4, 8),
            Stage("stage1", (Unit("b", slow_stage1),), (Unit("h1", 10),), 4, 4),
            Stage("stage2", (Unit("c", 50),), (Unit("h2", 10),)),
        ),
        100.0,
        4,
    )


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(3)
    logits = rng.integers(-40, 40, (N, 3, 10))
    codes = np.stack([policies.confidence_code("max_prob", logits[:, k], SCALE, 8)[1] for k in range(2)], axis=1)
    classes = logits.argmax(axis=2)
    labels = np.where(rng.random(N) < 0.9, classes[:, 2], (classes[:, 2] + 1) % 10)
    return ThresholdModel(registers(), "b3", codes, classes, labels, pipeline())


def test_routing_is_the_policy_function_with_the_register_constants(model):
    t = {"b0": 0.7, "b1": 0.95}
    constants = [policies.threshold_code("max_prob", v, SCALE) for v in t.values()]
    codes = np.concatenate([model.codes, np.zeros((N, 1), np.int64)], axis=1)
    expected = policies.route("max_prob", codes, constants)
    assert np.array_equal(model.taken(t), expected)
    assert model.constants(t) == [min(c, (1 << 14) - 1) for c in constants]
    p = model.predict(t, min_samples=2000)
    assert np.allclose(p.fractions, np.bincount(expected, minlength=3) / N)
    assert p.accuracy == pytest.approx(np.mean(model.classes[np.arange(N), expected] == model.labels))
    assert p.final_accuracy == pytest.approx(np.mean(model.classes[:, 2] == model.labels))


def test_throughput_is_the_cycle_simulation_of_the_new_exit_sequence(model):
    t = {"b0": 0.6}
    p = model.predict(t, min_samples=2000)
    assert p.fps == steady_state(model.pipeline, model.taken(t), 2000).fps
    assert p.design_fps == steady_state(model.pipeline, model.taken(), 2000).fps


def test_a_stage_that_would_set_the_pace_is_named(model):
    design = model.predict(min_samples=2000)
    reach1 = np.mean(model.taken() >= 1)
    assert reach1 * 400 < 100 and design.warnings == []  # stage 0 sets the design's pace
    assert design.pace == "stage0 (b0)"
    harder = model.predict({"b0": 1.0, "b1": 1.0}, min_samples=2000)  # (almost) nothing leaves early
    assert np.mean(model.taken({"b0": 1.0, "b1": 1.0}) >= 1) * 400 > 100
    assert harder.pace == "stage1 (b1, b2)" and harder.fps < 0.5 * design.fps
    assert len(harder.warnings) == 1 and "stage1 (b1, b2) would set the pace" in harder.warnings[0]
    assert "warning: stage1 (b1, b2)" in "\n".join(harder.lines(model.thresholds()))


def test_names_by_exit_or_head_and_none_is_the_design_value(model):
    assert model.thresholds({"exit_b1": 0.5, "b0": None}) == {"b0": 0.5, "b1": 0.5}
    for changes, message in [
        (
            {"b3": 0.5},
            "unknown exit 'b3'; b3 is the final exit, which takes every sample; exits with a threshold: b0, b1",
        ),
        ({"nope": 0.5}, "unknown exit 'nope'"),
        ({"b0": 0.5, "exit_b0": 0.6}, "exit b0 given twice"),
        ({"b0": 1.5}, r"exit b0: max_prob threshold must be in \(0, 1\]"),
        ({"b0": float("nan")}, "exit b0: threshold must be a number"),
    ]:
        with pytest.raises(ConfigError, match=message):
            resolve(model.exits, changes, model.final)


def test_files_round_trip_and_damaged_files_are_one_line(model, tmp_path):
    driver = tmp_path / "deploy here" / "driver.json"
    driver.parent.mkdir()
    model.save(driver)
    driver.write_text(json.dumps({"registers": [r.to_data() for r in model.exits], "prediction": model.to_data()}))
    back = ThresholdModel.load(driver)
    assert back.exits == model.exits and back.pipeline == model.pipeline
    assert np.array_equal(back.codes, model.codes) and np.array_equal(back.labels, model.labels)
    assert load_registers(driver) == model.exits
    npz = driver.with_suffix(".npz")
    npz.write_bytes(npz.read_bytes()[:100])
    with pytest.raises(ConfigError, match=r"driver.npz: unreadable, truncated"):
        ThresholdModel.load(driver)
    driver.write_text("{not json")
    with pytest.raises(ConfigError, match="not a driver file with threshold registers"):
        load_registers(driver)
    with pytest.raises(ConfigError, match="not found"):
        load_registers(tmp_path / "none.json")


def test_pipeline_as_data_round_trips_and_is_checked():
    p = pipeline()
    assert pipeline_from_data(json.loads(json.dumps(pipeline_to_data(p))), "x") == p
    data = pipeline_to_data(p)
    data["stages"][0]["gate_depth"] = 0
    with pytest.raises(ConfigError, match="x: pipeline stage 0"):
        pipeline_from_data(data, "x")
    with pytest.raises(ConfigError, match="x: not a pipeline"):
        pipeline_from_data({"stages": [{"name": "s"}]}, "x")


def test_a_design_without_early_exits_has_nothing_to_set():
    one = Pipeline((Stage("stage0", (Unit("a", 100),), (Unit("h", 10),)),), 100.0, 2)
    labels = np.arange(20) % 10
    model = ThresholdModel((), "b3", np.zeros((20, 0), np.int64), labels[:, None].copy(), labels, one)
    p = model.predict(min_samples=100)
    assert p.fractions == [1.0] and p.accuracy == 1.0 and p.fps == pytest.approx(1e6) and p.warnings == []
    with pytest.raises(
        ConfigError, match=r"unknown exit 'b3'; b3 is the final exit.*none \(the design has no early exit\)"
    ):
        model.predict({"b3": 0.5})

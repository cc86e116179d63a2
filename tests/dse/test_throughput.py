"""The throughput and latency model on exit sequences whose answer is known."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exitflow.dse.throughput import input_interval, latency, max_window_counts, pipeline, reach_fractions, sensitivity


def test_reach_fractions():
    assert reach_fractions(np.array([0, 1, 2, 2]), 3).tolist() == [1.0, 0.75, 0.5]


def test_unbounded_gates_follow_atheena():
    taken = np.array([0] * 75 + [1] * 25)  # 25% go on
    est = pipeline(taken, [100, 300], [None, None], clock_mhz=100)
    assert est.fps == pytest.approx(100e6 / 100)  # stage 1: 0.25 * 300 = 75 < 100: stage 0 sets the pace
    assert est.bottleneck == 0 and est.fps == est.fps_unbounded
    est = pipeline(taken, [100, 600], [None, None], 100)
    assert est.fps == pytest.approx(100e6 / 150) and est.bottleneck == 1


def test_bursts_need_buffer():
    spread = np.tile([1, 0, 0, 0], 25).astype(bool)  # every fourth sample goes on
    burst = np.concatenate([np.ones(25), np.zeros(75)]).astype(bool)  # the same 25%, in one burst
    assert input_interval(spread, 400, 0) == pytest.approx(100)  # evenly spread: the average suffices
    assert input_interval(burst, 400, 0) == pytest.approx(400)  # a burst at D = 0: full pace
    assert input_interval(burst, 400, 12) == pytest.approx(12 * 400 / 24)  # half the burst buffered
    assert input_interval(burst, 400, 25) == pytest.approx(100)  # a gate holding the burst: average
    assert input_interval(burst, 400, None) == pytest.approx(100)


def test_max_window_counts_wrap_around():
    assert max_window_counts(np.array([1, 0, 0, 1])).tolist() == [1, 2, 2, 2]  # windows wrap: [1, 1]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=80), st.integers(1, 1000), st.integers(0, 40))
def test_interval_bounds(flags, cycles, depth):
    flags = np.array(flags)
    average = flags.mean() * cycles
    got = input_interval(flags, cycles, depth)
    assert average - 1e-9 <= got <= cycles * flags.any() + 1e-9
    assert input_interval(flags, cycles, depth + 5) <= got + 1e-9  # a deeper gate never hurts
    assert input_interval(flags, cycles, len(flags)) == pytest.approx(average)
    assert input_interval(flags, cycles, None) == pytest.approx(average)


def test_sensitivity_brackets_the_nominal():
    reach = np.array([1.0, 0.3, 0.1])
    nominal = 100e6 / max(0.3 * 500, 0.1 * 900, 100)
    s = sensitivity(reach, [100, 500, 900], 100)
    assert s["plus"] <= nominal <= s["minus"]
    assert s["plus"] == pytest.approx(100e6 / (0.35 * 500))


def test_latency():
    out = latency(np.array([0, 0, 1, 2]), [100, 200, 50], [10, 20, 5], clock_mhz=100)
    assert out["cycles_to_exit"] == [110, 320, 355]
    assert out["mean_cycles"] == pytest.approx((110 + 110 + 320 + 355) / 4)
    assert out["us_to_exit"][0] == pytest.approx(1.1)


def test_stage_level_fps_matches_the_unbounded_rule_with_deep_gates_and_drops_with_shallow_ones():
    from exitflow.dse.throughput import stage_level_fps

    rng = np.random.default_rng(3)
    taken = (rng.random(600) < 0.4).astype(np.int64)  # 40 % of samples go on to stage 1
    taken[100:140] = 1  # a burst of hard samples
    deep = stage_level_fps(taken, [100, 200], [50, 50], [128], [4, 1], 100.0, min_samples=3000)
    unbounded = pipeline(taken, [100, 200], [None, None], 100.0).fps_unbounded
    assert deep == pytest.approx(unbounded, rel=0.03)
    shallow = stage_level_fps(taken, [100, 200], [50, 50], [1], [4, 1], 100.0, min_samples=3000)
    assert shallow < 0.97 * deep
    assert stage_level_fps(taken * 0, [100], [50], [], [4], 100.0) == pytest.approx(1e6)

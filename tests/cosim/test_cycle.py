"""The cycle-level pipeline simulation: synthetic pipelines whose answer is known by hand, then
the built digits lenet design against the dse model."""

import numpy as np
import pytest

from exitflow.core.errors import ConfigError
from exitflow.cosim.cycle import Pipeline, Stage, Unit, run
from exitflow.dse.throughput import input_interval, predict, simulate

CLOCK = 100.0  # MHz


def units(*cycles, prefix="u"):
    return tuple(Unit(f"{prefix}{i}", c) for i, c in enumerate(cycles))


def single(*cycles, head=(10,)):
    return Pipeline((Stage("s0", units(*cycles), units(*head, prefix="h")),), CLOCK)


def two_stage(t0, t1, depth, gate_cycles=4, head0=(10,), head1=(10,), record_fifo=2):
    """Records reach the gate through ``record_fifo``-record streams: only with at least
    ``depth`` of them can the head run ``depth`` samples ahead of a stalled gate."""
    return Pipeline(
        (
            Stage("s0", units(*t0), units(*head0, prefix="h"), depth, gate_cycles),
            Stage("s1", units(*t1), units(*head1, prefix="h")),
        ),
        CLOCK,
        record_fifo,
    )


def test_single_stage_runs_at_its_slowest_unit():
    report = simulate(single(30, 100, 50), np.zeros(200, dtype=int), min_samples=1000)
    assert report.cycles_per_sample == pytest.approx(100)
    assert report.simulated_fps == pytest.approx(CLOCK * 1e6 / 100)
    assert report.ratio == pytest.approx(1.0)
    # one sample alone goes through every unit and the merge (1 cycle to read it)
    assert report.latency[0].unloaded_cycles == 30 + 100 + 50 + 10 + 1


def test_back_pressure_from_a_slow_unit_downstream():
    """A slow last unit holds the units before it: stage 0's first unit takes a new sample only
    every 200 cycles, and under load each sample waits in front of the slow unit no longer than
    one interval per unit ahead of it."""
    trace = run(single(10, 20, 200), np.zeros(50, dtype=int))
    gaps = np.diff(trace.accept)
    assert (gaps[5:] == 200).all()  # the input, two units ahead of the bottleneck, is throttled
    assert gaps[0] == 10  # the first samples fill the free units behind the bottleneck
    latency = trace.done - trace.accept
    assert latency[0] == 10 + 20 + 200 + 10 + 1
    assert latency[-1] > latency[0]  # queued behind the bottleneck
    assert latency.max() <= latency[0] + 3 * 200  # but only in the units' one-sample buffers


def test_two_stages_with_half_the_samples_going_on():
    """p_1 = 0.5 and a deep gate: throughput ~ clock / max(T0, 0.5 * T1), whichever binds."""
    taken = np.tile([0, 1], 500)  # every other sample goes on
    slow_first = simulate(two_stage((100,), (150,), depth=64, record_fifo=64), taken, min_samples=4000)
    assert slow_first.cycles_per_sample == pytest.approx(max(100, 0.5 * 150), rel=0.01)
    slow_second = simulate(two_stage((100,), (300,), depth=64, record_fifo=64), taken, min_samples=4000)
    assert slow_second.cycles_per_sample == pytest.approx(max(100, 0.5 * 300), rel=0.01)
    assert slow_second.ratio == pytest.approx(1.0, rel=0.01)
    assert slow_second.reach == pytest.approx([1.0, 0.5])


def test_a_burst_of_hard_samples_stalls_stage_0_behind_a_tiny_gate():
    """Stage 1 sees 25 % of the samples in bursts of 10; T1 = 3 T0, so on average it keeps up
    (0.25 * 300 < 100), but a gate of 1 feature map cannot absorb a burst: stage 0 stalls. A deep
    gate absorbs it. The stall lies between the long-run rate and the dse model's burst bound
    (input_interval), which takes the worst burst as if it were the steady state."""
    taken = np.tile(np.r_[np.ones(10, dtype=int), np.zeros(30, dtype=int)], 25)
    deep = simulate(two_stage((100,), (300,), depth=64, record_fifo=64), taken, min_samples=8000)
    tiny = simulate(two_stage((100,), (300,), depth=1), taken, min_samples=8000)
    assert deep.cycles_per_sample == pytest.approx(100, rel=0.01)
    bound = input_interval(taken >= 1, 300, 1)
    assert bound > 200  # the model: nearly the whole burst at stage 1's pace
    assert 110 < tiny.cycles_per_sample <= bound
    # by hand: a burst's first hard sample goes straight into stage 1; behind it stage 0 can park
    # one more in the gate FIFO and hold one finished, then it waits for a FIFO slot, which frees
    # every 300 cycles. The 10th hard sample enters stage 1 9 x 300 = 2,700 cycles after the
    # first, the first easy sample goes into the FIFO then, and the other 29 follow at stage 0's
    # pace: a period of about 2,700 + 29 x 100 = 5,600 cycles for 40 samples.
    assert tiny.cycles_per_sample == pytest.approx(5600 / 40, rel=0.03)
    assert tiny.predicted_fps < tiny.simulated_fps < deep.simulated_fps


def test_exiting_samples_are_faster_than_continuing_ones():
    taken = np.tile([0, 0, 1, 0, 1, 1, 0, 0], 100)
    report = simulate(two_stage((100, 50), (120, 80), depth=4, head0=(40, 10), head1=(60, 10)), taken, min_samples=3000)
    early, late = report.latency
    assert early.samples > 0 and late.samples > 0
    assert early.mean_cycles < late.mean_cycles and early.p99_cycles < late.p99_cycles
    assert early.p50_cycles <= early.p99_cycles
    assert early.unloaded_cycles == 100 + 50 + 40 + 10 + 4 + 1  # stage, head, gate drops it, merge
    # the gate forwards a sample only once head 0 has decided; merge input 1 is read at odd cycles
    assert late.unloaded_cycles == 100 + 50 + (40 + 10) + 120 + 80 + 60 + 10 + 2
    assert report.latency[0].to_data(CLOCK)["mean_us"] == pytest.approx(early.mean_cycles / CLOCK, abs=1e-3)


def test_a_stalled_gate_stalls_the_head_and_so_the_stage():
    """Records reach the gate through a 2-record stream: a gate waiting for a busy stage 1 stops
    reading records, the head fills and the duplicate stalls stage 0, whatever the gate depth.
    With deep record streams the gate FIFO's depth counts again."""
    taken = np.tile(np.r_[np.ones(12, dtype=int), np.zeros(36, dtype=int)], 20)
    shallow = two_stage((100,), (300,), depth=16)
    deep_records = Pipeline(shallow.stages, CLOCK, record_fifo=64)
    a = simulate(shallow, taken, min_samples=5000)
    b = simulate(deep_records, taken, min_samples=5000)
    assert b.cycles_per_sample < a.cycles_per_sample * 0.95


def test_prediction_uses_the_slowest_unit_of_stage_and_head():
    pipe = two_stage((100, 120), (300,), depth=8, head0=(130, 10))
    estimate = predict(pipe, np.tile([0, 1, 0, 0], 10))
    assert estimate.intervals[0] == 130 and estimate.intervals[1] == pytest.approx(75)


@pytest.mark.parametrize(
    "make, taken, message",
    [
        (lambda: single(10), [0, 1], "exit indices must be integers in 0..0"),
        (lambda: single(10), [], "needs at least one sample"),
        (lambda: two_stage((10,), (10,), depth=0), [0], "needs a gate depth >= 1; got 0"),
        (lambda: single(-1), [0], "has -1 cycles"),
        (lambda: Pipeline((Stage("s0", (), units(1)),), CLOCK), [0], "at least one unit each"),
    ],
)
def test_bad_input_is_one_line(make, taken, message):
    with pytest.raises(ConfigError, match=message) as err:
        simulate(make(), np.asarray(taken, dtype=int))
    assert "\n" not in str(err.value)


def test_ten_thousand_samples_take_well_under_a_second():
    pipe = Pipeline(
        tuple(
            Stage(f"s{k}", units(*range(50, 60)), units(20, 10, prefix="h"), 8 if k < 3 else None, 16) for k in range(4)
        ),
        CLOCK,
    )
    taken = np.random.default_rng(0).integers(0, 4, 2500)
    report = simulate(pipe, taken, min_samples=10_000)
    assert report.repeats * report.sequence == 10_000
    assert report.seconds < 1.0


@pytest.mark.slow
def test_lenet_design_matches_the_dse_model(lenet_built):
    """The digits lenet design (two exits, gate of 2 feature maps), fed with the exit sequence of
    the functional cosimulation: simulated throughput within 5 % of the dse model's."""
    from exitflow.cosim import cosimulate
    from exitflow.cosim.built import load_pipeline
    from exitflow.dse.throughput import simulate_design

    run_dir, design = lenet_built
    taken = cosimulate(run_dir, design, engine="vectorised").engines[0].results.exit
    assert 0 < (taken == 0).mean() < 1  # both exits are taken
    pipeline, names = load_pipeline(run_dir, design)
    assert names == ["exit0", "exit1"] and pipeline.stages[0].gate_depth == 2
    report = simulate_design(run_dir, design, taken)
    assert report.ratio == pytest.approx(1.0, abs=0.05)
    assert report.reach[1] == pytest.approx((taken >= 1).mean())
    early, final = report.latency
    assert early.mean_cycles < final.mean_cycles
    assert early.unloaded_cycles < final.unloaded_cycles

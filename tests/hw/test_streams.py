"""FIFOs sized by exitflow's stream simulation (exitflow.hw.streams), without Vivado: the sized
skip FIFO keeps the stage at the interval it has with unbounded streams, a pixel less stalls it or
lowers the interval, too shallow a FIFO deadlocks; where FINN's 2-word streams stall a graph,
every plain stream gets a FIFO; the build writes the depths into FINN's StreamingFIFO nodes, and
the cycle simulation of the built design, forks, adds and FIFOs included, stays within 5 % of the
design search's prediction."""

import json

import pytest
import yaml
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.custom_op.registry import getCustomOp

from exitflow.hw import streams


@pytest.fixture(scope="module")
def residual_stage(tmp_path_factory, tiny_trainer):
    """A built half-width resnet8 (one epoch on random images): stage s0 holds stem and stack1
    (identity skip), s1 stack2 (strided, 1x1 projection on the skip)."""
    from exitflow.hw.build import build

    folder = tmp_path_factory.mktemp("streams")
    run = tiny_trainer(folder, "resnet8", "w4a4", width=0.5)
    design = {
        "model": "resnet8",
        "board": "Pynq-Z2",
        "stages": [
            {
                "name": "s0",
                "blocks": ["stem", "stack1"],
                "head": {"name": "h0", "threshold": 0.9},
                "gate_depth": 2,
                "folding": {"stack1.conv1": {"pe": 4, "simd": 8}, "stack1.conv2": {"pe": 2, "simd": 24}},
            },
            {"name": "s1", "blocks": ["stack2", "stack3"], "head": {"name": "h1"}},
        ],
    }
    path = folder / "design.yaml"
    path.write_text(yaml.safe_dump(design, sort_keys=False))
    lines = []
    build(run, path, log=lines.append, vivado_project=False)
    return run / "hw", lines


def _fifos(model):
    return [n for n in model.graph.node if n.op_type.startswith("StreamingFIFO")]


def _skip_fifos(model):
    """The StreamingFIFO on the skip input of every residual join."""
    from exitflow.hw.finn_flow import skip_inputs

    on_skip = {join.input[k] for join, k in skip_inputs(model)}
    return [n for n in _fifos(model) if n.output[0] in on_skip]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["s0", "s1"])
def test_the_sized_depth_keeps_the_interval_and_one_pixel_less_does_not(residual_stage, stage):
    hw, _ = residual_stage
    model = ModelWrapper(str(hw / stage / "model_hw.onnx"))
    skips = _skip_fifos(model)
    assert len(skips) == {"s0": 1, "s1": 2}[stage]  # one per residual block
    unbounded = streams.simulate(model, link_pixels=streams.UNBOUNDED)
    assert not unbounded.deadlock and unbounded.frames_done == streams.FRAMES
    pixels = streams.built_fifo_pixels(model)
    built = streams.simulate(model, pixels)
    assert not built.deadlock and built.interval <= unbounded.interval * (1 + streams.TOLERANCE)
    for fifo in skips:
        depth = getCustomOp(fifo).get_nodeattr("depth")
        assert pixels[fifo.name] * streams.words_per_pixel(model, fifo.name) == depth  # whole pixels
        less = streams.simulate(model, {**pixels, fifo.name: pixels[fifo.name] - 1})
        assert less.deadlock or less.interval > built.interval, fifo.name
    # at most what an unbounded FIFO ever held (beyond that nothing blocks), and more than nothing
    assert all(0 < pixels[f.name] <= unbounded.peak_pixels[f.name] for f in skips)


@pytest.mark.slow
def test_too_shallow_a_skip_fifo_deadlocks(residual_stage):
    """With no FIFO on its skip branch, the fork stalls on the skip before the main branch's window
    generators have the rows they need: the stage stops (FINN issue 1094's hang)."""
    hw, _ = residual_stage
    model = ModelWrapper(str(hw / "s0" / "model_hw.onnx"))
    (fifo,) = _skip_fifos(model)
    run = streams.simulate(model, {**streams.built_fifo_pixels(model), fifo.name: 0})
    assert run.deadlock and run.frames_done == 0 and run.interval == float("inf")


@pytest.mark.slow
def test_the_build_reports_the_sized_depths(residual_stage):
    hw, lines = residual_stage
    s0 = next(line for line in lines if line.startswith("stage s0:"))
    model = ModelWrapper(str(hw / "s0" / "model_hw.onnx"))
    depth = getCustomOp(_skip_fifos(model)[0]).get_nodeattr("depth")
    assert f"skip FIFOs sized by simulation to {depth} words" in s0
    plain = len(_fifos(model)) - 1
    assert (f"; {plain} stream FIFOs of " in s0) == (plain > 0)
    head = ModelWrapper(str(hw / "h0" / "model_hw.onnx"))
    assert not _skip_fifos(head) and streams.size_fifos(head).skip_pixels == {}
    # a chain's simulated interval is its slowest node's FINN cycles or more (pipeline fill)
    cycles = json.loads((hw / "h0" / "estimate_layer_cycles.json").read_text())
    run = streams.simulate(head, streams.built_fifo_pixels(head))
    assert not run.deadlock and run.interval >= max(cycles.values()) * 0.999


@pytest.fixture(scope="module")
def chain_stage(tmp_path_factory, tiny_trainer):
    """A built CNV (one epoch on random images) whose second stage, conv1 and its max pool folded
    fast, is stalled by FINN's 2-word streams: the pool's window generator waits for rows."""
    from exitflow.hw.build import build

    folder = tmp_path_factory.mktemp("chain")
    run = tiny_trainer(folder, "cnv", "w2a2")
    design = {
        "model": "cnv",
        "board": "Pynq-Z2",
        "stages": [
            {
                "name": "s0",
                "blocks": ["conv0"],
                "head": {"name": "h0", "threshold": 0.7},
                "gate_depth": 4,
                "folding": {"conv0": {"pe": 32, "simd": 9}},
            },
            {
                "name": "s1",
                "blocks": ["conv1"],
                "head": {"name": "h1", "threshold": 0.9},
                "gate_depth": 4,
                "folding": {"conv1": {"pe": 16, "simd": 48}},
            },
            {"name": "s2", "blocks": ["conv2", "conv3", "conv4", "conv5", "fc0", "fc1"], "head": {"name": "h2"}},
        ],
    }
    path = folder / "design.yaml"
    path.write_text(yaml.safe_dump(design, sort_keys=False))
    lines = []
    build(run, path, log=lines.append, vivado_project=False)
    return run / "hw", lines


@pytest.mark.slow
def test_stream_fifos_where_two_word_streams_stall_a_chain(chain_stage):
    """A graph whose plain streams stall it at a pixel each gets a FIFO on every one, as deep as
    the smallest LINK_STEPS depth that keeps the interval it has with unbounded streams; the
    build says so."""
    hw, lines = chain_stage
    model = ModelWrapper(str(hw / "s1" / "model_hw.onnx"))
    fifos = _fifos(model)
    assert fifos and not _skip_fifos(model)
    unbounded = streams.simulate(model, link_pixels=streams.UNBOUNDED).interval
    one_pixel = streams.simulate(model, {f.name: 0 for f in fifos}).interval
    built = streams.simulate(model, streams.built_fifo_pixels(model)).interval
    assert one_pixel > unbounded * (1 + streams.TOLERANCE)
    assert built <= unbounded * (1 + streams.TOLERANCE) ** 2  # sized within it, built as sized
    pixels = {getCustomOp(f).get_nodeattr("depth") // streams.words_per_pixel(model, f.name) for f in fifos}
    assert len(pixels) == 1 and pixels.pop() + streams.LINK_PIXELS in streams.LINK_STEPS
    s1 = next(line for line in lines if line.startswith("stage s1:"))
    assert f"; {len(fifos)} stream FIFOs of " in s1


@pytest.mark.slow
def test_the_cycle_simulation_of_a_residual_design_is_within_5_percent(residual_stage):
    """Forks, adds and the sized FIFOs simulated pixel by pixel in every graph: the built design
    runs within 5 % of the design search's prediction (FINN's cycle estimates)."""
    import numpy as np

    from exitflow.dse.throughput import simulate_design

    hw, _ = residual_stage
    taken = np.resize([0, 1, 1, 0, 1], 200)
    report = simulate_design(hw.parent, hw.parent.parent / "design.yaml", taken, min_samples=1000)
    assert report.simulated_stage_cycles[1] > report.stage_cycles[1]  # the streams cost something
    assert 0.95 <= report.ratio <= 1.0 + 1e-9, report.to_data()

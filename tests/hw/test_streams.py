"""Skip FIFOs sized by exitflow's stream simulation (exitflow.hw.streams), without Vivado: the
sized depth keeps the stage at the interval it has with unbounded FIFOs, a pixel less stalls it or
lowers the interval, too shallow a FIFO deadlocks, and the build writes the depths into FINN's
StreamingFIFO nodes."""

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


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["s0", "s1"])
def test_the_sized_depth_keeps_the_interval_and_one_pixel_less_does_not(residual_stage, stage):
    hw, _ = residual_stage
    model = ModelWrapper(str(hw / stage / "model_hw.onnx"))
    fifos = _fifos(model)
    assert len(fifos) == {"s0": 1, "s1": 2}[stage]  # one per residual block
    free = streams.simulate(model)
    assert not free.deadlock and free.frames_done == streams.FRAMES
    built = {f.name: getCustomOp(f).get_nodeattr("depth") for f in fifos}
    pixels = {name: depth // streams.words_per_pixel(model, name) for name, depth in built.items()}
    sized = streams.simulate(model, pixels)
    assert not sized.deadlock and sized.interval == free.interval  # the build wrote the sized depths
    for name in pixels:
        assert pixels[name] * streams.words_per_pixel(model, name) == built[name]
        less = streams.simulate(model, {**pixels, name: pixels[name] - 1})
        assert less.deadlock or less.interval > free.interval, name
    # at most what the unbounded FIFO ever held (beyond that nothing blocks), and more than nothing
    assert all(0 < p <= free.peak_pixels[n] for n, p in pixels.items())


@pytest.mark.slow
def test_too_shallow_a_skip_fifo_deadlocks(residual_stage):
    """With no FIFO on its skip branch, the fork stalls on the skip before the main branch's window
    generators have the rows they need: the stage stops (FINN issue 1094's hang)."""
    hw, _ = residual_stage
    model = ModelWrapper(str(hw / "s0" / "model_hw.onnx"))
    (fifo,) = _fifos(model)
    run = streams.simulate(model, {fifo.name: 0})
    assert run.deadlock and run.frames_done == 0 and run.interval == float("inf")


@pytest.mark.slow
def test_the_build_reports_the_sized_depths_and_chains_have_none(residual_stage):
    hw, lines = residual_stage
    s0 = next(line for line in lines if line.startswith("stage s0:"))
    depth = getCustomOp(_fifos(ModelWrapper(str(hw / "s0" / "model_hw.onnx")))[0]).get_nodeattr("depth")
    assert s0.endswith(f"skip FIFOs sized by simulation to {depth} words")
    head = ModelWrapper(str(hw / "h0" / "model_hw.onnx"))
    assert not _fifos(head) and streams.size_skip_fifos(head) == {}
    # a chain's simulated interval is its slowest node's FINN cycles or more (pipeline fill)
    cycles = json.loads((hw / "h0" / "estimate_layer_cycles.json").read_text())
    run = streams.simulate(head)
    assert not run.deadlock and run.interval >= max(cycles.values()) * 0.999

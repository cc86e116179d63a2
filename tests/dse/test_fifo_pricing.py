"""dse/fifo_pricing.py: a candidate's FIFOs counted as the build sizes them, and the next design
when the first no longer fits. The builds are stood in for by fixed FIFO figures per design; the
sweep test (tests/dse/test_sweep.py) checks the real ones against a build."""

import json

import numpy as np
import pytest

from exitflow.core.errors import ExitflowError
from exitflow.core.resources import Resources
from exitflow.dse.fifo_pricing import FifoPricer, fifo_resources
from exitflow.dse.search import Candidate

LIMITS = np.array([1000.0, 10.0, 0.0, 10.0])


def _candidate(exits, fps, lut, stages):
    return Candidate(
        exits=exits,
        thresholds=(0.9,) * len(exits),
        target=100.0,
        fps=fps,
        accuracy=0.9,
        resources=Resources(lut, 2.0, 0.0, 1.0),
        reach=(1.0,) * (len(exits) + 1),
        stage_resources=stages,
    )


class _Pricer(FifoPricer):
    """Three segments whose inventory counted 10 LUT of FIFOs in each body and none in the heads;
    ``sized``: the build's FIFOs per stage, by the candidate's fps (standing in for its design)."""

    def __init__(self, sized: dict[float, list]):
        self.segments = [None] * 3
        self.counted_body = [np.array([10.0, 0.0, 0.0, 0.0])] * 3
        self.counted_head = [np.zeros(4)] * 3
        self.by_fps = sized
        self.calls = []

    def sized(self, c):
        self.calls.append(c.fps)
        return [np.array(f, dtype=float) for f in self.by_fps[c.fps]]


def test_price_replaces_the_counted_fifos_by_the_sized_ones_stage_by_stage():
    c = _candidate((0,), 50.0, 600.0, ((200.0, 1.0, 0.0, 1.0), (400.0, 1.0, 0.0, 0.0)))
    pricer = _Pricer({50.0: [[40.0, 1.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0]]})
    priced = pricer.price(c)
    # stage 0 = segment 0 (counted 10), stage 1 = segments 1 and 2 (counted 20)
    assert priced.stage_resources == ((230.0, 2.0, 0.0, 1.0), (385.0, 1.0, 0.0, 0.0))
    assert priced.resources == Resources(615.0, 3.0, 0.0, 1.0)
    assert priced.fifos == ((40.0, 1.0, 0.0, 0.0), (5.0, 0.0, 0.0, 0.0))
    assert c.fifos is None  # the candidate itself is unchanged


def test_a_design_over_budget_gives_way_to_the_best_that_fits_with_as_many_fifos(capsys):
    stages = ((300.0, 1.0, 0.0, 1.0), (600.0, 1.0, 0.0, 0.0))
    fast = _candidate((0,), 90.0, 900.0, stages)  # +200 LUT of FIFOs: over the 1000 LUT budget
    near = _candidate((0,), 80.0, 880.0, stages)  # 880 + 200 > 1000: left out, never built
    slow = _candidate((0,), 70.0, 700.0, stages)
    pricer = _Pricer({90.0: [[110.0, 0, 0, 0], [120.0, 0, 0, 0]], 70.0: [[60.0, 0, 0, 0], [20.0, 0, 0, 0]]})
    lines = []
    chosen = pricer.fitting(
        lambda pool: max(pool, key=lambda c: c.fps), [fast, near, slow], LIMITS, "design", lines.append
    )
    assert chosen.fps == 70.0 and chosen.resources.lut == 750.0
    assert pricer.calls == [90.0, 70.0]  # the 880-LUT design was never built
    assert lines == [
        "note: the design exceeds the LUT budget once its FIFOs are sized; "
        "trying the best of the 1 designs that fit with 200 LUT more"
    ]


def test_no_design_fitting_is_one_line():
    stages = ((300.0, 1.0, 0.0, 1.0), (600.0, 1.0, 0.0, 0.0))
    fast = _candidate((0,), 90.0, 900.0, stages)
    pricer = _Pricer({90.0: [[110.0, 0, 0, 0], [120.0, 0, 0, 0]]})
    with pytest.raises(ExitflowError, match=r"^no design among the 4 best fits the budget .*; lower --util$"):
        pricer.fitting(lambda pool: max(pool, key=lambda c: c.fps), [fast], LIMITS, "design", lambda line: None)


def test_fifo_resources_add_up_the_streaming_fifos_of_a_graph(tmp_path):
    estimates = {
        "MVAU_hls_0": {"LUT": 500, "BRAM_18K": 2, "DSP": 1},
        "StreamingFIFO_rtl_0": {"LUT": 30, "BRAM_18K": 0},
        "StreamingFIFO_rtl_1": {"LUT": 12.5, "BRAM_18K": 1, "URAM": 0},
        "StreamingDataWidthConverter_rtl_0": {"LUT": 40},
    }
    (tmp_path / "estimate_layer_resources.json").write_text(json.dumps(estimates))
    assert fifo_resources(tmp_path).tolist() == [42.5, 1.0, 0.0, 0.0]

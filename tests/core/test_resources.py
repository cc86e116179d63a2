import json
import pickle

import numpy as np
import pytest

from exitflow.core.catalogue import get_board
from exitflow.core.resources import COLUMN, FINN_KEYS, LABELS, NAMES, Resources


def test_fields_order_and_defaults():
    assert NAMES == ("lut", "bram18", "uram", "dsp")
    zero = Resources()
    assert zero.as_tuple() == (0, 0, 0, 0) and all(type(v) is int for v in zero)
    r = Resources(lut=10, bram18=2, dsp=3)
    assert r.uram == 0 and r.as_tuple() == (10, 2, 0, 3)


def test_frozen():
    r = Resources(1, 2, 3, 4)
    with pytest.raises(AttributeError):
        r.lut = 5  # type: ignore[misc]


def test_from_finn_reads_finn_keys_and_defaults_missing_to_zero():
    estimate = {"LUT": 1200.5, "BRAM_18K": 4, "URAM": 0, "DSP": 7, "FF": 999, "BRAM_efficiency": 0.5}
    assert Resources.from_finn(estimate) == Resources(1200.5, 4, 0, 7)
    assert Resources.from_finn({"LUT": 3}) == Resources(3, 0, 0, 0)
    assert FINN_KEYS.as_tuple() == ("LUT", "BRAM_18K", "URAM", "DSP")


def test_add_is_elementwise_and_sum_works():
    a, b = Resources(1, 2, 3, 4), Resources(10, 20, 30, 40)
    assert a + b == Resources(11, 22, 33, 44)
    assert isinstance(a + b, Resources)
    assert sum([a, b]) == Resources(11, 22, 33, 44)
    assert Resources.total([a, b, a]) == Resources(12, 24, 36, 48)
    assert Resources.total([]) == Resources()
    assert b - a == Resources(9, 18, 27, 36)
    assert a + np.array([1.0, 1.0, 1.0, 1.0]) == Resources(2.0, 3.0, 4.0, 5.0)


def test_integer_counts_stay_integers():
    total = Resources.total(Resources.from_finn(r) for r in ({"LUT": 3, "DSP": 1}, {"LUT": 4, "BRAM_18K": 2}))
    assert total == Resources(7, 2, 0, 1) and all(type(v) is int for v in total)


def test_scaling():
    r = Resources(100, 10, 0, 20)
    assert r.scaled(0.5) == Resources(50.0, 5.0, 0.0, 10.0)
    assert r * 0.5 == r.scaled(0.5) and 0.5 * r == r.scaled(0.5)


def test_scaled_budget_matches_the_array_it_replaces():
    available = get_board("Pynq-Z2").available
    old = np.array(available.as_tuple(), dtype=float)[[0, 2, 3, 4]] * 0.85
    new = Resources.of(available).scaled(0.85)
    assert list(new) == old.tolist()


def test_fits_and_over():
    budget = Resources(100, 10, 0, 20)
    assert Resources(100, 10, 0, 20).fits(budget)
    assert Resources(100 + 1e-12, 10, 0, 20).fits(budget)  # rounding slack
    assert not Resources(101, 10, 0, 20).fits(budget)
    assert not Resources(0, 0, 1, 0).fits(budget)
    assert Resources(50, 1, 0, 1).fits(np.array([100.0, 10.0, 0.0, 20.0]))
    assert Resources(101, 11, 0, 20).over(budget) == ("LUT", "BRAM18")
    assert Resources(1, 1, 0, 1).over(budget) == ()


def test_serialisation_round_trip_keeps_keys_and_values():
    r = Resources(1234.0, 5.0, 0.0, 6.0)
    assert r.as_dict() == {"lut": 1234.0, "bram18": 5.0, "uram": 0.0, "dsp": 6.0}
    assert list(r.as_dict()) == list(NAMES)
    assert Resources.from_dict(r.as_dict()) == r
    assert Resources.from_dict({"lut": 3}) == Resources(3, 0, 0, 0)
    assert type(r.as_tuple()) is tuple and r.as_tuple() == (1234.0, 5.0, 0.0, 6.0)
    assert json.dumps(r) == json.dumps([1234.0, 5.0, 0.0, 6.0])  # as the tuples it replaces
    assert pickle.loads(pickle.dumps(r)) == r


def test_array_axis_names():
    assert COLUMN.as_tuple() == (0, 1, 2, 3)
    assert LABELS.as_tuple() == ("LUT", "BRAM18", "URAM", "DSP")
    vectors = np.array([Resources(1, 2, 3, 4), Resources(5, 6, 7, 8)])
    assert vectors.shape == (2, 4)
    assert vectors[:, COLUMN.dsp].tolist() == [4, 8] and vectors[:, COLUMN.lut].tolist() == [1, 5]
    assert Resources(*vectors[1].tolist()) == Resources(5, 6, 7, 8)

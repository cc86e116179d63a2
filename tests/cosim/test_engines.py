"""cosim/engines.py: exitflow's vectorised integer kernels give exactly what FINN's own Python
execution gives, node by node, on a tiny built conv head (window generator, MVAU, width
converter, pool, CTU); the exact matrix product in each of its number types; refusals."""

import copy

import numpy as np
import pytest
from qonnx.core.datatype import DataType

from exitflow.core.errors import ExitflowError
from exitflow.cosim.engines import (
    KERNELS,
    Difference,
    FinnEngine,
    UnsupportedNodeError,
    VectorisedEngine,
    _as_int,
    _exact_matmul,
    _thresholds,
    first_difference,
    generic_op,
    int_dtype,
)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """int4 2x8x8 -> conv3x3 (4 ch, PE 2 SIMD 2) -> relu4 -> maxpool 2 -> linear 36x5 -> CTU."""
    return _built_head(tmp_path_factory.mktemp("engines"), {"policy": "margin", "threshold": 2.0, "scale": 0.05})


@pytest.fixture(scope="module")
def agreement_head(tmp_path_factory):
    """The same head ending in an agreement CTU that reads each sample's previous class from
    the graph's second input, built through every FINN step (code generation included)."""
    ctu = {"policy": "agreement", "threshold": 0.3, "scale": 0.05, "class_input": True}
    return _built_head(tmp_path_factory.mktemp("engines_agreement"), ctu)


def _built_head(folder, ctu):
    import torch
    from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear, QuantReLU

    from exitflow.core.design import LayerFolding
    from exitflow.hw.finn_flow import FlowState, run_flow
    from exitflow.quant.export import _export

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        QuantIdentity(bit_width=4, return_quant_tensor=True),
        QuantConv2d(2, 4, 3, bias=False, weight_bit_width=4),
        QuantReLU(bit_width=4, return_quant_tensor=True),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        QuantLinear(4 * 3 * 3, 5, bias=False, weight_bit_width=4),
    ).eval()
    _export(net, torch.rand(1, 2, 8, 8), folder / "g.onnx")
    state = FlowState(
        name="h",
        part="xc7z020clg400-1",
        clock_ns=10.0,
        layers=["conv", "fc"],
        folding={"conv": LayerFolding(pe=2, simd=2)},
        out=folder / "hw",
        ctu=ctu,
    )
    return run_flow(folder / "g.onnx", folder / "hw", state)


def _input(engine, n, seed=0):
    return np.random.default_rng(seed).integers(-8, 8, (n, *engine.input_shape[1:]))


def test_the_head_holds_the_ops_the_test_means_to_cover(head):
    ops = [generic_op(n.op_type) for n in head.graph.node]
    for op in ("ConvolutionInputGenerator", "MVAU", "StreamingDataWidthConverter", "Pool", "ConfidenceThreshold"):
        assert op in ops, ops
    assert all(op in KERNELS for op in ops)


def test_vectorised_engine_equals_finn_node_by_node(head):
    finn, ours = FinnEngine(head), VectorisedEngine(head)
    assert finn.name == "finn" and ours.name == "vectorised"
    assert ours.input_dtype is np.int8  # INT4 input
    x = _input(ours, 6)
    expected, kept_finn = finn.run(x, keep=True)
    got, kept_ours = ours.run(x, keep=True)
    assert got.dtype == np.int64 and got.shape == expected.shape == (6, 1)
    assert np.array_equal(expected, got)
    order = [n.name for n in head.graph.node]
    assert set(kept_finn) == set(kept_ours) == set(order)
    assert first_difference(kept_finn, kept_ours, order) is None
    for name in order:
        assert np.array_equal(kept_finn[name].reshape(kept_ours[name].shape), kept_ours[name]), name
    # the logits before the CTU are not all alike: the comparison means something
    mvau = [n.name for n in head.graph.node if generic_op(n.op_type) == "MVAU"][-1]
    assert len(np.unique(kept_ours[mvau])) > 5


def test_engines_feed_the_class_input_of_an_agreement_head(agreement_head):
    """A head whose CTU reads the previous class takes it as its second graph input: both engines
    agree node by node and with the policy function, and the class decides the exit."""
    from qonnx.custom_op.registry import getCustomOp

    ctu = agreement_head.graph.node[-1]
    assert [t.name for t in agreement_head.graph.input][1] == ctu.input[1] == "previous_class"
    params = getCustomOp(ctu).params()
    assert params.class_input and params.policy == "agreement"
    finn, ours = FinnEngine(agreement_head), VectorisedEngine(agreement_head)
    x = _input(ours, 24, seed=3)
    _, before = ours.run(x, keep=True, extra={"previous_class": np.zeros((24, 1), dtype=np.int64)})
    logits = before[agreement_head.find_producer(ctu.input[0]).name].reshape(24, -1)
    own = np.argmax(logits, axis=1)
    for previous in (own, (own + 1) % params.classes):
        extra = {"previous_class": previous.reshape(-1, 1)}
        expected, kept_finn = finn.run(x, keep=True, extra=extra)
        got, kept_ours = ours.run(x, keep=True, extra=extra)
        assert np.array_equal(expected, got)
        order = [n.name for n in agreement_head.graph.node]
        assert first_difference(kept_finn, kept_ours, order) is None
        assert np.array_equal(got.reshape(-1), params.pack(params.decide(logits, previous)))
    agreeing = params.unpack(ours.run(x, extra={"previous_class": own.reshape(-1, 1)})[0].reshape(-1))
    other = params.unpack(ours.run(x, extra={"previous_class": ((own + 1) % 5).reshape(-1, 1)})[0].reshape(-1))
    assert agreeing.exit.any() and not other.exit.any()
    with pytest.raises(ValueError, match=r"further inputs are \['previous_class'\]; got values for \[\]"):
        ours.run(x)
    with pytest.raises(ValueError, match="previous_class: 3 values for a batch of 24"):
        finn.run(x, extra={"previous_class": np.zeros((3, 1))})


def test_a_single_input_graph_takes_no_further_inputs(head):
    with pytest.raises(ValueError, match=r"further inputs are none; got values for \['previous_class'\]"):
        VectorisedEngine(head).run(_input(VectorisedEngine(head), 2), extra={"previous_class": np.zeros((2, 1))})


def test_run_without_keep_returns_no_intermediates_and_a_batch_of_any_size(head):
    ours = VectorisedEngine(head)
    x = _input(ours, 40, seed=1)
    full, kept = ours.run(x)
    assert kept == {}
    part, _ = ours.run(x[7:8])
    assert np.array_equal(full[7:8], part)
    finn_out, finn_kept = FinnEngine(head).run(x[:0])
    assert finn_out.shape == (0,) and finn_kept == {}


def test_first_difference_finds_the_first_node_and_element(head):
    ours = VectorisedEngine(head)
    x = _input(ours, 2)
    _, kept = ours.run(x, keep=True)
    order = [n.name for n in head.graph.node]
    changed = copy.deepcopy(kept)
    target = order[1]
    flat = changed[target].reshape(len(x), -1)
    flat[0, 5] += 1
    changed[order[3]] = changed[order[3]] + 1  # a later difference is not the first
    diff = first_difference(kept, changed, order)
    index = np.unravel_index(5, kept[target].shape[1:])
    assert diff == Difference(
        target, tuple(int(i) for i in index), int(kept[target][(0, *index)]), int(kept[target][(0, *index)]) + 1
    )
    assert diff.describe() == f"node {target}, element {list(diff.index)}: expected {diff.expected}, got {diff.got}"
    shaped = {**kept, order[0]: kept[order[0]][:, :1]}
    assert first_difference(kept, shaped, order) == Difference(order[0], (), -1, -1)


def test_a_node_without_a_kernel_or_an_input_computed_after_it_is_refused(head):
    unknown = copy.deepcopy(head)
    unknown.graph.node[1].op_type = "LabelSelectX_hls"
    name = unknown.graph.node[1].name
    with pytest.raises(UnsupportedNodeError) as err:
        VectorisedEngine(unknown)
    assert str(err.value) == (
        f"{name}: the vectorised engine has no kernel for LabelSelectX_hls; "
        "run the FINN reference instead (--engine finn)"
    )
    assert isinstance(err.value, ExitflowError)
    unsorted = copy.deepcopy(head)
    later = unsorted.graph.node[2].output[0]
    unsorted.graph.node[1].input[0] = later
    with pytest.raises(
        UnsupportedNodeError, match=rf"^{unsorted.graph.node[1].name}: its input {later} is not computed before it$"
    ):
        VectorisedEngine(unsorted)


def test_generic_op_and_int_dtype():
    assert generic_op("MVAU_hls") == "MVAU" and generic_op("Pool_rtl") == "Pool" and generic_op("MVAU") == "MVAU"
    assert generic_op("hls_MVAU") == "hls_MVAU"
    assert int_dtype(DataType["INT4"]) is np.int8
    assert int_dtype(DataType["INT8"]) is np.int8
    assert int_dtype(DataType["UINT8"]) is np.int16
    assert int_dtype(DataType["BIPOLAR"]) is np.int8
    assert int_dtype(DataType["INT32"]) is np.int32
    assert int_dtype(DataType["UINT32"]) is np.int64


@pytest.mark.parametrize(
    "in_range, w_range, dtypes",
    [
        ((-8, 7), (-8, 7), ("int32", "float32")),  # int8 x int8 (or an exact float, where torch lacks _int_mm)
        ((0, 255), (-8, 7), ("int32", "float32")),  # 256 values: int8 after an offset
        ((0, 2**12), (-8, 7), ("float32",)),  # float32: partial sums below 2**24
        ((-(2**20), 2**20), (-(2**10), 2**10), ("float64",)),  # float64
        ((-(2**40), 2**40), (-(2**20), 2**20), ("int64",)),  # int64: beyond float64's exact integers
    ],
)
def test_exact_matmul_is_the_integer_product(in_range, w_range, dtypes):
    rng = np.random.default_rng(0)
    lo, hi = in_range
    w = rng.integers(w_range[0], w_range[1] + 1, (64, 9))
    x = rng.integers(lo, hi + 1, (3, 5, 64), dtype=np.int64)
    x[0, 0] = hi  # the extremes are in the batch
    x[0, 1] = lo
    out = _exact_matmul(w.astype(np.float32 if abs(w).max() < 2**24 else np.float64), in_range)(x)
    assert out.shape == (3, 5, 9)
    assert out.dtype.name in dtypes  # the fastest exact type for the range
    assert np.array_equal(np.asarray(out).astype(np.int64), x @ w.astype(np.int64))
    assert np.array_equal(np.rint(out), out)


def test_exact_matmul_refuses_non_integer_weights():
    with pytest.raises(UnsupportedNodeError, match="^non-integer weights$"):
        _exact_matmul(np.array([[0.5, 1.0]]), (0, 1))


def test_thresholds_count_like_finn():
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(-50, 50, (3, 7)), axis=1)
    acc = rng.integers(-60, 60, (20, 3)).astype(np.float32)
    expected = (acc[:, :, None] >= t[None]).sum(axis=2)
    out = _thresholds(t, -2, False, np.int8)(acc)
    assert out.dtype == np.int8 and np.array_equal(out, expected - 2)
    bipolar = _thresholds(t, 0, True, np.int8)(acc)
    assert np.array_equal(bipolar, 2 * expected - 1)
    big = _thresholds(t, 0, False, np.int16)(acc.astype(np.int64) * 2**40)  # clipped thresholds, same counts
    assert np.array_equal(big, ((acc.astype(np.float64) * 2**40)[:, :, None] >= t[None]).sum(axis=2))


def test_as_int_refuses_a_fraction():
    assert np.array_equal(_as_int(np.array([1.0, -3.0], dtype=np.float32)), np.array([1, -3]))
    assert _as_int(np.array([2], dtype=np.int32)).dtype == np.int64
    with pytest.raises(RuntimeError, match="non-integer value"):
        _as_int(np.array([0.5]))

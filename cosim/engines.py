"""Two ways to execute one FINN HW graph (a stage or a head of a built design) on integer input.

* :class:`FinnEngine`, the reference: FINN's own Python execution (``finn.core.onnx_exec.
  execute_onnx``) of the graph, one sample at a time, as FINN's layers define it. The built graph
  holds specialised layers (``MVAU_hls``, ``ConvolutionInputGenerator_rtl``, ...), which FINN
  executes only through cppsim or rtlsim (vendor tools); their Python model is the execute_node
  of the generic layer they specialise (``MVAU``, ...), so the reference runs a copy of the graph
  in which each node is that generic layer, with every attribute and initializer unchanged.
* :class:`VectorisedEngine`, exitflow's own: every node becomes a numpy kernel over a whole batch
  of samples (im2col by strided views, matrix-vector units as one matrix product, thresholds as
  comparisons). Values are integers throughout: between nodes in the smallest numpy integer type
  that holds the node's FINN output datatype. A matrix product runs through BLAS in floating
  point only when every partial sum provably fits the float's exact-integer range (``2**24`` for
  float32, ``2**53`` for float64), so the result is the integer result, and in ``int64``
  otherwise.

Both take and return channels-last integer arrays with a leading batch axis, and can return every
intermediate tensor by node name, for layer-by-layer comparison (:func:`first_difference`). A
graph with more than one input (a head whose agreement CTU reads the previous kept exit's class)
takes the others by name (``extra``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from exitflow.core.errors import ExitflowError
from exitflow.hls_templates.registry import register_finn_ops
from exitflow.hw.folding import generic_op

#: node types (generic names, without the _hls/_rtl suffix) that only move data
PASS_THROUGH = ("StreamingDataWidthConverter", "StreamingFIFO", "StreamingDataflowPartition")


class UnsupportedNodeError(ExitflowError):
    """A HW node the vectorised engine has no kernel for."""


def _import_finn_ops() -> None:
    """FINN's op registry, exitflow's own HW ops included; FINN needs its settings initialised."""
    import finn.util.settings as settings

    if getattr(settings, "_SETTINGS", None) is None:
        settings.initialize_dummy_settings()
    register_finn_ops()


# ------------------------------------------------------------------------------- reference


class FinnEngine:
    """FINN's Python execution of a HW graph, sample by sample (slow: a few images/s for CNV)."""

    name = "finn"

    def __init__(self, model) -> None:
        _import_finn_ops()
        generic = copy.deepcopy(model)
        for node in generic.graph.node:
            if node.domain.startswith("finn.custom_op.fpgadataflow"):
                node.domain = "finn.custom_op.fpgadataflow"
                node.op_type = generic_op(node.op_type)
        # StreamingFIFOs pass their input on in FINN's execution; taken out, as FINN's VVAU reads
        # its input in the window generator's order only when its producer is the generator
        # itself (a FIFO between them made it compute garbage). Their outputs are kept all the same.
        self.passed = {}  # FIFO node -> the tensor it passes on
        outputs = {t.name for t in generic.graph.output}
        for node in [n for n in generic.graph.node if n.op_type == "StreamingFIFO"]:
            if node.output[0] in outputs:
                continue
            for consumer in generic.find_consumers(node.output[0]):
                for k, tensor in enumerate(consumer.input):
                    if tensor == node.output[0]:
                        consumer.input[k] = node.input[0]
            self.passed[node.name] = node.input[0]
            generic.graph.node.remove(node)
        self.model = generic
        self.input_name = generic.graph.input[0].name
        self.output_name = generic.graph.output[0].name
        self.input_shape = tuple(generic.get_tensor_shape(self.input_name))
        self.extra_shapes = {t.name: tuple(generic.get_tensor_shape(t.name)) for t in generic.graph.input[1:]}

    def run(
        self, x: np.ndarray, keep: bool = False, extra: dict[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(output, intermediates by tensor name when ``keep``) for a batch ``x`` (int); ``extra``:
        the batch of every further graph input, by name."""
        from finn.core.onnx_exec import execute_onnx

        extra = _check_extra(self.extra_shapes, extra, len(x))
        outputs, kept = [], {}
        for i in range(len(x)):
            feed = {self.input_name: np.asarray(x[i : i + 1], dtype=np.float32).reshape(self.input_shape)}
            for name, shape in self.extra_shapes.items():
                feed[name] = np.asarray(extra[name][i : i + 1], dtype=np.float32).reshape(shape)
            context = execute_onnx(self.model, feed, return_full_exec_context=keep)
            outputs.append(_as_int(context[self.output_name]))
            if keep:
                for node in self.model.graph.node:
                    kept.setdefault(node.name, []).append(_as_int(context[node.output[0]]))
                for fifo, tensor in self.passed.items():
                    kept.setdefault(fifo, []).append(_as_int(context[tensor]))
        out = np.concatenate(outputs) if outputs else np.zeros((0,), dtype=np.int64)
        return out, {k: np.concatenate(v) for k, v in kept.items()}


def _check_extra(shapes: dict[str, tuple], extra: dict[str, np.ndarray] | None, n: int) -> dict[str, np.ndarray]:
    """``extra`` holds a batch of ``n`` for every further graph input (``shapes``), and nothing else."""
    extra = dict(extra or {})
    if set(extra) != set(shapes):
        raise ValueError(f"the graph's further inputs are {sorted(shapes) or 'none'}; got values for {sorted(extra)}")
    for name, value in extra.items():
        if len(value) != n:
            raise ValueError(f"{name}: {len(value)} values for a batch of {n}")
    return extra


def _as_int(value: np.ndarray) -> np.ndarray:
    """FINN holds integers in float32 tensors (exactly, below 2**24); the CTU already in int64."""
    value = np.asarray(value)
    if value.dtype.kind in "iu":
        return value.astype(np.int64)
    rounded = np.rint(value)
    if not np.array_equal(rounded, value):
        raise RuntimeError("a HW tensor holds a non-integer value")
    return rounded.astype(np.int64)


# ------------------------------------------------------------------------------ vectorised

Kernel = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Step:
    name: str  # FINN node name
    op: str  # generic op type
    kernel: Callable  # one array per data input -> one array, or a tuple for several outputs
    inputs: tuple[str, ...]  # data-input tensor names (initializers are the kernel's own)
    outputs: tuple[str, ...]
    input_shapes: tuple[tuple[int, ...], ...]  # of one sample per input, as the node takes it


class VectorisedEngine:
    """exitflow's batch execution of a HW graph with numpy integer kernels. The graph may fork
    and join (a residual block's DuplicateStreams and ElementwiseAdd): nodes run in the graph's
    topological order, each tensor kept until its last consumer has run."""

    name = "vectorised"

    def __init__(self, model) -> None:
        _import_finn_ops()
        from qonnx.custom_op.registry import getCustomOp

        self.input_name = model.graph.input[0].name
        self.output_name = model.graph.output[0].name
        self.input_shape = tuple(model.get_tensor_shape(self.input_name))
        self.output_shape = tuple(model.get_tensor_shape(self.output_name))
        self.input_dtype = int_dtype(model.get_tensor_datatype(self.input_name))
        self.extra_shapes = {t.name: tuple(model.get_tensor_shape(t.name)) for t in model.graph.input[1:]}
        self.extra_dtypes = {t.name: int_dtype(model.get_tensor_datatype(t.name)) for t in model.graph.input[1:]}
        self.steps: list[Step] = []
        known = {self.input_name, *self.extra_shapes}
        for node in model.graph.node:
            inputs = tuple(i for i in node.input if model.get_initializer(i) is None)
            missing = [i for i in inputs if i not in known]
            if missing:
                raise UnsupportedNodeError(f"{node.name}: its input {missing[0]} is not computed before it")
            op = generic_op(node.op_type)
            builder = KERNELS.get(op)
            if builder is None:
                raise UnsupportedNodeError(
                    f"{node.name}: the vectorised engine has no kernel for {node.op_type}; "
                    "run the FINN reference instead (--engine finn)"
                )
            inst = getCustomOp(node)
            shapes = tuple(tuple(inst.get_normal_input_shape(k))[1:] for k in range(len(inputs)))
            self.steps.append(Step(node.name, op, builder(inst, model), inputs, tuple(node.output), shapes))
            known.update(node.output)
        if self.output_name not in known:
            raise UnsupportedNodeError(f"the graph output {self.output_name} is computed by no node")
        last_use: dict[str, int] = {}
        for k, step in enumerate(self.steps):
            for name in step.inputs:
                last_use[name] = k
        # tensors no later step reads, after each step: freed to keep the memory at the widest cut
        self._free = [
            [n for n in step.inputs if last_use[n] == k and n != self.output_name] for k, step in enumerate(self.steps)
        ]

    def run(
        self, x: np.ndarray, keep: bool = False, extra: dict[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        n = len(x)
        values = {self.input_name: np.asarray(x).astype(self.input_dtype, copy=False)}
        for name, value in _check_extra(self.extra_shapes, extra, n).items():
            values[name] = np.asarray(value).astype(self.extra_dtypes[name], copy=False)
        kept = {}
        for step, free in zip(self.steps, self._free, strict=True):
            args = [values[t].reshape(n, *shape) for t, shape in zip(step.inputs, step.input_shapes, strict=True)]
            out = step.kernel(*args)
            outs = out if isinstance(out, tuple) else (out,)
            values.update(zip(step.outputs, outs, strict=True))
            if keep:
                kept[step.name] = outs[0].copy()  # kernels may reuse their buffers
            for name in free:
                del values[name]
        out = values[self.output_name]
        return out.reshape((n, *self.output_shape[1:])).astype(np.int64, copy=False), kept


# ---- kernels: one builder per generic op, from the node's attributes and initializers


def int_dtype(datatype) -> type:
    """The smallest numpy integer type that holds every value of a FINN datatype."""
    lo, hi = int(datatype.min()), int(datatype.max())
    for dtype in (np.int8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return dtype
    return np.int64


def _sliding_window(inst, model) -> Kernel:
    kh, kw = inst.get_nodeattr("ConvKernelDim")
    sh, sw = inst.get_nodeattr("Stride")
    dh, dw = inst.get_nodeattr("Dilation")
    oh, ow = inst.get_nodeattr("OFMDim")
    buffers: dict[tuple, np.ndarray] = {}  # reused: a fresh large array per batch costs page faults

    def im2col(h: np.ndarray) -> np.ndarray:  # (N, H, W, C) -> (N, OH, OW, KH*KW*C), kernel-major
        n, _, _, c = h.shape
        s0, s1, s2, s3 = h.strides
        view = np.lib.stride_tricks.as_strided(
            h, shape=(n, oh, ow, kh, kw, c), strides=(s0, s1 * sh, s2 * sw, s1 * dh, s2 * dw, s3), writeable=False
        )
        key = (view.shape, h.dtype)
        out = buffers.get(key)
        if out is None:
            buffers.clear()
            out = buffers[key] = np.empty(view.shape, dtype=h.dtype)
        np.copyto(out, view)
        return out.reshape(n, oh, ow, kh * kw * c)

    return im2col


def _int8_matmul() -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """torch's int8 x int8 -> int32 matrix product (exact), when this torch has it on CPU."""
    try:
        import torch

        probe = torch._int_mm(torch.ones((2, 8), dtype=torch.int8), torch.ones((8, 2), dtype=torch.int8))
        if int(probe[0, 0]) != 8:
            return None
    except (ImportError, AttributeError, RuntimeError):
        return None
    return lambda x, w: torch._int_mm(torch.from_numpy(x), w).numpy()


def _exact_matmul(weights: np.ndarray, in_range: tuple[int, int]) -> Kernel:
    """``x @ W`` for integer ``x`` in ``in_range``, exactly, in the fastest exact way:

    * int8 x int8 -> int32 (torch's ``_int_mm``) when inputs and weights fit int8 and every
      partial sum fits int32;
    * BLAS in float32 (float64) when every partial sum is below ``2**24`` (``2**53``): the float
      type holds every integer on the way exactly, so the float result *is* the integer result;
    * int64 otherwise.

    The result holds integers, in int32, the float type or int64."""
    w = np.asarray(weights)
    if not np.array_equal(w, np.rint(w)):
        raise UnsupportedNodeError("non-integer weights")
    w_int = np.rint(w).astype(np.int64)
    lo, hi = in_range
    bound = int(np.abs(w_int).sum(axis=0).max(initial=0)) * max(abs(lo), abs(hi))  # largest partial sum
    rows, cols = w_int.shape
    # inputs spanning at most 256 values run in int8 after subtracting an offset:
    # x @ W = (x - offset) @ W + offset * (column sums of W)
    offset = lo + 128 if hi - lo <= 255 and not -128 <= lo <= hi <= 127 else 0
    int8_mm = (
        _int8_matmul()
        if hi - lo <= 255
        and np.abs(w_int).max(initial=0) <= 127
        and bound + abs(offset) * int(np.abs(w_int).sum(axis=0).max(initial=0)) < 2**31
        else None
    )
    if int8_mm is not None:
        import torch

        w_t = torch.from_numpy(w_int.astype(np.int8))
        correction = (offset * w_int.sum(axis=0)).astype(np.int32)

        def matmul(x: np.ndarray) -> np.ndarray:
            flat = x.reshape(-1, rows)
            flat = (flat - offset).astype(np.int8) if offset else np.ascontiguousarray(flat, dtype=np.int8)
            out = int8_mm(flat, w_t)
            if offset:
                out += correction
            return out.reshape(*x.shape[:-1], cols)

        return matmul
    dtype = np.float32 if bound < 2**24 else np.float64 if bound < 2**53 else np.int64
    w_used = w_int.astype(dtype)

    def matmul(x: np.ndarray) -> np.ndarray:  # one 2-D product: BLAS is fastest on one tall matrix
        flat = x.reshape(-1, rows).astype(dtype)
        return (flat @ w_used).reshape(*x.shape[:-1], cols)

    return matmul


def _thresholds(thresholds: np.ndarray, act_val: int, bipolar_out: bool, out_dtype: type) -> Kernel:
    """FINN's multithreshold on the last (channel) axis: the count of thresholds ``x >= t``,
    plus ActVal (or 2*count - 1 for a bipolar output). For integer ``x``, ``x >= t`` is
    ``x >= ceil(t)``. The comparison runs in the accumulator's type, with the thresholds clipped
    to the range in which :func:`_exact_matmul` keeps that type exact (no accumulator reaches
    beyond it, so the counts are unchanged)."""
    t = np.ceil(np.asarray(thresholds, dtype=np.float64))
    steps = t.shape[1]
    limits = {
        np.dtype(np.int32): 2**31 - 1,
        np.dtype(np.float32): 2**24,
        np.dtype(np.float64): 2**53,
        np.dtype(np.int64): 2**62,
    }
    typed = {dt: np.clip(t, -limit, limit).astype(dt) for dt, limit in limits.items()}

    def apply(acc: np.ndarray) -> np.ndarray:
        tt = typed.get(acc.dtype)
        if tt is None:
            acc, tt = acc.astype(np.int64), typed[np.dtype(np.int64)]
        count = np.zeros(acc.shape, dtype=np.int16 if steps < 2**15 else np.int64)
        for j in range(steps):  # one comparison per step keeps the memory at the size of acc
            count += acc >= tt[:, j]
        out = 2 * count - 1 if bipolar_out else count + act_val
        return out.astype(out_dtype, copy=False)

    return apply


def _mvau(inst, model) -> Kernel:
    from qonnx.core.datatype import DataType

    node = inst.onnx_node
    weights = model.get_initializer(node.input[1])
    idt = inst.get_input_datatype(0)
    xnor = bool(inst.get_nodeattr("binaryXnorMode"))
    bipolar = idt == DataType["BIPOLAR"] and inst.get_nodeattr("weightDataType") == "BIPOLAR"
    if xnor or bipolar:
        # popcount(xnor(x, w)) = x.w + (1-x).(1-w), on binary values
        wb = (np.asarray(weights) + 1) / 2 if bipolar else np.asarray(weights)
        ones, zeros = _exact_matmul(wb, (0, 1)), _exact_matmul(1 - wb, (0, 1))
        flip = (lambda x: (x + 1) // 2) if bipolar else (lambda x: x)
        matmul = lambda x: ones(flip(x)) + zeros(1 - flip(x))  # noqa: E731
    else:
        matmul = _exact_matmul(weights, (int(idt.min()), int(idt.max())))
    if inst.get_nodeattr("noActivation"):
        return lambda x: np.rint(matmul(x)).astype(np.int64)
    odt = inst.get_output_datatype()
    threshold = _thresholds(
        model.get_initializer(node.input[2]), inst.get_nodeattr("ActVal"), odt == DataType["BIPOLAR"], int_dtype(odt)
    )
    return lambda x: threshold(matmul(x))


def _vvau(inst, model) -> Kernel:
    """FINN's VectorVectorActivation (a depthwise convolution): every channel's k*k window, from
    the depthwise window generator in kernel-major order, times that channel's own k*k weights,
    then the channel's thresholds. Exact in int64."""
    from qonnx.core.datatype import DataType

    node = inst.onnx_node
    kh, kw = inst.get_nodeattr("Kernel")
    channels = inst.get_nodeattr("Channels")
    weights = np.asarray(model.get_initializer(node.input[1]))
    if not np.array_equal(weights, np.rint(weights)):
        raise UnsupportedNodeError(f"{node.name}: non-integer weights")
    w = np.rint(weights).astype(np.int64).reshape(channels, kh * kw).T  # (k*k, C)

    def depthwise(x: np.ndarray) -> np.ndarray:
        windows = x.reshape(*x.shape[:-1], kh * kw, channels).astype(np.int64, copy=False)
        return np.einsum("...kc,kc->...c", windows, w)

    if inst.get_nodeattr("noActivation"):
        return depthwise
    odt = inst.get_output_datatype()
    threshold = _thresholds(
        model.get_initializer(node.input[2]), inst.get_nodeattr("ActVal"), odt == DataType["BIPOLAR"], int_dtype(odt)
    )
    return lambda x: threshold(depthwise(x))


def _elementwise_add(inst, model) -> Kernel:
    """FINN's ElementwiseAdd of two streams (a residual add), or of a stream and a constant."""
    node = inst.onnx_node
    odt = int_dtype(inst.get_output_datatype())
    constant = [model.get_initializer(i) for i in node.input if model.get_initializer(i) is not None]
    if constant:
        c = np.asarray(constant[0])
        if not np.array_equal(c, np.rint(c)):
            raise UnsupportedNodeError(f"{node.name}: adds a non-integer constant")
        c = np.rint(c).astype(np.int64)
        return lambda a: (a.astype(np.int64) + c).astype(odt, copy=False)
    return lambda a, b: (a.astype(np.int64) + b.astype(np.int64)).astype(odt, copy=False)


def _duplicate_streams(inst, model) -> Kernel:
    copies = len(inst.onnx_node.output)
    return lambda h: (h,) * copies  # no kernel writes into its input


def _global_acc_pool(inst, model) -> Kernel:
    """FINN's GlobalAccPool: the sum over the image of every channel (the 1/N stays in software)."""
    odt = int_dtype(inst.get_output_datatype())
    return lambda h: h.sum(axis=tuple(range(1, h.ndim - 1)), dtype=np.int64).astype(odt, copy=False)


def _thresholding(inst, model) -> Kernel:
    from qonnx.core.datatype import DataType

    odt = DataType[inst.get_nodeattr("outputDataType")]
    return _thresholds(
        model.get_initializer(inst.onnx_node.input[1]),
        inst.get_nodeattr("ActVal"),
        odt == DataType["BIPOLAR"],
        int_dtype(odt),
    )


def _pool(inst, model) -> Kernel:
    function = inst.get_nodeattr("Function")
    kh, kw = inst.get_nodeattr("KernelSize")
    channels = inst.get_nodeattr("Channels")
    if function == "QuantAvgPool":
        ibits, obits = inst.get_input_datatype().bitwidth(), inst.get_output_datatype().bitwidth()
        shift = max(0, int((2**ibits - 1) * kh * kw).bit_length() - obits)
    elif function not in ("MaxPool", "AccPool"):
        raise UnsupportedNodeError(f"{inst.onnx_node.name}: pool function {function} is not supported")

    def pool(h: np.ndarray) -> np.ndarray:
        windows = h.reshape(*h.shape[:-1], kh * kw, channels)
        if function == "MaxPool":
            return windows.max(axis=-2)
        total = windows.sum(axis=-2, dtype=np.int64)
        return total >> shift if function == "QuantAvgPool" else total

    return pool


def _streaming_maxpool(inst, model) -> Kernel:
    ph, pw = inst.get_nodeattr("PoolDim")
    ih, iw = inst.get_nodeattr("ImgDim")
    if ih % ph or iw % pw or inst.get_nodeattr("CeilMode"):
        raise UnsupportedNodeError(f"{inst.onnx_node.name}: pooling that does not tile the image is not supported")

    def pool(h: np.ndarray) -> np.ndarray:
        n, _, _, c = h.shape
        return h.reshape(n, ih // ph, ph, iw // pw, pw, c).max(axis=(2, 4))

    return pool


def _fm_padding(inst, model) -> Kernel:
    top, left, bottom, right = inst.get_nodeattr("Padding")

    def pad(h: np.ndarray) -> np.ndarray:
        return np.pad(h, ((0, 0), (top, bottom), (left, right), (0, 0)))

    return pad


def _label_select(inst, model) -> Kernel:
    k = inst.get_nodeattr("K")

    def top_k(h: np.ndarray) -> np.ndarray:  # ONNX TopK: largest first, the lower index first on ties
        return np.argsort(-h, axis=-1, kind="stable")[..., :k]

    return top_k


def _confidence_threshold(inst, model) -> Kernel:
    params = inst.params()
    classes = params.classes

    def ctu(h: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
        flat = h.reshape(-1, classes)
        before = None if previous is None else previous.reshape(-1).astype(np.int64)
        return params.pack(params.decide(flat, before)).reshape(*h.shape[:-1], 1)

    return ctu


def _pass_through(inst, model) -> Kernel:
    return lambda h: h


KERNELS: dict[str, Callable[..., Kernel]] = {
    "ConvolutionInputGenerator": _sliding_window,
    "MVAU": _mvau,
    "Thresholding": _thresholding,
    "Pool": _pool,
    "StreamingMaxPool": _streaming_maxpool,
    "FMPadding": _fm_padding,
    "VVAU": _vvau,
    "ElementwiseAdd": _elementwise_add,
    "DuplicateStreams": _duplicate_streams,
    "GlobalAccPool": _global_acc_pool,
    "LabelSelect": _label_select,
    "ConfidenceThreshold": _confidence_threshold,
    **{op: _pass_through for op in PASS_THROUGH},
}


# -------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Difference:
    """The first element where two tensors differ."""

    node: str  # FINN node name whose output differs
    index: tuple[int, ...]  # within one sample's tensor
    expected: int
    got: int

    def describe(self) -> str:
        return f"node {self.node}, element {list(self.index)}: expected {self.expected}, got {self.got}"


def first_difference(
    expected: dict[str, np.ndarray], got: dict[str, np.ndarray], order: list[str]
) -> Difference | None:
    """The first node in ``order`` whose output differs between two runs of one sample."""
    for name in order:
        a, b = np.asarray(expected[name]), np.asarray(got[name])
        a = a.reshape(b.shape) if a.size == b.size else a
        if a.shape != b.shape:
            return Difference(name, (), -1, -1)
        if not np.array_equal(a, b):
            index = tuple(int(i) for i in np.argwhere(a != b)[0][1:])  # without the batch axis
            return Difference(name, index, int(a[(0, *index)]), int(b[(0, *index)]))
    return None

"""exitflow's own list of FINN steps, for one stage or head QONNX graph.

FINN's builder module cannot be imported without Vivado, so exitflow runs FINN's transformations
itself, in the order FINN's builder does, one function per step (each named by a verb):

  integerize_input -> qonnx_to_finn -> tidy_up -> streamline -> convert_to_hw -> round_thresholds
  -> remove_identity_thresholds -> take_dataflow_partition -> append_ctu (heads) -> specialize_layers
  -> apply_folding -> minimize_bit_width -> insert_width_converters -> (estimate reports) -> generate_code

``integerize_input`` is exitflow's: every exported graph starts with the quantiser of what it
receives, so its input is replaced by the integer stream itself (``UINT8`` pixels for the first
stage, the previous stage's activations for the others) times the quantiser's scale; FINN's
streamlining absorbs that scale. Between stages the hardware therefore streams integers.

Folding is given per *layer name* (block names for stages, ``hidden``/``classifier`` for heads):
the k-th weight layer of a graph is its k-th MVAU, so generated FINN node names never appear in
a design. The folding is one FINN folding config keyed by node names, applied with FINN's
ApplyConfig and written out as ``folding_config.json``, which FINN's own builder accepts unchanged
(``folding_config_file``). exitflow's own graph rewrites (:class:`IntegerizeInput`,
:class:`RemoveIdentityThresholds`, :class:`AppendCTU`) are QONNX Transformations.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from qonnx.transformation.base import Transformation

from exitflow.core.artifacts import LayerMap
from exitflow.core.design import LayerFolding
from exitflow.core.errors import ExitflowError, check_interrupt
from exitflow.core.schema import load_json_file
from exitflow.hls_templates.registry import register_finn_ops
from exitflow.hw.folding import (
    WEIGHT_OPS,
    _window_attrs,
    divisors,
    folding_violation,
    pool_folding,
    scratch_op,
    stream_folding,
    window_fold,
)
from exitflow.hw.streams import (
    LINK_PIXELS,
    TOLERANCE,
    Deadlock,
    built_fifo_pixels,
    simulate,
    size_fifos,
    words_per_pixel,
)

HW_ATTRS = ["PE", "SIMD", "ram_style", "ram_style_thresholds", "mem_mode", "resType", "impl_style", "parallel_window"]


class UnsupportedLayerError(ExitflowError):
    """FINN cannot map a layer of the graph to hardware."""


@dataclass
class FlowState:
    """What a step needs besides the graph."""

    name: str  # stage or head name, for messages
    part: str
    clock_ns: float
    layers: list[str]  # weight layers of this graph, in order
    folding: Mapping[str, object]  # layer name -> LayerFolding
    out: Path
    layer_nodes: dict[str, str] = field(default_factory=dict)  # layer name -> FINN node name
    image_input: bool = False  # the first stage: its input is UINT8 pixels
    signatures: dict[str, tuple] = field(default_factory=dict)  # layer name -> layer_signature of it
    skip_fifos: dict[str, int] = field(default_factory=dict)  # residual join -> its skip FIFO's depth in words
    link_pixels: int = LINK_PIXELS  # what every plain stream holds, as sized
    link_fifos: int = 0  # StreamingFIFOs added on plain streams
    ctu: dict | None = None  # heads: policy, threshold (None: final exit), scale of the logits, class_input
    input_datatype: str = ""
    input_scale: float = 1.0
    where: str = ""  # the graph in the user's words, for messages (e.g. "the stage of blocks conv0, conv1")

    def __post_init__(self) -> None:
        self.where = self.where or self.name


#: The loggers FINN and QONNX talk through (SetFolding warns through ``finn_logger`` about every
#: op it does not know, exitflow's own among them).
FINN_LOGGERS = ("finn_logger", "finn", "qonnx", "build_dataflow")


@contextlib.contextmanager
def finn_chatter(path: Path, mode: str = "a"):
    """Everything FINN says while the block runs goes to the log file ``path``, not to the
    terminal: its loggers, Python warnings, and what it prints on stdout and stderr. The loggers'
    own handlers, levels and propagation are put back afterwards."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(path, mode, encoding="utf-8") as log_file,
        contextlib.redirect_stdout(log_file),
        contextlib.redirect_stderr(log_file),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("always")  # into the log, every time
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: log_file.write(
            warnings.formatwarning(message, category, filename, lineno, line)
        )  # catch_warnings puts it back
        handler = logging.StreamHandler(log_file)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        saved = []
        for name in FINN_LOGGERS:
            logger = logging.getLogger(name)
            saved.append((logger, logger.handlers[:], logger.propagate, logger.level))
            logger.handlers, logger.propagate = [handler], False
            logger.setLevel(logging.WARNING)  # warnings are what the log is for, silenced or not elsewhere
        try:
            yield log_file
        finally:
            for logger, handlers, propagate, level in saved:
                logger.handlers, logger.propagate = handlers, propagate
                logger.setLevel(level)
            log_file.flush()


@contextlib.contextmanager
def finn_settings(build_dir: Path):
    """FINN writes generated code below its build directory: point it into exitflow's output."""
    import finn.util.settings as settings
    from finn.interface.settings import FINNSettings

    build_dir.mkdir(parents=True, exist_ok=True)
    previous = settings._SETTINGS
    settings._SETTINGS = FINNSettings.init(
        flow_config=build_dir / "dummy.yaml", finn_build_dir=str(build_dir), auto_set_environment_vars=False
    )
    try:
        yield
    finally:
        settings._SETTINGS = previous


class IntegerizeInput(Transformation):
    """Make the graph's input the integer stream the hardware receives, times its scale.

    The first stage receives image pixels (``UINT8``; the model sees pixel/255, whatever it does
    next, e.g. bnn_pynq's 2x-1): ``image_input``. Every later stage and every head starts with the
    quantiser of what it receives; its input becomes that quantiser's integers. FINN's
    streamlining then absorbs the scale into the first thresholds. The input's datatype name and
    scale are kept as ``datatype`` and ``scale``; ``where`` names the graph in messages."""

    def __init__(self, image_input: bool = False, where: str = "the graph") -> None:
        super().__init__()
        self.image_input, self.where = image_input, where
        self.datatype, self.scale = "", 1.0

    def apply(self, model):
        from onnx import helper
        from qonnx.core.datatype import DataType

        graph_in = model.graph.input[0].name
        first = model.find_consumer(graph_in)
        if first is None:
            raise UnsupportedLayerError(f"{self.where}: the graph input feeds no node")
        if self.image_input:
            dt, scale = DataType["UINT8"], np.float32(1.0 / 255.0)
        else:
            # a QuantReLU exports as Relu -> Quant; on its own non-negative output the Relu is the identity
            quant = model.find_consumer(first.output[0]) if first.op_type == "Relu" else first
            if quant is None or quant.op_type not in ("Quant", "BipolarQuant"):
                raise UnsupportedLayerError(
                    f"{self.where}: the graph must start with a quantiser; it starts with {first.op_type}"
                )
            scale = model.get_initializer(quant.input[1])
            if scale is None or np.asarray(scale).size != 1:
                raise UnsupportedLayerError(f"{self.where}: the input quantiser needs one per-tensor scale")
            if quant.op_type == "BipolarQuant":
                dt = DataType["BIPOLAR"]
            else:
                bits = int(model.get_initializer(quant.input[3]))
                signed = next(a.i for a in quant.attribute if a.name == "signed")
                dt = DataType[("INT" if signed else "UINT") + str(bits)]
        scaled = graph_in + "_scaled"
        model.set_initializer("exitflow_input_scale", np.asarray(scale, dtype=np.float32).reshape(()))
        for consumer in model.find_consumers(graph_in):
            consumer.input[list(consumer.input).index(graph_in)] = scaled
        model.graph.node.insert(
            0, helper.make_node("Mul", [graph_in, "exitflow_input_scale"], [scaled], name="InputScale")
        )
        model.set_tensor_datatype(graph_in, dt)
        self.datatype, self.scale = dt.name, float(np.asarray(scale))
        return model, False


def integerize_input(model, state: FlowState):
    """:class:`IntegerizeInput`; the input's datatype and scale go into ``state``."""
    from qonnx.transformation.infer_shapes import InferShapes

    rewrite = IntegerizeInput(state.image_input, state.where)
    model = model.transform(rewrite, cleanup=False)
    state.input_datatype, state.input_scale = rewrite.datatype, rewrite.scale
    return model.transform(InferShapes())


class InitializersToFloat(Transformation):
    """Every floating-point initializer in ``dtype`` (float32 or float64)."""

    def __init__(self, dtype):
        super().__init__()
        self.dtype = np.dtype(dtype)

    def apply(self, model):
        for init in model.graph.initializer:
            value = model.get_initializer(init.name)
            if value.dtype.kind == "f" and value.dtype != self.dtype:
                model.set_initializer(init.name, value.astype(self.dtype))
        return model, False


@contextlib.contextmanager
def _thresholds_in_float64():
    """FINN's Quant-to-MultiThreshold handlers compute thresholds in float64 and store them in
    float32 (their module's ``np_default_dtype``); kept in float64 here, so that the scales
    streamlining divides them by cannot move a threshold across an integer (a ResNet-8's
    accumulator of 113 met a float32 threshold of 113.00001, rounded up to 114)."""
    import finn.transformation.qonnx.qonnx_activation_handlers as handlers

    saved = handlers.np_default_dtype
    handlers.np_default_dtype = np.float64
    try:
        yield
    finally:
        handlers.np_default_dtype = saved


def qonnx_to_finn(model, state: FlowState):
    from finn.transformation.qonnx.convert_qonnx_to_finn import ConvertQONNXtoFINN
    from qonnx.util.cleanup import cleanup_model

    with _thresholds_in_float64():
        return cleanup_model(model).transform(ConvertQONNXtoFINN())


def tidy_up(model, state: FlowState):
    from qonnx.transformation.fold_constants import FoldConstants
    from qonnx.transformation.general import GiveReadableTensorNames, GiveUniqueNodeNames, RemoveStaticGraphInputs
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes

    for t in (
        InferShapes(),
        FoldConstants(),
        GiveUniqueNodeNames(),
        GiveReadableTensorNames(),
        InferDataTypes(),
        RemoveStaticGraphInputs(),
        ReduceMeanToGlobalAveragePool(),
        InferShapes(),
        InferDataTypes(),
    ):
        model = model.transform(t)
    return model


def streamline(model, state: FlowState):
    """FINN's step_streamline, plus the moves through forks and joins of residual blocks."""
    import finn.transformation.streamline.absorb as absorb
    import finn.transformation.streamline.reorder as reorder
    from finn.transformation.streamline import Streamline
    from finn.transformation.streamline.reorder import MakeMaxPoolNHWC
    from qonnx.transformation.bipolar_to_xnor import ConvertBipolarMatMulToXnorPopcount
    from qonnx.transformation.composed import ComposedTransformation
    from qonnx.transformation.general import RemoveUnusedTensors
    from qonnx.transformation.infer_data_layouts import InferDataLayouts
    from qonnx.transformation.lower_convs_to_matmul import LowerConvsToMatMul

    model = model.transform(InitializersToFloat(np.float64))
    model = model.transform(absorb.AbsorbScalarBiasIntoMultiThreshold()).transform(Streamline())
    if any(_is_join(model, n) for n in model.graph.node):
        # residual blocks: scales past the forks into both branches, equal scales past the joins
        for t in (reorder.MoveLinearPastFork(), reorder.MoveMulPastJoinAdd(), reorder.MoveLinearPastEltwiseAdd()):
            model = model.transform(t)
        model = model.transform(Streamline())
    if model.get_nodes_by_op_type("Conv"):
        for t in (
            LowerConvsToMatMul(),
            MakeMaxPoolNHWC(),
            absorb.AbsorbTransposeIntoMultiThreshold(),
            MakeMaxPoolNHWC(),
            absorb.AbsorbConsecutiveTransposes(),
        ):
            model = model.transform(t)
        if any(_is_join(model, n) for n in model.graph.node):
            # residual blocks: channels-last everywhere, by pushing the layout transposes
            # through the forks, the thresholds and the joins until they cancel
            model = model.transform(ChannelsLastInput())
            model = model.transform(
                ComposedTransformation(
                    [
                        absorb.AbsorbTransposeIntoMultiThreshold(),
                        reorder.MoveTransposePastFork(),
                        reorder.MoveTransposePastJoinAdd(),
                        absorb.AbsorbConsecutiveTransposes(),
                        MergeDuplicateNodes(),
                    ]
                )
            )
    model = model.transform(ConvertBipolarMatMulToXnorPopcount()).transform(Streamline())
    if model.get_nodes_by_op_type("GlobalAveragePool"):
        # GlobalAccPool (the sum) and a Mul by 1/N, which streamlining moves past the classifier
        from finn.transformation.fpgadataflow.convert_to_hw.global_acc_pool import InferGlobalAccPoolLayer

        model = model.transform(InferDataLayouts()).transform(InferGlobalAccPoolLayer()).transform(Streamline())
        # a quantiser right after the pool (a user's QuantIdentity before the classifier): its
        # thresholds go before the flatten, and the layout transpose past them into software
        model = model.transform(MoveFlattenPastMultiThreshold())
        for t in (absorb.AbsorbTransposeIntoMultiThreshold(), absorb.AbsorbConsecutiveTransposes()):
            model = model.transform(t)
    # thresholds on integers are whole numbers by now (RoundAndClipThresholds): float32 holds them
    model = model.transform(InitializersToFloat(np.float32))
    return model.transform(InferDataLayouts()).transform(RemoveUnusedTensors())


class MoveFlattenPastMultiThreshold(Transformation):
    """Flatten -> MultiThreshold on a feature map of 1 x 1 pixels (after global pooling) becomes
    MultiThreshold -> Flatten: per-channel thresholds on (N, C, 1, 1) give what they give on
    (N, C). The flatten then sits where FINN can leave it in software."""

    def apply(self, model):
        for node in model.graph.node:
            if node.op_type != "Flatten":
                continue
            shape = model.get_tensor_shape(node.input[0])
            consumer = model.find_consumer(node.output[0])
            if shape is None or len(shape) != 4 or shape[2:] != [1, 1] or consumer is None:
                continue
            if consumer.op_type != "MultiThreshold" or len(model.find_consumers(node.output[0])) != 1:
                continue
            flat_in, mt_out = node.input[0], consumer.output[0]
            spatial = model.make_new_valueinfo_name()
            consumer.input[0] = flat_in
            consumer.output[0] = spatial
            node.input[0], node.output[0] = spatial, mt_out
            model.set_tensor_shape(spatial, shape)
            model.set_tensor_datatype(spatial, model.get_tensor_datatype(mt_out))
            nodes = list(model.graph.node)
            model.graph.node.remove(node)
            model.graph.node.insert(nodes.index(consumer), node)  # after the thresholds (one earlier now)
            return model, True
        return model, False


def convert_to_hw(model, state: FlowState):
    """The HW-layer inferences of FINN's step_convert_to_hw that exitflow's graphs need, in its
    order: weight layers (MVAU, then VVAU for depthwise convolutions), thresholds, pooling,
    sliding windows (with FMPadding), the residual add (ElementwiseAdd, joins only: the output
    scale stays in software) and, last, a DuplicateStreams for every fork."""
    import finn.transformation.streamline.absorb as absorb
    from finn.transformation.fpgadataflow.convert_to_hw.binary_matrix_vector_activation import (
        InferBinaryMatrixVectorActivation,
    )
    from finn.transformation.fpgadataflow.convert_to_hw.conv_inp_gen import InferConvInpGen
    from finn.transformation.fpgadataflow.convert_to_hw.duplicate_streams import InferDuplicateStreamsLayer
    from finn.transformation.fpgadataflow.convert_to_hw.elementwise_binary_operation import (
        InferElementwiseBinaryOperation,
    )
    from finn.transformation.fpgadataflow.convert_to_hw.pool import InferPool
    from finn.transformation.fpgadataflow.convert_to_hw.quantized_matrix_vector_activation import (
        InferQuantizedMatrixVectorActivation,
    )
    from finn.transformation.fpgadataflow.convert_to_hw.thresholding import InferThresholdingLayer
    from finn.transformation.fpgadataflow.convert_to_hw.vector_vector_activation import (
        InferVectorVectorActivation,
    )
    from finn.transformation.move_reshape import RemoveCNVtoFCFlatten
    from qonnx.transformation.general import GiveUniqueNodeNames
    from qonnx.transformation.infer_data_layouts import InferDataLayouts
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes

    for t in (
        InferBinaryMatrixVectorActivation(),
        InferQuantizedMatrixVectorActivation(),
        InferVectorVectorActivation(),
        InferThresholdingLayer(),
        InferPool(),
        InferConvInpGen(),
        RemoveCNVtoFCFlatten(),
        InferElementwiseBinaryOperation(_is_join),
        InferDuplicateStreamsLayer(),
        absorb.AbsorbConsecutiveTransposes(),
        GiveUniqueNodeNames(),
        InferDataLayouts(),
        InferDataTypes(),
        InferShapes(),
    ):
        model = model.transform(t)
    return model


def _is_join(model, node) -> bool:
    """An Add of two streams (a residual join), not of a constant."""
    return node.op_type == "Add" and all(model.get_initializer(i) is None for i in node.input)


def round_thresholds(model, state: FlowState):
    """As FINN's step_minimize_bit_width_initial: HW inference leaves INT32 as a placeholder on
    an ElementwiseAdd's output; MinimizeAccumulatorWidth tightens it (INT5+INT5 -> INT6) and the
    thresholds after the add are rounded and clipped again to that range. (Rounding first: FINN's
    MinimizeWeightBitWidth/Thresholding assert non-negative thresholds on unsigned inputs.)"""
    from finn.transformation.fpgadataflow.minimize_accumulator_width import MinimizeAccumulatorWidth
    from finn.transformation.streamline.round_thresholds import RoundAndClipThresholds
    from qonnx.transformation.infer_datatypes import InferDataTypes

    for t in (
        RoundAndClipThresholds(),
        InferDataTypes(),
        MinimizeAccumulatorWidth(),
        InferDataTypes(),
        RoundAndClipThresholds(),
        InferDataTypes(),
    ):
        model = model.transform(t)
    return model


class RemoveIdentityThresholds(Transformation):
    """The graph's leading quantiser, once its input is the integer stream, maps every integer
    to itself (thresholds min+1..max, offset min): it is removed instead of built."""

    def apply(self, model):
        from qonnx.core.datatype import DataType
        from qonnx.custom_op.registry import getCustomOp

        for node in list(model.graph.node):
            if node.op_type != "Thresholding":
                continue
            inst = getCustomOp(node)
            dt_in, dt_out = inst.get_input_datatype(0), inst.get_output_datatype(0)
            if dt_in != dt_out or dt_in == DataType["BIPOLAR"] or not dt_in.is_integer():
                continue
            thresholds = model.get_initializer(node.input[1])
            steps = np.arange(dt_in.min() + 1, dt_in.max() + 1)
            if thresholds is None or thresholds.shape[-1] != len(steps) or inst.get_nodeattr("ActVal") != dt_in.min():
                continue
            if not np.array_equal(thresholds, np.broadcast_to(steps, thresholds.shape)):
                continue
            producer, consumers = model.find_producer(node.input[0]), model.find_consumers(node.output[0]) or []
            for consumer in consumers:
                consumer.input[list(consumer.input).index(node.output[0])] = node.input[0]
            if not consumers:  # the graph output itself
                if producer is None:
                    continue
                producer.output[list(producer.output).index(node.input[0])] = node.output[0]
            model.graph.node.remove(node)
        return model, False


def remove_identity_thresholds(model, state: FlowState):
    return model.transform(RemoveIdentityThresholds(), cleanup=False)


def take_dataflow_partition(model, state: FlowState):
    """The HW nodes must form one contiguous run; what is left before and after them (layout
    transposes, the output scale) stays in software. Anything else is an unsupported layer."""
    hw = [n.domain.startswith("finn.custom_op.fpgadataflow") for n in model.graph.node]
    if not any(hw):
        raise UnsupportedLayerError(f"{state.where}: FINN mapped no layer to hardware")
    first, last = hw.index(True), len(hw) - 1 - hw[::-1].index(True)
    inside = [n for n, h in zip(model.graph.node[first : last + 1], hw[first : last + 1], strict=False) if not h]
    if inside:
        n = inside[0]
        raise UnsupportedLayerError(
            f"{state.where}: unsupported layer type {n.op_type} (node {n.name}): FINN cannot map it to hardware"
        )
    outside = [n for n, h in zip(model.graph.node, hw, strict=False) if not h]
    allowed = {"Transpose", "Mul", "Reshape", "Flatten", "Add"}
    bad = [n for n in outside if n.op_type not in allowed]
    if bad:
        raise UnsupportedLayerError(
            f"{state.where}: unsupported layer type {bad[0].op_type} (node {bad[0].name}): "
            "FINN cannot map it to hardware"
        )
    from finn.transformation.fpgadataflow.create_dataflow_partition import CreateDataflowPartition
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    parent = model.transform(CreateDataflowPartition(partition_model_dir=str(state.out / "partition")))
    (sdp,) = parent.get_nodes_by_op_type("StreamingDataflowPartition")
    parent.save(str(state.out / "parent.onnx"))
    return ModelWrapper(getCustomOp(sdp).get_nodeattr("model"))


#: The head graph's second input when its CTU reads the previous kept exit's class (agreement
#: after the first kept exit): one class per sample, from the gate before the stage; the
#: stitched head IP's ``s_axis_1``.
CLASS_INPUT = "previous_class"


class AppendCTU(Transformation):
    """The confidence-threshold unit after a head's logits (the graph's output): integer logits
    in, decision record (``ctu_record``) out. ``ctu``: policy, threshold (None: the final exit),
    scale of the logits, and ``class_input`` (agreement after the first kept exit): the unit then
    reads each sample's previous class from a second graph input, :data:`CLASS_INPUT`."""

    def __init__(self, ctu: dict) -> None:
        super().__init__()
        self.ctu = ctu

    def apply(self, model):
        from onnx import TensorProto, helper

        logits = model.graph.output[0]
        shape = model.get_tensor_shape(logits.name)
        record = helper.make_tensor_value_info("ctu_record", TensorProto.FLOAT, [*shape[:-1], 1])
        inputs, extra = [logits.name], {}
        if self.ctu.get("class_input"):
            model.graph.input.append(helper.make_tensor_value_info(CLASS_INPUT, TensorProto.FLOAT, [*shape[:-1], 1]))
            inputs.append(CLASS_INPUT)
            # one FIFO depth per input: FINN's InsertFIFO reads the entry of the graph input it looks at
            extra = {"ClassInput": 1, "inFIFODepths": [2, 2]}
        node = helper.make_node(
            "ConfidenceThreshold",
            inputs,
            [record.name],
            domain="finn.custom_op.fpgadataflow",
            backend="fpgadataflow",
            Classes=int(shape[-1]),
            PE=1,
            Policy=self.ctu["policy"],
            Scale=repr(float(self.ctu["scale"])),
            Threshold=repr(float(self.ctu["threshold"] or 0.0)),
            FinalExit=int(self.ctu["threshold"] is None),
            ProfileLogitBits=int(self.ctu.get("logit_bits") or 0),
            inputDataType=model.get_tensor_datatype(logits.name).name,
            numInputVectors=[int(v) for v in shape[:-1]],
            **extra,
        )
        model.graph.node.append(node)
        model.graph.value_info.append(logits)
        model.graph.output.remove(logits)
        model.graph.output.append(record)
        return model, False


def append_ctu(model, state: FlowState):
    """Heads end in the confidence-threshold unit (:class:`AppendCTU`)."""
    if state.ctu is None:
        return model
    from qonnx.transformation.general import GiveUniqueNodeNames
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes

    register_finn_ops()
    model = model.transform(AppendCTU(state.ctu), cleanup=False)
    return model.transform(InferShapes()).transform(InferDataTypes()).transform(GiveUniqueNodeNames())


def specialize_layers(model, state: FlowState):
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from qonnx.transformation.general import GiveUniqueNodeNames
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes

    model = model.transform(SpecializeLayers(state.part))
    return model.transform(GiveUniqueNodeNames()).transform(InferShapes()).transform(InferDataTypes())


def default_folding(mw: int, channels: int | None = None):
    """A layer the design does not fold: PE 1 and the smallest SIMD FINN can generate (a
    divisor of MW that is at least MW/1024)."""
    simd = next(d for d in divisors(mw) if folding_violation("", 1, d, mw, 1, channels) is None)
    return LayerFolding(pe=1, simd=simd)


def folding_config(model, state: FlowState) -> dict:
    """The graph's folding as a FINN folding config, ``{node name: {attribute: value}, "Defaults": {}}``
    with FINN's attribute names: every node's :data:`HW_ATTRS` as they are, over which PE/SIMD/
    ram_style/resType per layer name go onto the k-th MVAU; the sliding-window generator feeding
    an MVAU gets the smallest SIMD that keeps up with it (or FINN's parallel-window mode); each
    pooling unit the narrowest fold that keeps up with the convolution it follows; the line
    buffers of both generators in the layer's ``buffer_style``. The graph is not changed."""
    from finn.util.config import extract_model_config
    from qonnx.custom_op.registry import getCustomOp

    nodes = list(model.graph.node)
    weight_nodes = [n for n in nodes if n.op_type.startswith(WEIGHT_OPS)]
    if len(weight_nodes) != len(state.layers):
        raise ExitflowError(
            f"{state.where}: the graph has {len(weight_nodes)} weight layers but the model lists "
            f"{len(state.layers)} ({', '.join(state.layers)}); was the stage exported from this model?"
        )
    config = extract_model_config(model, subgraph_hier=None, attr_names_to_extract=HW_ATTRS)
    buffers = {}
    for layer, node in zip(state.layers, _layer_nodes(model, state, weight_nodes), strict=True):
        state.layer_nodes[layer] = node.name
        inst = getCustomOp(node)
        producer = model.find_producer(node.input[0])
        window = producer is not None and producer.op_type.startswith("ConvolutionInputGenerator")
        depthwise = node.op_type.startswith("VVAU")
        if depthwise:  # PE over the channels, SIMD over the k x k window
            fold = state.folding.get(layer) or LayerFolding(pe=1, simd=1)
        else:
            channels = getCustomOp(producer).get_nodeattr("IFMChannels") if window else None
            fold = state.folding.get(layer) or default_folding(inst.get_nodeattr("MW"), channels)
        buffers[node.name] = fold.buffer_style
        attrs = {"PE": fold.pe, "SIMD": fold.simd}
        if "ram_style" in inst.get_nodeattr_types():
            attrs["ram_style"] = fold.ram_style
        if node.op_type.endswith("_hls") and "resType" in inst.get_nodeattr_types():
            attrs["resType"] = fold.res_type  # an RTL MVAU always uses DSP slices
        config.setdefault(node.name, {}).update(attrs)
        if window and depthwise:
            # FINN's rule (SetFolding): the depthwise generator's SIMD is the VVAU's PE, and a
            # VVAU SIMD above 1 needs the RTL generator's parallel-window mode
            entry = {"SIMD": fold.pe, "ram_style": fold.buffer_style}
            if producer.op_type.endswith("_rtl"):
                entry["parallel_window"] = int(fold.simd > 1)
            config.setdefault(producer.name, {}).update(entry)
        elif window:
            # the generator's own SIMD: the smallest that keeps up with the MVAU, or FINN's
            # parallel-window mode (exitflow.hw.folding.window_fold); a width converter
            # joins the two (insert_width_converters)
            mvau_cycles = scratch_op(node, attrs).get_exp_cycles()
            simd, wide = window_fold(_window_attrs(getCustomOp(producer)), np.array([mvau_cycles]))
            config.setdefault(producer.name, {}).update(
                parallel_window=int(wide[0]), SIMD=int(simd[0]), ram_style=fold.buffer_style
            )
    # pooling units (window generator and Pool) take the narrowest fold that keeps up with the
    # convolution they follow (exitflow.hw.folding.pick_pool)
    for name, attrs in pool_folding(model, config, buffers).items():
        config.setdefault(name, {}).update(attrs)
    # the fork, add, threshold, pooling and padding units of residual and depthwise stages keep
    # up with the weight layer next to them (exitflow.hw.folding.stream_folding)
    for name, attrs in stream_folding(model, config).items():
        config.setdefault(name, {}).update(attrs)
    return config


def apply_folding(model, state: FlowState):
    """The graph's :func:`folding_config` through FINN's ApplyConfig, the same dict written to
    ``out/folding_config.json``: what is written is what was applied (FINN's own builder accepts
    the file unchanged as ``folding_config_file``)."""
    from finn.transformation.general import ApplyConfig

    config = folding_config(model, state)
    state.out.mkdir(parents=True, exist_ok=True)
    (state.out / "folding_config.json").write_text(json.dumps(config, indent=2))
    return model.transform(ApplyConfig(config))


def minimize_bit_width(model, state: FlowState):
    from finn.transformation.fpgadataflow.minimize_accumulator_width import MinimizeAccumulatorWidth
    from finn.transformation.fpgadataflow.minimize_weight_bit_width import MinimizeWeightBitWidth
    from finn.transformation.streamline.round_thresholds import RoundAndClipThresholds
    from qonnx.transformation.infer_datatypes import InferDataTypes

    for t in (
        MinimizeWeightBitWidth(),
        MinimizeAccumulatorWidth(),
        InferDataTypes(),
        RoundAndClipThresholds(),  # FINN's step_minimize_bit_width: thresholds follow the new widths
        InferDataTypes(),
        MinimizeWeightBitWidth(),
        InferDataTypes(),
    ):
        model = model.transform(t)
    return model


def insert_width_converters(model, state: FlowState):
    """FINN's InsertDWC: a data-width converter wherever a unit's output stream is not as wide as
    the next one's input (a layer's PE against the next layer's SIMD), as FINN's own builder
    inserts them before stitching; then each converter gets its implementation."""
    from finn.transformation.fpgadataflow.insert_dwc import InsertDWC
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from qonnx.transformation.general import GiveUniqueNodeNames
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes

    model = model.transform(InsertDWC()).transform(GiveUniqueNodeNames())
    model = model.transform(SpecializeLayers(state.part)).transform(GiveUniqueNodeNames())
    return model.transform(InferShapes()).transform(InferDataTypes())


def generate_code(model, state: FlowState):
    """HLS C++ and RTL for every node, into ``out/codegen`` (FINN's PrepareIP)."""
    from finn.transformation.fpgadataflow.prepare_ip import PrepareIP

    with finn_settings(state.out / "codegen"):
        return model.transform(PrepareIP(state.part, state.clock_ns))


def estimates(model, part: str) -> dict:
    """FINN's own estimate analyses: per node resources and expected cycles."""
    from finn.analysis.fpgadataflow.exp_cycles_per_layer import exp_cycles_per_layer
    from finn.analysis.fpgadataflow.res_estimation import res_estimation

    return {
        "resources": model.analysis(lambda m: res_estimation(m, part)),
        "cycles": model.analysis(exp_cycles_per_layer),
    }


def read_layers(path: Path, rebuild: str) -> dict[str, str]:
    """``hw/<graph>/layers.json`` (a :class:`~exitflow.core.artifacts.LayerMap`), checked: the
    model's layer -> FINN node name, as the build writes it. Anything else is one
    :class:`ConfigError` line naming the file and ending in ``rebuild``."""
    return dict(load_json_file(LayerMap, path, rebuild, check=_layers_shape).layers)


def _layers_shape(data) -> str | None:
    """What is wrong with the shape of a parsed ``layers.json``, in the words of the file's
    purpose (the schema checks the rest)."""
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in layers.items()
    ):
        if isinstance(layers, dict):
            key, value = next(
                (k, v) for k, v in layers.items() if not (isinstance(k, str) and isinstance(v, str) and v)
            )
            got = f"{key!r}: {value!r}"
        elif isinstance(data, dict):
            got = f"'layers' of type {type(layers).__name__}" if "layers" in data else "no 'layers' key"
        else:
            got = f"a JSON {type(data).__name__}"
        return f'expected {{"layers": {{layer name: FINN node name}}}}, got {got}'
    if len(set(layers.values())) != len(layers):
        return "two layers name the same FINN node"
    return None


def run_flow(src: Path, out: Path, state: FlowState, log: Callable[[str], None] | None = None, codegen: bool = True):
    """Run every step on the graph at ``src``; returns the final (specialised, folded) model.
    ``codegen=False`` leaves out the last step, code generation (what estimates need is there).

    FINN's own chatter goes to ``out/finn.log``, not to the terminal."""
    from qonnx.core.modelwrapper import ModelWrapper

    if not Path(src).is_file():
        raise ExitflowError(f"{src}: stage file not found; export the stages again (exitflow export)")
    out.mkdir(parents=True, exist_ok=True)
    try:
        model = ModelWrapper(str(src))
    except Exception as err:  # onnx raises DecodeError and others for a damaged file
        raise ExitflowError(f"{src}: corrupt QONNX file ({type(err).__name__}); export the stages again") from None
    with finn_chatter(out / "finn.log", "w") as finn_log, finn_settings(out / "tmp"):
        for step in STEPS if codegen else [s for s in STEPS if s is not generate_code]:
            check_interrupt()  # a Ctrl-C that FINN swallowed stops the build here
            finn_log.write(f"== {step.__name__}\n")
            model = step(model, state)
            if step is specialize_layers:
                model.save(str(out / "model_specialized.onnx"))
    model.save(str(out / "model_hw.onnx"))
    report = estimates(model, state.part)
    (out / "estimate_layer_resources.json").write_text(json.dumps(report["resources"], indent=1))
    (out / "estimate_layer_cycles.json").write_text(json.dumps(report["cycles"], indent=1))
    return model


class MergeDuplicateNodes(Transformation):
    """Nodes that compute the same thing (same op type, inputs and attributes; no initializer
    changes that) become one: e.g. the two Transposes that lowering puts on both branches of
    a fork (a residual block's stage input), which would otherwise feed the dataflow partition
    twice."""

    def apply(self, model):
        seen = {}
        for node in list(model.graph.node):
            key = (
                node.op_type,
                node.domain,
                tuple(node.input),
                tuple(sorted(a.SerializeToString() for a in node.attribute)),
            )
            if len(node.output) != 1 or key not in seen:
                seen.setdefault(key, node)
                continue
            keep = seen[key]
            for consumer in model.find_consumers(node.output[0]) or []:
                for i, name in enumerate(consumer.input):
                    if name == node.output[0]:
                        consumer.input[i] = keep.output[0]
            if node.output[0] in [o.name for o in model.graph.output]:
                continue
            model.graph.node.remove(node)
            return model, True
        return model, False


class ChannelsLastInput(Transformation):
    """A 4D (NCHW) graph input gets the identity pair Transpose(0,2,3,1) -> Transpose(0,3,1,2):
    the second one then moves down through the leading quantiser and the fork behind it (into
    both branches of a residual block), where it cancels or sinks into thresholds; the first one
    stays in software in front of the dataflow partition."""

    def apply(self, model):
        from onnx import helper
        from qonnx.core.data_layout import NCHW, NHWC

        name = model.graph.input[0].name
        shape = model.get_tensor_shape(name)
        if shape is None or len(shape) != 4:
            return model, False
        nhwc, back = model.make_new_valueinfo_name(), model.make_new_valueinfo_name()
        for consumer in model.find_consumers(name):
            consumer.input[list(consumer.input).index(name)] = back
        model.graph.node.insert(0, helper.make_node("Transpose", [nhwc], [back], perm=[0, 3, 1, 2]))
        model.graph.node.insert(0, helper.make_node("Transpose", [name], [nhwc], perm=[0, 2, 3, 1]))
        n, c, h, w = shape
        model.set_tensor_shape(nhwc, [n, h, w, c])
        model.set_tensor_shape(back, shape)
        model.set_tensor_layout(nhwc, NHWC)
        model.set_tensor_layout(back, NCHW)
        model.set_tensor_datatype(nhwc, model.get_tensor_datatype(name))
        model.set_tensor_datatype(back, model.get_tensor_datatype(name))
        return model, False


class ReduceMeanToGlobalAveragePool(Transformation):
    """torch's exporter writes AdaptiveAvgPool2d(1) as a ReduceMean over H and W; FINN maps
    only GlobalAveragePool to hardware (GlobalAccPool). keepdims=0 adds a Flatten."""

    def apply(self, model):
        from onnx import helper
        from qonnx.util.basic import get_by_name

        for node in model.graph.node:
            if node.op_type != "ReduceMean":
                continue
            shape = model.get_tensor_shape(node.input[0])
            axes = model.get_initializer(node.input[1]) if len(node.input) > 1 else None
            if axes is None and get_by_name(node.attribute, "axes") is not None:
                axes = get_by_name(node.attribute, "axes").ints
            keep = get_by_name(node.attribute, "keepdims")
            keepdims = 1 if keep is None else keep.i
            if shape is None or len(shape) != 4 or axes is None:
                continue
            if sorted(int(a) % 4 for a in np.atleast_1d(axes)) != [2, 3]:
                continue
            i = list(model.graph.node).index(node)
            out = node.output[0]
            pooled = out if keepdims else model.make_new_valueinfo_name()
            new = [helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=node.name)]
            if not keepdims:
                new.append(helper.make_node("Flatten", [pooled], [out], axis=1))
            model.graph.node.remove(node)
            for k, n in enumerate(new):
                model.graph.node.insert(i + k, n)
            return model, True
        return model, False


def skip_inputs(model) -> list[tuple[object, int]]:
    """(ElementwiseAdd node, index of its skip input) for every residual join: the input whose
    path back to the fork (DuplicateStreams) passes fewer weight layers."""

    def weight_layers_to_fork(tensor):
        count, node = 0, model.find_producer(tensor)
        while node is not None and not node.op_type.startswith("DuplicateStreams"):
            count += node.op_type.startswith(WEIGHT_OPS)
            node = model.find_producer(node.input[0])
        return count

    joins = [n for n in model.graph.node if n.op_type.startswith("ElementwiseAdd")]
    return [(n, int(np.argmin([weight_layers_to_fork(t) for t in n.input[:2]]))) for n in joins]


def _in_fifo_depths(inst, node) -> list[int]:
    """A node's ``inFIFODepths``, one entry per input (FINN reads a shorter list's last entry
    for the inputs after it)."""
    depths = list(inst.get_nodeattr("inFIFODepths"))
    return depths + [depths[-1]] * (len(node.input) - len(depths))


class SetSkipFIFODepths(Transformation):
    """Set the ``inFIFODepths`` entry of the skip input of every residual join (``depths``: add
    node -> depth in words; others get 3, the shallowest FIFO FINN's InsertFIFO builds, a
    placeholder until :func:`insert_fifos` has sized them)."""

    def __init__(self, depths: dict[str, int] | None = None) -> None:
        super().__init__()
        self.depths = depths or {}

    def apply(self, model):
        from qonnx.custom_op.registry import getCustomOp

        for node, skip in skip_inputs(model):
            inst = getCustomOp(node)
            depths = _in_fifo_depths(inst, node)
            depths[skip] = self.depths.get(node.name, 3)
            inst.set_nodeattr("inFIFODepths", depths)
        return model, False


class SetLinkFIFODepths(Transformation):
    """Give every plain stream between two nodes (not a residual join's skip input) a FIFO of
    ``pixels`` pixels in words of that stream, in the consumer's ``inFIFODepths``; FINN's
    InsertFIFO then builds those deeper than 2 words."""

    def __init__(self, pixels: int) -> None:
        super().__init__()
        self.pixels = pixels

    def apply(self, model):
        from qonnx.custom_op.registry import getCustomOp

        skips = {(node.name, k) for node, k in skip_inputs(model)}
        for node in model.graph.node:
            inst = getCustomOp(node)
            depths = _in_fifo_depths(inst, node)
            for k, tensor in enumerate(node.input):
                producer = model.find_producer(tensor)
                if producer is None or model.get_initializer(tensor) is not None or (node.name, k) in skips:
                    continue
                depths[k] = max(depths[k], self.pixels * words_per_pixel(model, producer.name))
            inst.set_nodeattr("inFIFODepths", depths)
        return model, False


def insert_fifos(model, state: FlowState):
    """StreamingFIFOs sized by exitflow's stream simulation (:func:`exitflow.hw.streams.size_fifos`),
    as FINN's FIFO sizing would by RTL simulation: on the skip branch of every residual join one
    as deep as the stage needs to keep its interval (FINN issue 1094: too shallow, a residual
    network hangs), and, where FINN's 2-word streams stall the graph (a window generator waiting
    for rows, a strided layer's bursts), one on every plain stream. Sized on a copy with
    placeholder skip FIFOs, then built in one pass of FINN's InsertFIFO (nowhere else:
    create_shallow_fifos=False), specialised (StreamingFIFO_rtl), and simulated as built: it must
    keep the sized interval."""
    from finn.transformation.fpgadataflow.insert_fifo import InsertFIFO
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from qonnx.custom_op.registry import getCustomOp
    from qonnx.transformation.general import GiveUniqueNodeNames
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes

    def with_fifos(graph, transform):
        graph = graph.transform(transform).transform(InsertFIFO(create_shallow_fifos=False))
        return graph.transform(GiveUniqueNodeNames()).transform(SpecializeLayers(state.part))

    placeholders = with_fifos(copy.deepcopy(model), SetSkipFIFODepths()) if skip_inputs(model) else model
    sizing = size_fifos(placeholders)
    extra = sizing.link_pixels - LINK_PIXELS  # a stream holds a pixel, its FIFO the rest
    joins = {}
    for fifo, pixels in sizing.skip_pixels.items():
        node = next(n for n in placeholders.graph.node if n.name == fifo)
        joins[placeholders.find_consumer(node.output[0]).name] = max(
            2, (pixels + extra) * words_per_pixel(placeholders, fifo)
        )
    state.skip_fifos, state.link_pixels = joins, sizing.link_pixels
    if not joins and not extra:
        return model
    model = model.transform(SetSkipFIFODepths(joins)).transform(SetLinkFIFODepths(extra))
    model = with_fifos(model, GiveUniqueNodeNames())
    fifos = [n for n in model.graph.node if n.op_type.startswith("StreamingFIFO")]
    state.link_fifos = len(fifos) - len(joins)
    on_skip = {join.input[k]: join.name for join, k in skip_inputs(model)}
    for node in fifos:
        fifo = getCustomOp(node)
        if node.output[0] in on_skip:  # InsertFIFO takes the larger of both ends' depths: the sized one
            fifo.set_nodeattr("depth", joins[on_skip[node.output[0]]])
        if state.part.startswith("xc7") and fifo.resolve_ram_style() == "ultra":
            fifo.set_nodeattr("ram_style", "block")  # Zynq-7000 has no UltraRAM: FINN's "auto" ladder asks for it
    built = simulate(model, built_fifo_pixels(model))
    if built.deadlock or built.interval > sizing.interval * (1 + TOLERANCE):
        raise Deadlock(
            f"{state.where}: the FIFOs as built give an interval of {built.interval:.0f} cycles against "
            f"{sizing.interval:.0f} sized"
        )
    return model.transform(GiveUniqueNodeNames()).transform(InferShapes()).transform(InferDataTypes())


STEPS: list[Callable] = [
    integerize_input,
    qonnx_to_finn,
    tidy_up,
    streamline,
    convert_to_hw,
    round_thresholds,
    remove_identity_thresholds,
    take_dataflow_partition,
    append_ctu,
    specialize_layers,
    apply_folding,
    minimize_bit_width,
    insert_width_converters,
    insert_fifos,
    generate_code,
]


def layer_signature(node) -> tuple:
    """What identifies a weight node's layer by shape: (kind, inputs per output, outputs) - an
    MVAU's (MW, MH), a VVAU's (k*k, channels) - as :meth:`WeightLayer.signature` gives it from
    the model."""
    from qonnx.custom_op.registry import getCustomOp

    inst = getCustomOp(node)
    if node.op_type.startswith("VVAU"):
        kh, kw = inst.get_nodeattr("Kernel")
        return ("depthwise", kh * kw, inst.get_nodeattr("Channels"))
    return ("matrix", inst.get_nodeattr("MW"), inst.get_nodeattr("MH"))


def _layer_nodes(model, state: FlowState, weight_nodes: list) -> list:
    """The weight node of every layer in ``state.layers``: the first unclaimed node of the same
    :func:`layer_signature`, in graph order. FINN's graph may hold a residual block's layers in
    another order than the model (its 1x1 projection first); layers of one shape keep their order."""
    if not state.signatures:
        return weight_nodes
    free = list(weight_nodes)
    out = []
    for layer in state.layers:
        want = state.signatures.get(layer)
        found = next((n for n in free if layer_signature(n) == want), None)
        if found is None:
            raise ExitflowError(
                f"{state.where}: no weight layer of FINN's graph has the shape of {layer} {want}; "
                "was the stage exported from this model?"
            )
        free.remove(found)
        out.append(found)
    return out

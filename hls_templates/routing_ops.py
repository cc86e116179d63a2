"""Gate and merge as FINN layers (``ExitGate``/``ExitGate_hls``, ``ExitMerge``/``ExitMerge_hls``),
registered in FINN's op domains like the CTU.

Streams in hardware carry a varying number of samples (a gate drops those that exit). ONNX
tensors have fixed shapes, so for Python execution every output keeps one row per input sample
and marks the rows that the hardware stream does not carry with -1 ids / records (``MASKED``);
:func:`exitflow.hls_templates.routing.gate_model` is the variable-length view of the same behaviour.
"""

from __future__ import annotations

import numpy as np
from finn.custom_op.fpgadataflow import register_custom_op as register_hw
from finn.custom_op.fpgadataflow.hls import register_custom_op as register_hls
from finn.custom_op.fpgadataflow.hlsbackend import HLSBackend
from finn.custom_op.fpgadataflow.hwcustomop import HWCustomOp
from qonnx.core.datatype import DataType

from .backend import TemplateHLSBackend
from .records import exit_flag
from .routing import TagFormat, gate_resources, merge_model, merge_resources

MASKED = -1


class _Routing(HWCustomOp):
    def _fmt(self) -> TagFormat:
        return TagFormat(self.get_nodeattr("IdBits"), self.get_nodeattr("ExitBits"), self.get_nodeattr("RecordBits"))

    def _samples(self) -> int:
        return int(self.get_nodeattr("Samples"))

    def infer_node_datatype(self, model):
        for i, name in enumerate(self.onnx_node.output):
            model.set_tensor_datatype(name, self.get_output_datatype(i))

    def verify_node(self):
        return []

    def make_shape_compatible_op(self, model):
        return super().make_const_shape_op(self.get_normal_output_shape(0))

    def bram_estimation(self, fpgapart=None):
        return 0

    def dsp_estimation(self, fpgapart=None):
        return 0

    def uram_estimation(self, fpgapart=None):
        return 0


@register_hw
class ExitGate(_Routing):
    """Inputs: feature maps (Samples x Elements, PE elements per stream word), ids (Samples x 1),
    CTU records (Samples x 1). Outputs: feature maps and ids going on, tagged records leaving
    (masked rows where the hardware stream carries nothing); before an agreement head
    (``ClassBits`` > 0) a fourth, the class of every sample going on (the record's bits
    ``ClassLsb`` .. ``ClassLsb + ClassBits - 1``) for the next CTU."""

    def get_nodeattr_types(self):
        attrs = {
            "Samples": ("i", False, 1),
            "Elements": ("i", True, 0),  # feature-map elements per sample
            "PE": ("i", False, 1),  # elements per stream word
            "ExitIndex": ("i", True, 0),
            "IdBits": ("i", False, 16),
            "ExitBits": ("i", False, 2),
            "RecordBits": ("i", True, 0),
            "Depth": ("i", False, 1),  # feature maps the FIFO in front of the gate holds
            "fmDataType": ("s", True, ""),
            "ClassBits": ("i", False, 0),  # > 0: send the classes of the samples going on
            "ClassLsb": ("i", False, 0),  # where the class lies in the record (its code width)
        }
        attrs.update(super().get_nodeattr_types())
        return attrs

    def folds(self) -> int:
        return self.get_nodeattr("Elements") // self.get_nodeattr("PE")

    def get_normal_input_shape(self, ind=0):
        return [(self._samples(), self.get_nodeattr("Elements")), (self._samples(), 1), (self._samples(), 1)][ind]

    def get_folded_input_shape(self, ind=0):
        if ind == 0:
            return (self._samples(), self.folds(), self.get_nodeattr("PE"))
        return (self._samples(), 1, 1)

    def get_normal_output_shape(self, ind=0):
        return self.get_normal_input_shape(min(ind, 1)) if ind < 2 else (self._samples(), 1)

    def get_folded_output_shape(self, ind=0):
        return self.get_folded_input_shape(min(ind, 1))

    def get_input_datatype(self, ind=0):
        return [
            DataType[self.get_nodeattr("fmDataType")],
            DataType[f"UINT{self.get_nodeattr('IdBits')}"],
            DataType[f"UINT{self.get_nodeattr('RecordBits')}"],
        ][ind]

    def get_output_datatype(self, ind=0):
        if ind == 2:
            return DataType[f"UINT{self._fmt().width}"]
        if ind == 3:
            return DataType[f"UINT{self.get_nodeattr('ClassBits')}"]
        return self.get_input_datatype(ind)

    def get_instream_width(self, ind=0):
        if ind == 0:
            return self.get_nodeattr("PE") * self.get_input_datatype(0).bitwidth()
        return self.get_input_datatype(ind).bitwidth()

    def get_outstream_width(self, ind=0):
        if ind == 3:
            return self.get_nodeattr("ClassBits")
        return self.get_instream_width(ind) if ind < 2 else self._fmt().width

    def verify_node(self):
        bits, lsb = self.get_nodeattr("ClassBits"), self.get_nodeattr("ClassLsb")
        outputs = 3 + (bits > 0)
        problems = [] if len(self.onnx_node.output) == outputs else [f"ClassBits {bits} needs {outputs} outputs"]
        if bits and lsb + bits >= self.get_nodeattr("RecordBits"):
            problems.append("the class field must lie below the record's exit flag")
        return problems

    def execute_node(self, context, graph):
        node = self.onnx_node
        fm = np.asarray(context[node.input[0]])
        ids = np.asarray(context[node.input[1]]).astype(np.int64).ravel()
        records = np.asarray(context[node.input[2]]).astype(np.int64).ravel()
        fmt = self._fmt()
        leave = exit_flag(records, fmt.rec_bits) == 1
        context[node.output[0]] = np.where(leave[:, None], 0, fm.reshape(len(ids), -1)).reshape(fm.shape)
        context[node.output[1]] = np.where(leave, MASKED, ids).reshape(-1, 1)
        tagged = np.array([int(t) for t in fmt.tag(ids, self.get_nodeattr("ExitIndex"), records)], dtype=np.int64)
        context[node.output[2]] = np.where(leave, tagged, MASKED).reshape(-1, 1)
        class_bits = self.get_nodeattr("ClassBits")
        if class_bits:
            cls = (records >> self.get_nodeattr("ClassLsb")) & ((1 << class_bits) - 1)
            context[node.output[3]] = np.where(leave, MASKED, cls).reshape(-1, 1)

    def get_exp_cycles(self):
        return self._samples() * max(1, self.folds())

    def lut_estimation(self, fpgapart=None):
        return gate_resources(
            self.get_instream_width(0),
            self.folds(),
            self.get_nodeattr("Depth"),
            self.get_nodeattr("IdBits"),
            self.get_nodeattr("ClassBits"),
        )[0]

    def bram_estimation(self, fpgapart=None):
        """The FIFO in front of the gate (:func:`~exitflow.hls_templates.routing.gate_resources`)."""
        return gate_resources(
            self.get_instream_width(0), self.folds(), self.get_nodeattr("Depth"), self.get_nodeattr("IdBits")
        )[1]


@register_hw
class ExitMerge(_Routing):
    """Inputs: one tagged-record stream per exit (Samples x 1 each, masked rows carry nothing).
    Output: all records, round robin (Samples x 1)."""

    def get_nodeattr_types(self):
        attrs = {
            "Samples": ("i", False, 1),
            "Exits": ("i", True, 2),
            "IdBits": ("i", False, 16),
            "ExitBits": ("i", False, 2),
            "RecordBits": ("i", True, 0),
        }
        attrs.update(super().get_nodeattr_types())
        return attrs

    def get_normal_input_shape(self, ind=0):
        return (self._samples(), 1)

    get_normal_output_shape = get_normal_input_shape

    def get_folded_input_shape(self, ind=0):
        return (self._samples(), 1, 1)

    get_folded_output_shape = get_folded_input_shape

    def get_input_datatype(self, ind=0):
        return DataType[f"UINT{self._fmt().width}"]

    get_output_datatype = get_input_datatype

    def get_instream_width(self, ind=0):
        return self._fmt().width

    get_outstream_width = get_instream_width

    def execute_node(self, context, graph):
        streams = [
            [int(v) for v in np.asarray(context[name]).astype(np.int64).ravel() if v != MASKED]
            for name in self.onnx_node.input
        ]
        merged = merge_model(streams)
        out = np.full(self._samples(), MASKED, dtype=np.int64)
        out[: len(merged)] = merged
        context[self.onnx_node.output[0]] = out.reshape(-1, 1)

    def get_exp_cycles(self):
        return self._samples()  # one record per cycle once they arrive

    def lut_estimation(self, fpgapart=None):
        return merge_resources(self._fmt().width, self.get_nodeattr("Exits"))


class _RoutingHLS(TemplateHLSBackend):
    HEADER = "exitflow_gate.hpp"

    def defines(self, var):
        fmt = self._fmt()
        self.code_gen_dict["$DEFINES$"] = [
            f"constexpr unsigned ID_BITS = {fmt.id_bits}, EXIT_BITS = {fmt.exit_bits}, REC_BITS = {fmt.rec_bits};",
            f"constexpr unsigned SAMPLES = {self._samples()};",
        ]

    def pragmas(self):
        self.code_gen_dict["$PRAGMAS$"] = [f"#pragma HLS INTERFACE axis port={p}" for p in self._ports()]
        self.code_gen_dict["$PRAGMAS$"].append("#pragma HLS INTERFACE ap_ctrl_none port=return")


@register_hls
class ExitGate_hls(ExitGate, _RoutingHLS):
    def get_nodeattr_types(self):
        attrs = ExitGate.get_nodeattr_types(self)
        attrs.update(HLSBackend.get_nodeattr_types(self))
        return attrs

    def execute_node(self, context, graph):
        ExitGate.execute_node(self, context, graph)

    def _ports(self):
        ports = ["fm_in", "id_in", "rec_in", "fm_out", "id_out", "exit_out"]
        return ports + ["cls_out"] if self.get_nodeattr("ClassBits") else ports

    def blackboxfunction(self):
        fm, idw, rec, tag, cls = (
            self.get_instream_width(0),
            self.get_nodeattr("IdBits"),
            self.get_nodeattr("RecordBits"),
            self._fmt().width,
            self.get_nodeattr("ClassBits"),
        )
        classes = f", hls::stream<ap_uint<{cls}>> &cls_out" if cls else ""
        self.code_gen_dict["$BLACKBOXFUNCTION$"] = [
            f"void {self.onnx_node.name}(hls::stream<ap_uint<{fm}>> &fm_in, hls::stream<ap_uint<{idw}>> &id_in, "
            f"hls::stream<ap_uint<{rec}>> &rec_in, hls::stream<ap_uint<{fm}>> &fm_out, "
            f"hls::stream<ap_uint<{idw}>> &id_out, hls::stream<ap_uint<{tag}>> &exit_out{classes})"
        ]

    def docompute(self):
        head = f"{self.folds()}, {self.get_instream_width(0)}, ID_BITS, EXIT_BITS, REC_BITS, REC_BITS - 1"
        exit_index = self.get_nodeattr("ExitIndex")
        if self.get_nodeattr("ClassBits"):  # before an agreement head: the classes go on too
            call = (
                f"exitflow::gate_class<{head}, {self.get_nodeattr('ClassBits')}, {self.get_nodeattr('ClassLsb')}>"
                f"(fm_in, id_in, rec_in, fm_out, id_out, cls_out, exit_out, {exit_index}, SAMPLES);"
            )
        else:
            call = f"exitflow::gate<{head}>(fm_in, id_in, rec_in, fm_out, id_out, exit_out, {exit_index}, SAMPLES);"
        self.code_gen_dict["$DOCOMPUTE$"] = [call]


@register_hls
class ExitMerge_hls(ExitMerge, _RoutingHLS):
    def get_nodeattr_types(self):
        attrs = ExitMerge.get_nodeattr_types(self)
        attrs.update(HLSBackend.get_nodeattr_types(self))
        return attrs

    def execute_node(self, context, graph):
        ExitMerge.execute_node(self, context, graph)

    def _ports(self):
        return ["in_V", "out_V"]

    def blackboxfunction(self):
        w = self._fmt().width
        self.code_gen_dict["$BLACKBOXFUNCTION$"] = [
            f"void {self.onnx_node.name}(hls::stream<ap_uint<{w}>> in_V[{self.get_nodeattr('Exits')}], "
            f"hls::stream<ap_uint<{w}>> &out_V)"
        ]

    def docompute(self):
        self.code_gen_dict["$DOCOMPUTE$"] = [
            f"exitflow::merge<{self.get_nodeattr('Exits')}, {self._fmt().width}>(in_V, out_V, SAMPLES);"
        ]

"""The CTU as a FINN layer (``ConfidenceThreshold``) and its HLS backend
(``ConfidenceThreshold_hls``), registered in FINN's own op domains, so FINN's passes
(SpecializeLayers, PrepareIP, estimate analyses, partitioning) treat it like one of theirs.

Input: integer logits (``numInputVectors`` x ``Classes``, ``PE`` per stream word); an
``agreement`` unit after the design's first kept exit (``ClassInput`` = 1) has a second input,
each sample's class at the previous kept exit (``numInputVectors`` x 1, one word per sample, the
stream the gate before its stage sends). Output: one record per sample (exit flag, class,
confidence code), held in an int64 tensor so that wide records stay exact. ``execute_node`` is
:meth:`CTUParams.decide`, the policy function itself, with the design's threshold.

An early exit's HLS top function has a scalar ``threshold`` (``ap_uint<CODE_BITS + 1>``) on an
AXI-lite port (``s_axi_control``, offset 0x20; the stitched IP's ``s_axi_control_0``): with its
top bit (override) set, the unit compares with its low CODE_BITS bits, else with the design's
constant. The final exit's has no such port.
"""

from __future__ import annotations

import numpy as np
from finn.custom_op.fpgadataflow import register_custom_op as register_hw
from finn.custom_op.fpgadataflow.hls import register_custom_op as register_hls
from finn.custom_op.fpgadataflow.hlsbackend import HLSBackend
from finn.custom_op.fpgadataflow.hwcustomop import HWCustomOp
from qonnx.core.datatype import DataType

from exitflow.core.design import POLICIES

from .backend import TemplateHLSBackend
from .ctu import CTUParams


@register_hw
class ConfidenceThreshold(HWCustomOp):
    """Generic CTU layer: shapes, stream widths, cycles, resources and the Python model."""

    def get_nodeattr_types(self):
        attrs = {
            "Classes": ("i", True, 0),
            "PE": ("i", False, 1),
            "Policy": ("s", True, "max_prob", set(POLICIES)),
            # float64 values as their repr: ONNX float attributes are float32, and the ROM and the
            # threshold constant must come from exactly the scale profiling used
            "Scale": ("s", True, "1.0"),
            "Threshold": ("s", False, "0.0"),
            "FinalExit": ("i", False, 0),  # 1: every sample exits here
            "FracBits": ("i", False, 10),
            # 1: agreement after the first kept exit, with a second input (the previous kept
            # exit's class per sample); 0: one input (agreement at the first kept exit is max_prob)
            "ClassInput": ("i", False, 0, {0, 1}),
            # the logit width profiling used (the model's): the ROM is built for it, whatever
            # width FINN narrows the logit stream to (0: the stream's)
            "ProfileLogitBits": ("i", False, 0),
            "inputDataType": ("s", True, ""),
            "numInputVectors": ("ints", False, [1]),
        }
        attrs.update(super().get_nodeattr_types())
        return attrs

    # -- the unit ---------------------------------------------------------------------------
    def params(self) -> CTUParams:
        return CTUParams(
            policy=self.get_nodeattr("Policy"),
            classes=self.get_nodeattr("Classes"),
            logit_bits=self.get_input_datatype().bitwidth(),
            scale=float(self.get_nodeattr("Scale")),
            threshold=None if self.get_nodeattr("FinalExit") else float(self.get_nodeattr("Threshold")),
            pe=self.get_nodeattr("PE"),
            frac_bits=self.get_nodeattr("FracBits"),
            rom_bits=self.get_nodeattr("ProfileLogitBits") or None,
            class_input=bool(self.get_nodeattr("ClassInput")),
        )

    # -- shapes and streams -------------------------------------------------------------------
    def _vecs(self) -> list[int]:
        return list(self.get_nodeattr("numInputVectors"))

    def get_normal_input_shape(self, ind=0):
        if ind == 1:  # the previous class: one per sample
            return tuple(self._vecs() + [1])
        return tuple(self._vecs() + [self.get_nodeattr("Classes")])

    def get_folded_input_shape(self, ind=0):
        if ind == 1:
            return tuple(self._vecs() + [1, 1])
        pe = self.get_nodeattr("PE")
        return tuple(self._vecs() + [self.get_nodeattr("Classes") // pe, pe])

    def get_normal_output_shape(self, ind=0):
        return tuple(self._vecs() + [1])

    def get_folded_output_shape(self, ind=0):
        return tuple(self._vecs() + [1, 1])

    def get_input_datatype(self, ind=0):
        if ind == 1:
            return DataType[f"UINT{self.params().class_bits}"]
        return DataType[self.get_nodeattr("inputDataType")]

    def get_output_datatype(self, ind=0):
        return DataType[f"UINT{self.params().record_bits}"]

    def get_instream_width(self, ind=0):
        if ind == 1:
            return self.params().class_bits
        return self.get_nodeattr("PE") * self.get_input_datatype().bitwidth()

    def get_outstream_width(self, ind=0):
        return self.params().record_bits

    def get_number_output_values(self):
        return int(np.prod(self._vecs()))

    def infer_node_datatype(self, model):
        dt = model.get_tensor_datatype(self.onnx_node.input[0])
        if not dt.is_integer() or not dt.signed() and dt.bitwidth() > 31:
            raise ValueError(f"{self.onnx_node.name}: the CTU needs integer logits; got {dt.name}")
        # the unit compares signed logits: an unsigned input gets one more bit
        self.set_nodeattr("inputDataType", dt.name if dt.signed() else f"INT{dt.bitwidth() + 1}")
        if self.get_nodeattr("ClassInput"):
            model.set_tensor_datatype(self.onnx_node.input[1], self.get_input_datatype(1))
        model.set_tensor_datatype(self.onnx_node.output[0], self.get_output_datatype())

    def make_shape_compatible_op(self, model):
        return super().make_const_shape_op(self.get_normal_output_shape())

    def verify_node(self):
        problems = [] if self.get_nodeattr("Classes") % self.get_nodeattr("PE") == 0 else ["PE must divide Classes"]
        inputs = 1 + self.get_nodeattr("ClassInput")
        if len(self.onnx_node.input) != inputs:
            problems.append(f"ClassInput {self.get_nodeattr('ClassInput')} needs {inputs} inputs")
        return problems

    def execute_node(self, context, graph):
        logits = np.asarray(context[self.onnx_node.input[0]])
        flat = np.rint(logits).astype(np.int64).reshape(-1, self.get_nodeattr("Classes"))
        params = self.params()
        previous = None
        if params.class_input:
            previous = np.rint(np.asarray(context[self.onnx_node.input[1]])).astype(np.int64).reshape(-1)
        records = params.pack(params.decide(flat, previous))
        context[self.onnx_node.output[0]] = records.reshape(self.get_normal_output_shape())

    # -- cost -----------------------------------------------------------------------------------
    def get_exp_cycles(self):
        return self.params().cycles_per_sample() * int(np.prod(self._vecs()))

    def lut_estimation(self, fpgapart=None):
        return self.params().lut()

    def bram_estimation(self, fpgapart=None):
        return self.params().bram18()

    def uram_estimation(self, fpgapart=None):
        return 0

    def dsp_estimation(self, fpgapart=None):
        return self.params().dsp()


@register_hls
class ConfidenceThreshold_hls(ConfidenceThreshold, TemplateHLSBackend):
    """HLS backend: a thin top function around ``hls_templates/exitflow_ctu.hpp``."""

    HEADER = "exitflow_ctu.hpp"

    def get_nodeattr_types(self):
        attrs = ConfidenceThreshold.get_nodeattr_types(self)
        attrs.update(HLSBackend.get_nodeattr_types(self))
        return attrs

    def execute_node(self, context, graph):
        ConfidenceThreshold.execute_node(self, context, graph)

    def defines(self, var):
        p = self.params()
        lines = [
            f"constexpr unsigned CLASSES = {p.classes}, PE = {p.pe}, LOGIT_BITS = {p.logit_bits};",
            f"constexpr unsigned CLASS_BITS = {p.class_bits}, CODE_BITS = {p.code_bits};",
            f"constexpr unsigned SAMPLES = {int(np.prod(self._vecs()))};",
            f'static const ap_uint<CODE_BITS> THRESHOLD = ap_uint<CODE_BITS>("{p.threshold_constant}", 10);',
        ]
        if p.has_threshold_register and var != "ipgen":
            # cppsim's main() has no AXI-lite source for the top's `threshold` argument: the
            # register after reset, i.e. the design's constant
            lines.append("static const ap_uint<CODE_BITS + 1> threshold = 0;")
        if p.max_prob_code:
            lines += [
                f"constexpr unsigned FRAC_BITS = {p.frac_bits}, ROM_DEPTH = {len(p.rom)}, ROM_SHIFT = {p.rom_shift};",
                "static const ap_uint<FRAC_BITS + 1> ROM[ROM_DEPTH] = {" + ", ".join(str(int(v)) for v in p.rom) + "};",
            ]
        self.code_gen_dict["$DEFINES$"] = lines

    def blackboxfunction(self):
        p = self.params()
        previous = f"hls::stream<ap_uint<{p.class_bits}>> &in1_V, " if p.class_input else ""
        register = ", ap_uint<CODE_BITS + 1> threshold" if p.has_threshold_register else ""
        self.code_gen_dict["$BLACKBOXFUNCTION$"] = [
            f"void {self.onnx_node.name}(hls::stream<ap_uint<{self.get_instream_width()}>> &in0_V, "
            f"{previous}hls::stream<ap_uint<{p.record_bits}>> &out0_V{register})"
        ]

    def pragmas(self):
        super().pragmas()
        p = self.params()
        if p.class_input:
            self.code_gen_dict["$PRAGMAS$"].insert(1, "#pragma HLS INTERFACE axis port=in1_V")
        if p.has_threshold_register:
            # the explicit offset keeps the address independent of the control words a Vitis
            # version reserves; ap_ctrl_none stays (FINN's checksum_hls.py does the same)
            self.code_gen_dict["$PRAGMAS$"].append(
                "#pragma HLS INTERFACE s_axilite port=threshold bundle=control offset=0x20"
            )
        if p.max_prob_code:
            self.code_gen_dict["$PRAGMAS$"].append("#pragma HLS BIND_STORAGE variable=ROM type=rom_1p impl=lutram")

    def get_verilog_top_module_intf_names(self):
        intf_names = super().get_verilog_top_module_intf_names()
        intf_names["axilite"] = ["s_axi_control"] if self.params().has_threshold_register else []
        return intf_names

    def docompute(self):
        p = self.params()
        # the early exit's AXI-lite register; the final exit has none: 0, the design's constant
        reg = "threshold" if p.has_threshold_register else "ap_uint<CODE_BITS + 1>(0)"
        if p.class_input:  # agreement after the first kept exit
            call = (
                "exitflow::ctu_agreement<CLASSES, PE, LOGIT_BITS, FRAC_BITS, ROM_DEPTH, ROM_SHIFT, CLASS_BITS, "
                f"CODE_BITS>(in0_V, in1_V, out0_V, ROM, THRESHOLD, {reg}, SAMPLES);"
            )
        elif p.max_prob_code:  # max_prob, and agreement at the first kept exit
            call = (
                "exitflow::ctu_max_prob<CLASSES, PE, LOGIT_BITS, FRAC_BITS, ROM_DEPTH, ROM_SHIFT, CLASS_BITS, "
                f"CODE_BITS>(in0_V, out0_V, ROM, THRESHOLD, {reg}, SAMPLES);"
            )
        else:
            call = (
                "exitflow::ctu_margin<CLASSES, PE, LOGIT_BITS, CLASS_BITS, CODE_BITS>"
                f"(in0_V, out0_V, THRESHOLD, {reg}, SAMPLES);"
            )
        self.code_gen_dict["$DOCOMPUTE$"] = [call]

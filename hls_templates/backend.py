"""The HLS backend shared by exitflow's FINN layers: code from one standalone template header."""

from __future__ import annotations

import shutil
from pathlib import Path

from finn.custom_op.fpgadataflow.hlsbackend import HLSBackend

from exitflow.hls_templates import TEMPLATE_DIR


class TemplateHLSBackend(HLSBackend):
    """FINN's HLS code generation around ``HEADER`` from ``hls_templates/``: the header travels
    with the generated top function and with the cppsim program (quoted include, same folder), so
    neither Vitis HLS nor the cppsim compiler needs an extra include path."""

    HEADER: str = ""

    def code_generation_ipgen(self, model, fpgapart, clk):
        super().code_generation_ipgen(model, fpgapart, clk)
        shutil.copy(TEMPLATE_DIR / self.HEADER, Path(self.get_nodeattr("code_gen_dir_ipgen")) / self.HEADER)

    def code_generation_cppsim(self, model):
        super().code_generation_cppsim(model)
        shutil.copy(TEMPLATE_DIR / self.HEADER, Path(self.get_nodeattr("code_gen_dir_cppsim")) / self.HEADER)

    def global_includes(self):
        self.code_gen_dict["$GLOBALS$"] = [f'#include "{self.HEADER}"']

"""Standalone HLS C++ templates of exitflow's exit hardware (CTU, gate, merge), and where to find
them and the open ``ap_types`` headers for C simulation with g++ (no vendor tools needed).

Next to the templates, the exit hardware as FINN layers: confidence-threshold unit, gate and merge.
Each layer is split as in FINN: a generic layer (shapes, stream widths, cycles, resource
estimates, ``execute_node``) and an HLS backend that generates code from a standalone template
in this folder.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from exitflow.core.errors import NotAvailableError

TEMPLATE_DIR = Path(__file__).resolve().parent


def ap_types_include_dir() -> Path:
    """The folder holding ``ap_int.h`` and ``hls_stream.h``, shipped inside the ``hls4ml`` wheel.

    Found without importing hls4ml (which would pull in its own dependencies).
    """
    spec = importlib.util.find_spec("hls4ml")
    if spec is None or not spec.submodule_search_locations:
        raise NotAvailableError(
            "the hls4ml package is not installed; it carries the ap_types headers g++ needs (run ./setup.sh)"
        )
    for root in spec.submodule_search_locations:
        folder = Path(root) / "templates" / "vivado" / "ap_types"
        if (folder / "ap_int.h").is_file() and (folder / "hls_stream.h").is_file():
            return folder
    raise NotAvailableError(
        f"hls4ml at {list(spec.submodule_search_locations)} lacks templates/vivado/ap_types/ap_int.h"
    )

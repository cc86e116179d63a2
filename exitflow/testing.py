"""exitflow's pytest plugin: markers for tests that need vendor tools or a board.

Load it with ``pytest_plugins = ["exitflow.testing"]`` in a ``conftest.py`` (exitflow's own test
suite does). A test marked

* ``@pytest.mark.vivado`` runs only when ``vivado`` is on PATH,
* ``@pytest.mark.vitis`` runs only when Vitis HLS (``vitis_hls``, or ``vitis-run`` after 2024.2)
  is on PATH,
* ``@pytest.mark.board`` runs only when ``$EXITFLOW_BOARD_HOST`` names a reachable PYNQ board,

and is otherwise reported as *skipped* with the reason (pytest ``-rs`` lists the reasons). Such a
test never passes by returning early. ``slow`` marks tests that take more than a few seconds.

The fixture ``cosim_bit_exact`` is :func:`exitflow.cosim.assert_bit_exact`: one line in a test
asserts that a built design cosimulates bit-exactly against its quantised model::

    def test_my_design(cosim_bit_exact):
        cosim_bit_exact("runs/mnist", design="runs/mnist/sweep/design.yaml", samples=500)
"""

from __future__ import annotations

import os
import shutil

import pytest

from exitflow.cosim import assert_bit_exact

MARKERS = {
    "vivado": "needs Vivado on PATH (skipped with the reason when it is absent)",
    "vitis": "needs Vitis HLS (vitis_hls or vitis-run) on PATH (skipped with the reason when it is absent)",
    "board": "needs a PYNQ board reachable at $EXITFLOW_BOARD_HOST (skipped when unset)",
    "slow": "takes more than a few seconds; deselect with -m 'not slow'",
}


def missing_requirement(marker: str) -> str | None:
    """Why a test with ``marker`` cannot run here, or None when it can."""
    if marker == "vivado":
        if shutil.which("vivado") is None:
            return "Vivado not found: `vivado` is not on PATH (source your Vivado installation's settings64.sh)"
    elif marker == "vitis":
        if shutil.which("vitis_hls") is None and shutil.which("vitis-run") is None:
            return (
                "Vitis HLS not found: neither `vitis_hls` nor `vitis-run` is on PATH (source your Vitis settings64.sh)"
            )
    elif marker == "board":
        if not os.environ.get("EXITFLOW_BOARD_HOST"):
            return "no PYNQ board: set EXITFLOW_BOARD_HOST to the board's host name to run board tests"
    return None


@pytest.fixture
def cosim_bit_exact():
    """:func:`exitflow.cosim.assert_bit_exact`: ``cosim_bit_exact(run_dir, design=..., samples=...)``
    raises AssertionError naming the sample, stage, layer and element of every mismatch."""
    return assert_bit_exact


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in ("vivado", "vitis", "board"):
        if item.get_closest_marker(marker) is not None:
            reason = missing_requirement(marker)
            if reason:
                pytest.skip(reason)

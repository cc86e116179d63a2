"""exitflow.testing: tool-marked tests are skipped with a visible reason, and run when the tool is there."""

import os
import stat

import pytest

TEST_FILE = """
import pytest

@pytest.mark.vivado
def test_needs_vivado():
    assert 1 + 1 == 2

@pytest.mark.vitis
def test_needs_vitis():
    assert True

@pytest.mark.board
def test_needs_board():
    assert True

def test_plain():
    assert True
"""


def _fake_tool(folder, name):
    path = folder / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_skipped_with_reason_when_tools_are_absent(pytester, monkeypatch, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("EXITFLOW_BOARD_HOST", raising=False)
    pytester.makepyfile(TEST_FILE)
    result = pytester.runpytest_inprocess("-p", "exitflow.testing", "-rs", "--strict-markers")
    result.assert_outcomes(passed=1, skipped=3)
    result.stdout.fnmatch_lines(
        [
            "*Vivado not found: `vivado` is not on PATH*",
            "*Vitis HLS not found: neither `vitis_hls` nor `vitis-run` is on PATH*",
            "*no PYNQ board: set EXITFLOW_BOARD_HOST*",
        ]
    )


def test_run_when_tools_are_present(pytester, monkeypatch, tmp_path):
    tools = tmp_path / "bin"
    tools.mkdir()
    _fake_tool(tools, "vivado")
    _fake_tool(tools, "vitis-run")
    monkeypatch.setenv("PATH", str(tools) + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("EXITFLOW_BOARD_HOST", "pynq.local")
    pytester.makepyfile(TEST_FILE)
    result = pytester.runpytest_inprocess("-p", "exitflow.testing", "--strict-markers")
    result.assert_outcomes(passed=4)


@pytest.mark.parametrize("marker", ["vivado", "vitis", "board", "slow"])
def test_markers_are_registered(pytester, marker):
    pytester.makepyfile(f"import pytest\n@pytest.mark.{marker}\ndef test_x():\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "exitflow.testing", "--strict-markers", "--markers")
    result.stdout.fnmatch_lines([f"@pytest.mark.{marker}:*"])

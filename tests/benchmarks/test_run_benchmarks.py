"""benchmarks/run.py prints one JSON object per benchmark; bad names are one-line errors."""

import json
import subprocess
import sys


def test_boards_benchmark_prints_one_json_line(repo):
    out = subprocess.run(
        [sys.executable, str(repo / "benchmarks" / "run.py"), "boards"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.splitlines()
    figures = json.loads(line)
    assert figures["name"] == "boards"
    assert figures["seconds"] > 0 and figures["python_startup_seconds"] > 0
    assert figures["ratio_vs_python_startup"] > 0


def test_unknown_benchmark(repo):
    out = subprocess.run(
        [sys.executable, str(repo / "benchmarks" / "run.py"), "boards", "nope"], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.strip().startswith("benchmarks/run.py: error: unknown benchmark 'nope'; known: boards")


def test_boards_command_imports_no_heavy_library():
    """`exitflow boards` must start fast: torch, numpy, FINN and brevitas stay unloaded."""
    code = (
        "import sys, io, contextlib; from exitflow.app.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()): rc = main(['boards'])\n"
        "print(rc, sorted(m for m in ('torch', 'numpy', 'finn', 'brevitas', 'qonnx', 'matplotlib') if m in sys.modules))"  # noqa: E501 (the exact text)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0 []"

"""The hostile-user suite: the real console script, run as a user runs it.

Every case runs ``.venv/bin/exitflow`` in a subprocess whose working folder is a fresh tmp folder,
with relative paths where a user would type them, and checks the exit code, that stderr is one
line without a traceback (for errors), and that every file that was there before is unchanged
(sha256 of the whole folder before and after).

Cases that need a trained run copy one small run folder, made once per session with
``exitflow run`` (lenet on digits, 2 epochs, Pynq-Z2): trained, profiled, swept, built,
cosimulated, reported.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # hostile_cases, hostile_harness (import mode is importlib)

from hostile_cases import TRAINED_CONFIG  # noqa: E402
from hostile_harness import exitflow  # noqa: E402


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """One small finished run folder (``exitflow run``), made once per session: never written by
    a case; copy it (``hostile_harness.copy_run``) to change it."""
    home = tmp_path_factory.mktemp("hostile_trained")
    (home / "hostile.yaml").write_text(TRAINED_CONFIG)
    done = exitflow(["run", "hostile.yaml", "--out", "trained", "--board", "Pynq-Z2"], home, timeout=1200)
    assert done.code == 0, done.describe()
    run = home / "trained"
    for name in ("model.pt", "profile.npz", "sweep/design.yaml", "hw/build.json", "cosim/report.json", "report.html"):
        assert (run / name).is_file(), name
    return run

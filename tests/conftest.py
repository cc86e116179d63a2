import os
import sys
from pathlib import Path

import pytest

pytest_plugins = ["exitflow.testing", "pytester"]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def exitflow_cmd() -> list[str]:
    """The installed console script, as a user runs it."""
    script = Path(sys.executable).parent / "exitflow"
    assert script.is_file(), f"console script missing at {script}; run ./setup.sh"
    return [str(script)]


@pytest.fixture
def user_boards(tmp_path, monkeypatch) -> Path:
    """An empty user board folder, in place of ~/.config/exitflow/boards."""
    folder = tmp_path / "user_boards"
    folder.mkdir()
    monkeypatch.setenv("EXITFLOW_BOARDS", str(folder))
    return folder


@pytest.fixture(autouse=True)
def _isolated_user_config(tmp_path_factory, monkeypatch):
    """Tests never read the developer's own ~/.config/exitflow."""
    if "EXITFLOW_BOARDS" not in os.environ:
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg")))


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A lenet trained for 6 epochs on digits: small, fast, shared by the quant and build tests."""
    from exitflow.data import DataSpec
    from exitflow.quant.config import ModelConfig, RunConfig, TrainConfig
    from exitflow.quant.train import train

    out = tmp_path_factory.mktemp("runs") / "digits"
    config = RunConfig(data=DataSpec(name="digits"), model=ModelConfig(), train=TrainConfig(epochs=6, seed=1))
    train(config, out, log=lambda line: None)
    return out

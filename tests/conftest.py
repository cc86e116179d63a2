import os
import sys
from pathlib import Path

import pytest

pytest_plugins = ["exitflow.testing", "pytester"]

REPO = Path(__file__).resolve().parents[1]

# The test command runs the suite on two processes (pytest-xdist: -n 2 in pyproject.toml). A
# process takes one group at a time: the tests that share an expensive session fixture form one
# group, so the fixture is made once; every other test module is a group of its own (its tests
# keep their order, as the README walk-through needs). The longest groups go first, so that
# neither process is left with a long one at the end.
SHARED = {
    "tests/hostile/": "hostile (one trained run)",
    "tests/cosim/": "cosim (the built designs)",
    "tests/app/test_run.py": "finished_run",
    "tests/app/test_report.py": "finished_run",
}
LONGEST_FIRST = [
    "hostile (one trained run)",
    "tests/test_readme.py",
    "tests/hw/test_build.py",
    "cosim (the built designs)",
    "finished_run",
    "tests/dse/test_sweep.py",
    "tests/dse/test_finn_model.py",
    "tests/quant/test_export.py",
]


def group_of(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return next((group for prefix, group in SHARED.items() if path.startswith(prefix)), path)


def pytest_collection_modifyitems(config, items):
    rank = {group: k for k, group in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(group_of(item.nodeid), len(rank)))  # stable: order within a group kept


def pytest_xdist_make_scheduler(config, log):
    """xdist's scope scheduling with :func:`group_of` as the scope (its own ``loadgroup`` marks
    are lost on pytest 9, whose node ids no longer follow ``item._nodeid``)."""
    from xdist.scheduler import LoadScopeScheduling

    class Groups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return Groups(config, log)


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


def tiny_mlp(folder: Path, bare: bool = False):
    """A tiny Brevitas net exported to ``folder/g.onnx`` (seed 0): int4 input -> 8x16 -> relu4 ->
    16x4; ``bare``: also the same without its input quantiser, ``folder/bare.onnx`` (it starts
    with a Gemm). Returns the net."""
    import torch
    from brevitas.nn import QuantIdentity, QuantLinear, QuantReLU

    from exitflow.quant.export import _export

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        QuantIdentity(bit_width=4, return_quant_tensor=True),
        QuantLinear(8, 16, bias=False, weight_bit_width=4),
        QuantReLU(bit_width=4, return_quant_tensor=True),
        QuantLinear(16, 4, bias=False, weight_bit_width=4),
    ).eval()
    _export(net, torch.rand(1, 8), folder / "g.onnx")
    if bare:
        _export(torch.nn.Sequential(*list(net)[1:]).eval(), torch.rand(1, 8), folder / "bare.onnx")
    return net


@pytest.fixture(scope="session")
def tiny_trainer():
    """``train(folder, backbone, preset, width=1.0, images=64, model=None) -> run folder``: a
    backbone (or the ``model`` config) trained for one epoch on ``images`` random 3x32x32 images
    written to ``folder/tiny.npz``: fast to train and build, and its exits still disagree."""

    def train_tiny(folder, backbone: str, preset: str, width: float = 1.0, images: int = 64, model=None):
        import numpy as np

        from exitflow.core.data import DataSpec
        from exitflow.quant.config import ModelConfig, RunConfig, TrainConfig
        from exitflow.quant.train import train

        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (images, 3, 32, 32), dtype=np.uint8)
        np.savez(folder / "tiny.npz", x=x, y=np.arange(images) % 10)
        config = RunConfig(
            data=DataSpec(name="npz", path=str(folder / "tiny.npz")),
            model=model or ModelConfig(backbone=backbone, preset=preset, width=width),
            train=TrainConfig(epochs=1, batch_size=32),
        )
        train(config, folder / "run", log=lambda line: None)
        return folder / "run"

    return train_tiny


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A lenet trained for 6 epochs on digits: small, fast, shared by the quant and build tests."""
    from exitflow.core.data import DataSpec
    from exitflow.quant.config import ModelConfig, RunConfig, TrainConfig
    from exitflow.quant.train import train

    out = tmp_path_factory.mktemp("runs") / "digits"
    config = RunConfig(data=DataSpec(name="digits"), model=ModelConfig(), train=TrainConfig(epochs=6, seed=1))
    train(config, out, log=lambda line: None)
    return out

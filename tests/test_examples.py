"""Every example config loads, builds the network it describes and trains on its own data.

The CIFAR-10 example reads the user's files; here it reads tiny batches written in the CIFAR-10
binary format. `examples/lenet_digits.yaml` also runs end to end, unchanged, through `exitflow
run` (tests/app/test_run.py)."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from exitflow.core.data import load_splits
from exitflow.core.schema import load_file
from exitflow.quant.config import RunConfig
from exitflow.quant.network import build_model

FOLDER = Path(__file__).resolve().parents[1] / "examples"
EXAMPLES = sorted(FOLDER.glob("*.yaml"))
NAMES = [p.stem for p in EXAMPLES]


@pytest.fixture(autouse=True)
def _examples_importable(monkeypatch):
    """The custom-model examples name a factory in the examples folder (PYTHONPATH=examples)."""
    monkeypatch.syspath_prepend(str(FOLDER))


def test_the_issue_examples_are_there():
    """mnist5k + lenet, digits + lenet, CIFAR-10 + cnv from a user path, bnn_pynq's CNV with exits,
    resnet8, mobilenet and a user's own residual and depthwise-separable networks."""
    configs = {p.stem: load_file(RunConfig, p) for p in EXAMPLES}
    kinds = {(c.data.name, c.model.backbone) for c in configs.values()}
    assert {
        ("mnist5k", "lenet"),
        ("digits", "lenet"),
        ("cifar10_binary", "cnv"),
        ("mnist5k", "custom"),
        ("mnist5k", "resnet8"),
        ("mnist5k", "mobilenet"),
    } <= kinds
    custom = [c for c in configs.values() if c.model.backbone == "custom"]
    assert any(c.model.factory.startswith("brevitas_examples.bnn_pynq.") for c in custom)
    assert any(c.model.factory == "my_resnet:my_resnet" for c in custom)
    assert any(c.model.factory == "my_mobilenet:my_mobilenet" for c in custom)
    cifar = [c for c in configs.values() if c.data.name.startswith("cifar10")]
    assert all(c.data.path for c in cifar)


def _cifar_binary(x: np.ndarray, y: np.ndarray) -> bytes:
    return np.concatenate([y[:, None].astype(np.uint8), x.reshape(len(x), -1)], axis=1).tobytes()


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory) -> Path:
    """Two training batches and a test batch in CIFAR-10's binary format, 10 images per class."""
    folder = tmp_path_factory.mktemp("cifar-10-batches-bin")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (100, 3, 32, 32), dtype=np.uint8)
    y = np.arange(100) % 10
    (folder / "data_batch_1.bin").write_bytes(_cifar_binary(x[:40], y[:40]))
    (folder / "data_batch_2.bin").write_bytes(_cifar_binary(x[40:80], y[40:80]))
    (folder / "test_batch.bin").write_bytes(_cifar_binary(x[80:], y[80:]))
    return folder


def _config(path: Path, cifar_folder: Path) -> RunConfig:
    config = load_file(RunConfig, path)
    if config.data.name.startswith("cifar10"):
        assert config.data.name == "cifar10_binary"
        config = replace(config, data=replace(config.data, path=str(cifar_folder)))
    return config


@pytest.mark.parametrize("path", EXAMPLES, ids=NAMES)
def test_example_builds_and_trains_on_its_data(path, cifar_folder):
    config = _config(path, cifar_folder)
    splits = load_splits(config.data)
    if config.data.shape is not None:
        assert splits.train.shape == tuple(config.data.shape)
    model = build_model(config.model, splits.train.shape, splits.num_classes)
    if config.model.exits is not None:
        assert model.exit_names[:-1] == list(config.model.exits)
    torch.manual_seed(0)
    x = torch.from_numpy(splits.train.x[:32].astype(np.float32) / 255.0)
    y = torch.from_numpy(splits.train.y[:32]).long()
    model.train()
    outputs = model(x)
    assert len(outputs) == len(model.exit_names)
    assert all(tuple(o.shape) == (32, splits.num_classes) for o in outputs)
    loss = sum(torch.nn.functional.cross_entropy(o, y) for o in outputs)
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.Adam(params, lr=config.train.lr)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, params, strict=False))


def test_cifar10_example_trains_and_profiles_from_a_user_path(cifar_folder, tmp_path):
    """The CIFAR-10 example as a user runs it, on tiny files in the CIFAR-10 binary format."""
    from exitflow.quant.profile import profile
    from exitflow.quant.train import train

    config = _config(Path(__file__).resolve().parents[1] / "examples" / "cnv_cifar10.yaml", cifar_folder)
    config = replace(config, train=replace(config.train, epochs=1, batch_size=32))
    result = train(config, tmp_path / "run", log=lambda line: None)
    assert result.epochs_run == 1
    summary = profile(tmp_path / "run", plot=False)
    assert summary["exits"][:-1] == list(config.model.exits) and len(summary["exits"]) == len(config.model.exits) + 1
    assert summary["splits"]["test"]["samples"] == 20  # test_batch.bin is kept as the test split

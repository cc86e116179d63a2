"""Every example config loads, and builds the network it describes."""

from pathlib import Path

import pytest

from exitflow.quant.config import RunConfig
from exitflow.quant.network import build_model
from exitflow.schema import load_file

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def test_there_are_examples():
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_builds(path):
    config = load_file(RunConfig, path)
    shape = config.data.shape or {"digits": (1, 8, 8), "mnist5k": (1, 28, 28)}[config.data.name]
    model = build_model(config.model, tuple(shape), 10)
    if config.model.exits is not None:
        assert model.exit_names[:-1] == [e for e in model.exit_names[:-1] if e in config.model.exits]
        assert len(model.exit_names) == len(config.model.exits) + 1

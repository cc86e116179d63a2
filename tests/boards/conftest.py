"""A built design shared by the board tests: the digits lenet, profiled, with a max_prob exit and an
agreement exit after it, in a run folder whose name has a space."""

import shutil

import pytest
import yaml

AGREEMENT = {
    "model": "lenet",
    "board": "Pynq-Z2",
    "stages": [
        {"name": "early", "blocks": ["conv0"], "gate_depth": 4, "head": {"name": "exit0", "threshold": 0.9}},
        {
            "name": "middle",
            "blocks": ["conv1", "fc0"],
            "gate_depth": 2,
            "head": {"name": "exit1", "policy": "agreement", "threshold": 0.8},
        },
        {"name": "last", "blocks": ["fc1"], "head": {"name": "final", "policy": "agreement"}},
    ],
}


@pytest.fixture(scope="session")
def agreement_built(digits_run, tmp_path_factory):
    """The digits lenet with an agreement head after the first kept exit (and the final head
    named agreement too, which reads nothing: every sample leaves there), profiled (the driver's
    predictions come from the profile) and built in a run of its own; returns its ``hw``."""
    from exitflow.boards.vivado import build_with_project
    from exitflow.quant.profile import profile

    run = tmp_path_factory.mktemp("agreement") / "agreement run"
    run.mkdir()
    for name in ("model.pt", "config.yaml"):
        shutil.copy(digits_run / name, run / name)
    profile(run, plot=False)
    path = run / "design.yaml"
    path.write_text(yaml.safe_dump(AGREEMENT, sort_keys=False))
    build_with_project(run, path, log=lambda line: None)
    return run / "hw"

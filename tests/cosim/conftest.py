"""Built designs for the cosimulation tests: the shared digits lenet, a small cnv, resnet8 and
mobilenet, each with two designs (other exits, other policies, thresholds that send samples to
every exit)."""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

LENET_BLOCKS = ["conv0", "conv1", "fc0", "fc1"]
CNV_BLOCKS = ["conv0", "conv1", "conv2", "conv3", "conv4", "conv5", "fc0", "fc1"]
RESNET8_BLOCKS = ["stem", "stack1", "stack2", "stack3"]
MOBILENET_BLOCKS = ["stem", "sep1", "sep2", "sep3", "sep4", "sep5", "sep6"]
# a user's residual network (examples/my_resnet.py): its stages are named by the module they end at
CUSTOM_BLOCKS = ["stem.2", "layer1.relu_out", "layer2.relu_out", "fc"]
# a user's depthwise-separable network (examples/my_mobilenet.py)
CUSTOM_DW_BLOCKS = ["stem.2", "block1.pw_act", "block2.pw_act", "fc"]
# (early exits, policy): thresholds are set from the model's own confidence on the test split
DESIGNS = {
    "lenet": {"conv0-max_prob": (["conv0"], "max_prob"), "conv1+fc0-margin": (["conv1", "fc0"], "margin")},
    "cnv": {"conv1-max_prob": (["conv1"], "max_prob"), "conv0+conv5-margin": (["conv0", "conv5"], "margin")},
    "resnet8": {"stack1-max_prob": (["stack1"], "max_prob"), "stem+stack2-margin": (["stem", "stack2"], "margin")},
    "mobilenet": {"sep1-max_prob": (["sep1"], "max_prob"), "stem+sep4-margin": (["stem", "sep4"], "margin")},
    "custom": {
        "layer1-max_prob": (["layer1.relu_out"], "max_prob"),
        "stem+layer2-margin": (["stem.2", "layer2.relu_out"], "margin"),
    },
    "custom_dw": {"block1-max_prob": (["block1.pw_act"], "max_prob")},
}


def median_threshold(run, exit_name, policy):
    """A threshold at which about half of the test samples leave at ``exit_name``."""
    from exitflow.core.data import load_splits
    from exitflow.cosim.functional import model_logits  # noqa: F401  (imports FINN's settings once)
    from exitflow.quant import checkpoint as ckpt
    from exitflow.quant.profile import run_exits

    config, model, _ = ckpt.load_model(run)
    prof, scales, _ = run_exits(model, load_splits(config.data).test)
    k = model.exit_names.index(exit_name)
    code = float(np.median(prof.codes[policy][:, k]))
    if policy in ("max_prob", "agreement"):  # agreement: max_prob's code
        return round(min(1.0, 1024.0 / max(code, 1024.0)), 4)
    return round(code * float(scales[k]), 6)


def design_data(run, model_name, blocks, exits, policy):
    stages, start = [], 0
    for k, end in enumerate([*exits, blocks[-1]]):
        stage = {"name": f"s{k}", "blocks": blocks[start : blocks.index(end) + 1], "head": {"name": f"exit{k}"}}
        if k < len(exits):
            stage["gate_depth"] = 2
            stage["head"].update(policy=policy, threshold=median_threshold(run, end, policy))
        stages.append(stage)
        start = blocks.index(end) + 1
    return {"model": model_name, "board": "Pynq-Z2", "stages": stages}


def built_run(source, folder, data):
    """A copy of the trained run in ``source`` with ``data`` built into its hw/."""
    from exitflow.hw.build import build
    from exitflow.quant.profile import profile

    folder.mkdir(parents=True)
    for name in ("model.pt", "config.yaml"):
        shutil.copy(source / name, folder / name)
    path = folder / "design.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    profile(folder, plot=False)
    build(folder, path, log=lambda line: None, vivado_project=False)
    return folder, path


@pytest.fixture(scope="session")
def cnv_trained(tmp_path_factory, tiny_trainer):
    """A quarter-width cnv w2a2, on 240 images."""
    return tiny_trainer(tmp_path_factory.mktemp("cosim_cnv"), "cnv", "w2a2", 0.25, images=240)


@pytest.fixture(scope="session")
def resnet8_trained(tmp_path_factory, tiny_trainer):
    """A half-width resnet8 w4a4 (residual blocks: forks, adds, 1x1 projections)."""
    return tiny_trainer(tmp_path_factory.mktemp("cosim_resnet8"), "resnet8", "w4a4", 0.5, images=240)


@pytest.fixture(scope="session")
def mobilenet_trained(tmp_path_factory, tiny_trainer):
    """A half-width mobilenet w4a4 (depthwise-separable blocks, strided and padded)."""
    return tiny_trainer(tmp_path_factory.mktemp("cosim_mobilenet"), "mobilenet", "w4a4", 0.5, images=240)


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _user_model(tmp_path_factory, tiny_trainer, folder: str, factory: str, blocks: list[str]):
    """A user's own network from examples/ (importable as a user makes it: its folder on the
    import path) at width 8, exits named by its modules, trained by ``tiny_trainer``."""
    from exitflow.core.schema import FrozenMap
    from exitflow.quant.config import ModelConfig

    sys.path.insert(0, str(EXAMPLES))
    model = ModelConfig(
        backbone="custom",
        factory=factory,
        factory_args=FrozenMap({"width": 8}),
        exits=tuple(blocks[:-1]),
        classifier=blocks[-1],
    )
    return tiny_trainer(tmp_path_factory.mktemp(folder), "custom", "w4a4", images=240, model=model)


@pytest.fixture(scope="session")
def custom_trained(tmp_path_factory, tiny_trainer):
    """A user's own residual network (examples/my_resnet.py)."""
    return _user_model(tmp_path_factory, tiny_trainer, "cosim_custom", "my_resnet:my_resnet", CUSTOM_BLOCKS)


@pytest.fixture(scope="session")
def custom_dw_trained(tmp_path_factory, tiny_trainer):
    """A user's own depthwise-separable network (examples/my_mobilenet.py)."""
    return _user_model(tmp_path_factory, tiny_trainer, "cosim_custom_dw", "my_mobilenet:my_mobilenet", CUSTOM_DW_BLOCKS)


@pytest.fixture(scope="session")
def cosim_designs(
    digits_run, cnv_trained, resnet8_trained, mobilenet_trained, custom_trained, custom_dw_trained, tmp_path_factory
):
    """{(model, design id): (run folder, design path)}, built once per session."""
    root = tmp_path_factory.mktemp("cosim_designs")
    sources = {
        "lenet": (digits_run, LENET_BLOCKS),
        "cnv": (cnv_trained, CNV_BLOCKS),
        "resnet8": (resnet8_trained, RESNET8_BLOCKS),
        "mobilenet": (mobilenet_trained, MOBILENET_BLOCKS),
        "custom": (custom_trained, CUSTOM_BLOCKS),
        "custom_dw": (custom_dw_trained, CUSTOM_DW_BLOCKS),
    }
    built = {}
    for model_name, designs in DESIGNS.items():
        source, blocks = sources[model_name]
        for key, (exits, policy) in designs.items():
            data = design_data(source, model_name.split("_")[0], blocks, exits, policy)  # custom_dw: custom
            built[model_name, key] = built_run(source, root / f"{model_name}-{key}", data)
    return built


@pytest.fixture(scope="session")
def lenet_built(cosim_designs):
    return cosim_designs["lenet", "conv0-max_prob"]


@pytest.fixture(scope="session")
def lenet_agreement_built(digits_run, tmp_path_factory):
    """The digits lenet with exits after conv0 (max_prob) and conv1 (agreement: its CTU reads
    each sample's class at conv0's exit), both at the median confidence, built."""
    root = tmp_path_factory.mktemp("cosim_agreement")
    data = design_data(digits_run, "lenet", LENET_BLOCKS, ["conv0", "conv1"], "max_prob")
    head = data["stages"][1]["head"]
    head.update(policy="agreement", threshold=median_threshold(digits_run, "conv1", "agreement"))
    return built_run(digits_run, root / "lenet-agreement", data)

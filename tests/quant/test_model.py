"""Both model classes are a MultiExitModel: the same caller code gives the stages, their blocks,
their weight layers and the heads of a built-in lenet and of a user's own Brevitas model."""

import pytest

from exitflow.core.schema import FrozenMap
from exitflow.quant.config import ModelConfig
from exitflow.quant.custom import CustomMultiExitNet
from exitflow.quant.export import layer_table
from exitflow.quant.model import MultiExitModel
from exitflow.quant.network import MultiExitNet, build_model

CNV_ARGS = FrozenMap({"num_classes": 10, "weight_bit_width": 2, "act_bit_width": 2, "in_bit_width": 8, "in_ch": 3})


def _lenet():
    return build_model(ModelConfig(backbone="lenet", exits=("conv1",)), (1, 28, 28), 10)


def _custom():
    config = ModelConfig(
        backbone="custom",
        factory="brevitas_examples.bnn_pynq.models.CNV:CNV",
        factory_args=CNV_ARGS,
        exits=("conv_features.7", "linear_features.2"),
        classifier="linear_features.6",
    )
    return build_model(config, (3, 32, 32), 10)


def _describe(model: MultiExitModel, early: list[str]) -> dict:
    """What export, build and sweep ask of a model, asked without knowing its class."""
    kept = model.kept_exits(early)
    stages, heads = layer_table(model, kept)
    return {
        "kept": kept,
        "blocks": model.stage_blocks(kept),
        "stage_layers": [[layer.name for layer in stage] for stage in stages],
        "head_layers": [[layer.name for layer in head] for head in heads],
        "mismatch": model.blocks_mismatch(model.stage_blocks(kept)),
        "cut": model.stages_cut_from_whole,
        "frozen": len(model.frozen_modules()) == len(model.frozen_prefixes()),
    }


@pytest.mark.parametrize("build", [_lenet, _custom])
def test_both_classes_are_multi_exit_models(build):
    model = build()
    assert isinstance(model, MultiExitModel)
    assert model.kept_exits([]) == [model.exit_names[-1]]
    assert model.kept_exits(list(reversed(model.exit_names))) == model.exit_names  # the model's order
    whole = model.stage_blocks(model.kept_exits([]))
    assert len(whole) == 1 and whole[0][-1] == model.exit_names[-1]


def test_the_same_caller_code_describes_a_lenet_and_a_users_model():
    lenet, custom = _lenet(), _custom()
    assert isinstance(lenet, MultiExitNet) and isinstance(custom, CustomMultiExitNet)
    assert _describe(lenet, ["conv1"]) == {
        "kept": ["conv1", "fc1"],
        "blocks": [["conv0", "conv1"], ["fc0", "fc1"]],
        "stage_layers": [["conv0", "conv1"], ["fc0", "fc1"]],
        "head_layers": [["classifier"], ["classifier"]],
        "mismatch": None,
        "cut": False,
        "frozen": True,
    }
    assert _describe(custom, ["linear_features.2", "conv_features.7"]) == {
        "kept": ["conv_features.7", "linear_features.2", "linear_features.6"],
        "blocks": [["conv_features.7"], ["linear_features.2"], ["linear_features.6"]],
        "stage_layers": [
            ["conv_features.1", "conv_features.4"],
            ["conv_features.8", "conv_features.11", "conv_features.15", "conv_features.18", "linear_features.0"],
            ["linear_features.3"],
        ],
        "head_layers": [["classifier"], ["classifier"], ["classifier"]],
        "mismatch": None,
        "cut": True,
        "frozen": True,
    }
    assert lenet.blocks_mismatch([["conv0"], ["conv1", "fc0", "fc1", "fc1"]]) == (
        "the blocks ['conv0', 'conv1', 'fc0', 'fc1', 'fc1'] must be the model's blocks in order: "
        "['conv0', 'conv1', 'fc0', 'fc1']"
    )


def test_exported_heads_start_with_the_quantiser_they_receive():
    lenet = _lenet()
    head = lenet.exit_head("conv1")
    assert head[0] is lenet.boundary_quantiser("conv1") and head[1] is lenet.head("conv1")
    assert lenet.stage_modules(["conv1"])[0][1][1] is head[1]
    custom = _custom()
    assert custom.exit_head("conv_features.7") is custom.head("conv_features.7")

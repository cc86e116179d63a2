"""A user's own Brevitas backbone (brevitas_examples.bnn_pynq's CNV) with exits attached by
module name: integer logits, bit-exact per-stage export, training, and clear errors."""

import numpy as np
import pytest
import torch

from exitflow.core.data import DataSpec, load_splits
from exitflow.core.errors import ConfigError
from exitflow.core.schema import FrozenMap, from_data, to_data
from exitflow.quant import checkpoint as ckpt
from exitflow.quant.config import ModelConfig, RunConfig, TrainConfig
from exitflow.quant.export import export_stages, run_stages
from exitflow.quant.network import build_model
from exitflow.quant.train import to_input, train

from .conftest import randomise_batch_norm

CNV_ARGS = FrozenMap({"num_classes": 10, "weight_bit_width": 2, "act_bit_width": 2, "in_bit_width": 8, "in_ch": 3})
EXITS = ("conv_features.3", "conv_features.7", "conv_features.14", "linear_features.2")


def cnv_config(exits=EXITS, classifier="linear_features.6", **kw):
    return ModelConfig(
        backbone="custom",
        factory="brevitas_examples.bnn_pynq.models.CNV:CNV",
        factory_args=CNV_ARGS,
        exits=exits,
        classifier=classifier,
        **kw,
    )


def test_exits_by_module_name_give_integer_logits():
    torch.manual_seed(0)
    model = build_model(cnv_config(), (3, 32, 32), 10).eval()
    assert model.exit_names == [*EXITS, "linear_features.6"]
    with torch.no_grad():
        outs = model(torch.rand(4, 3, 32, 32))
    assert [tuple(o.shape) for o in outs] == [(4, 10)] * 5
    for out in outs:
        assert out.scale.numel() == 1
        ratio = (out.value / out.scale).double()
        assert torch.equal(out.int().double(), torch.round(ratio))


@pytest.mark.slow
@pytest.mark.parametrize("exits", [["conv_features.7", "linear_features.2"], ["conv_features.3"]])
def test_chained_stages_reproduce_the_integer_logits(tmp_path, exits):
    test = load_splits(DataSpec(name="mnist5k", shape=(3, 32, 32))).test
    torch.manual_seed(2)
    model = build_model(cnv_config(), (3, 32, 32), 10)
    randomise_batch_norm(model)
    model.eval()
    x = to_input(test.x[:100])
    with torch.no_grad():
        expected = [o.int().numpy().astype(np.int64) for o in model(x)]
    manifest = to_data(export_stages(model, exits, tmp_path / "stages", x[:1]))
    assert manifest["exits"] == [*exits, "linear_features.6"]
    for name, logits in zip(manifest["exits"], run_stages(tmp_path / "stages", x.numpy()), strict=False):
        assert np.array_equal(logits, expected[model.exit_names.index(name)]), name


@pytest.mark.slow
def test_train_then_exits_only_keeps_the_users_classifier_bit_identical(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (160, 3, 32, 32), dtype=np.uint8)
    y = np.arange(160) % 10
    np.savez(tmp_path / "tiny.npz", x=x, y=y)
    data = DataSpec(name="npz", path=str(tmp_path / "tiny.npz"))
    base = RunConfig(
        data=data, model=cnv_config(exits=("conv_features.7",)), train=TrainConfig(epochs=1, batch_size=32)
    )
    train(base, tmp_path / "base", log=lambda line: None)
    exits_only = RunConfig(
        data=data,
        model=base.model,
        train=TrainConfig(epochs=1, batch_size=32, mode="exits_only", backbone_from=str(tmp_path / "base")),
    )
    train(exits_only, tmp_path / "exits", log=lambda line: None)
    test = load_splits(data).test
    finals = []
    for run in ("base", "exits"):
        _, model, _ = ckpt.load_model(tmp_path / run)
        with torch.no_grad():
            finals.append(model(to_input(test.x))[-1].int().numpy())
    assert np.array_equal(finals[0], finals[1])


@pytest.mark.parametrize(
    "config, message",
    [
        (dict(exits=("conv_features.99",)), "model.exits: the backbone has no module named 'conv_features.99'"),
        (
            dict(exits=("conv_features.1",)),
            "'conv_features.1' is a QuantConv2d; an exit must follow an activation quantiser",
        ),
        (dict(classifier="linear_features.7"), "model.classifier: 'linear_features.7' is a TensorNorm"),
        (
            dict(exits=("linear_features.2",), classifier="linear_features.0"),
            "every exit must come before the classifier",
        ),
    ],
)
def test_bad_exit_or_classifier(config, message):
    with pytest.raises(ConfigError) as err:
        build_model(cnv_config(**config), (3, 32, 32), 10)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"backbone": "custom", "classifier": "fc", "exits": ["a"]}, "factory: a custom backbone needs factory"),
        ({"backbone": "custom", "factory": "m:f", "exits": ["a"]}, "classifier: a custom backbone needs classifier"),
        (
            {"backbone": "custom", "factory": "m:f", "classifier": "fc"},
            "exits: a custom backbone needs the module names",
        ),
        ({"factory": "m:f"}, "factory: is only used with backbone: custom (backbone is lenet)"),
        (
            {"backbone": "custom", "factory": "m:f", "classifier": "fc", "exits": ["a"], "factory_args": {"n": [1]}},
            "factory_args.n: must be bool or int or float or str; got [1]",
        ),
    ],
)
def test_custom_config_errors(data, message):
    with pytest.raises(ConfigError) as err:
        from_data(ModelConfig, data, source="run.yaml")
    assert message in str(err.value)


@pytest.mark.parametrize(
    "factory, args, message",
    [
        ("no_such_package.models:CNV", {}, "model.factory: cannot import 'no_such_package.models'"),
        ("brevitas_examples.bnn_pynq.models.CNV:NoSuch", {}, "has no callable 'NoSuch'"),
        ("brevitas_examples.bnn_pynq.models.CNV", {}, "must be 'package.module:callable'"),
        (
            "brevitas_examples.bnn_pynq.models.CNV:CNV",
            {"colour": 3},
            "model.factory_args: brevitas_examples.bnn_pynq.models.CNV:CNV does not take them",
        ),
    ],
)
def test_bad_factory(factory, args, message):
    config = ModelConfig(
        backbone="custom", factory=factory, factory_args=FrozenMap(args), exits=EXITS, classifier="linear_features.6"
    )
    with pytest.raises(ConfigError) as err:
        build_model(config, (3, 32, 32), 10)
    assert message in str(err.value)


def test_data_that_does_not_fit_the_users_backbone():
    with pytest.raises(ConfigError, match=r"cannot take the data's 1x28x28 images"):
        build_model(cnv_config(), (1, 28, 28), 10)

"""Brevitas models as users write them: default quantisers whose scales are initialised from data,
factories that return (model, cfg), layers exitflow cannot map, exits that leave a stage without
hardware, and checkpoints that must never import or call what they name."""

import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch

from exitflow.core.data import DataSpec, load_splits
from exitflow.core.errors import ConfigError
from exitflow.core.schema import FrozenMap, dump_yaml, to_data
from exitflow.quant import checkpoint as ckpt
from exitflow.quant import train as train_module
from exitflow.quant.config import ModelConfig, RunConfig, TrainConfig
from exitflow.quant.export import export_stages
from exitflow.quant.network import build_model
from exitflow.quant.profile import profile
from exitflow.quant.train import to_input, train

QUIET = dict(log=lambda line: None, progress=False)

# A user's backbone for 1x8x8 digits with Brevitas's default activation quantisers: QuantIdentity
# and QuantReLU scales are ParameterFromRuntimeStatsScaling, initialised from the data it sees.
DEFAULT_QUANT_MODEL = """
import torch
from torch import nn
from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear, QuantReLU


class Block(nn.Module):
    def __init__(self, cin, cout, skip=False, plain=False):
        super().__init__()
        conv = nn.Conv2d if plain else QuantConv2d
        kw = {} if plain else {"weight_bit_width": 4}
        self.conv = conv(cin, cout, 3, padding=1 if skip else 0, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout)
        self.act = QuantReLU(bit_width=4)
        self.skip = skip

    def forward(self, x):
        y = self.bn(self.conv(x))
        return self.act(y + x if self.skip else y)


class Net(nn.Module):
    def __init__(self, classes=10, skip=False, plain=False, concat=False):
        super().__init__()
        self.inp = QuantIdentity(bit_width=8)
        self.block0 = Block(1, 8)
        self.block1 = Block(8, 8, skip=skip, plain=plain)
        self.pool = nn.MaxPool2d(2) if not skip else nn.Identity()
        self.mid = QuantIdentity(bit_width=8)
        self.flat = nn.Flatten()
        self.concat = concat
        n = 8 * (6 * 6 if skip else 2 * 2) * (2 if concat else 1)
        self.fc0 = QuantLinear(n, 16, bias=False, weight_bit_width=4)
        self.bn2 = nn.BatchNorm1d(16)
        self.act2 = QuantReLU(bit_width=4)
        self.fc = QuantLinear(16, classes, bias=False, weight_bit_width=4)

    def forward(self, x):
        x = self.block1(self.block0(self.inp(x)))
        x = self.flat(self.mid(self.pool(x)))
        if self.concat:
            x = torch.cat([x, x], dim=1)
        return self.fc(self.act2(self.bn2(self.fc0(x))))


def make(**kw):
    return Net(**kw)


def make_with_cfg(**kw):
    return Net(**kw), {"MODEL": "mine"}


def make_cfg_first(**kw):
    return {"MODEL": "mine"}, Net(**kw)


def make_dict(**kw):
    return {"model": Net(**kw)}
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """The user's own module, importable as users make it: a file on their PYTHONPATH."""
    name = f"mymod_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / f"{name}.py").write_text(DEFAULT_QUANT_MODEL)
    monkeypatch.syspath_prepend(str(folder))
    yield name, folder
    sys.modules.pop(name, None)


def custom(name, factory="make", exits=("block0.act",), **args):
    return ModelConfig(
        backbone="custom", factory=f"{name}:{factory}", factory_args=FrozenMap(args), exits=exits, classifier="fc"
    )


def _capture_trained_model(monkeypatch) -> list:
    """The model object train() builds and trains, to compare with what is loaded later."""
    built = []
    real = train_module.build_model

    def capture(*args, **kw):
        built.append(real(*args, **kw))
        return built[-1]

    monkeypatch.setattr(train_module, "build_model", capture)
    return built


# ---------------------------------------------------------------------------- 1. default quantisers


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [64, 4], ids=["still-collecting-stats", "stats-collected"])
def test_default_quantisers_train_profile_and_load_bit_exactly(tmp_path, user_module, monkeypatch, batch_size):
    name, _ = user_module
    config = RunConfig(
        data=DataSpec(name="digits"),
        model=custom(name, exits=("block0.act", "mid")),
        train=TrainConfig(epochs=2, batch_size=batch_size, seed=3),
    )
    fresh = build_model(config.model, (1, 8, 8), 10)
    stats_keys = [k for k in ckpt._full_state_keys(fresh) if k.endswith("scaling_impl.value")]
    assert stats_keys and not any(k in fresh.state_dict() for k in stats_keys)  # the case of issue 13

    built = _capture_trained_model(monkeypatch)
    train(config, tmp_path / "run", **QUIET)
    trained = built[0].eval()
    saved = ckpt.load(tmp_path / "run")["state_dict"]
    assert all(k in saved for k in stats_keys)

    result = profile(tmp_path / "run", plot=False)
    assert result["exits"] == ["block0.act", "mid", "fc"] and (tmp_path / "run" / "profile.npz").exists()

    _, loaded, _ = ckpt.load_model(tmp_path / "run")
    x = to_input(load_splits(config.data).test.x)
    with torch.no_grad():
        want, got = trained(x), loaded(x)
    assert len(want) == len(got) == 3
    for a, b in zip(want, got, strict=False):
        assert torch.equal(a.value, b.value) and torch.equal(a.scale, b.scale)
    # the loaded scales are final, as Brevitas intends: no quantiser collects statistics again
    from brevitas.core.scaling import ParameterFromRuntimeStatsScaling

    stats = [m for m in loaded.modules() if isinstance(m, ParameterFromRuntimeStatsScaling)]
    assert stats and all(m.counter > m.collect_stats_steps for m in stats)


@pytest.mark.slow
def test_profile_command_on_a_default_quantiser_run(tmp_path, user_module, exitflow_cmd):
    name, folder = user_module
    config = RunConfig(data=DataSpec(name="digits"), model=custom(name), train=TrainConfig(epochs=1, seed=0))
    train(config, tmp_path / "run", **QUIET)
    env = {**os.environ, "PYTHONPATH": str(folder)}
    result = subprocess.run([*exitflow_cmd, "profile", str(tmp_path / "run")], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "profile.npz").exists()


# ---------------------------------------------------------------------------- 2. factories returning tuples


def test_factory_returning_model_and_cfg(user_module):
    name, _ = user_module
    model = build_model(custom(name, factory="make_with_cfg"), (1, 8, 8), 10)
    assert model.exit_names == ["block0.act", "fc"]
    assert type(model.backbone).__name__ == "Net"


def test_brevitas_examples_model_with_cfg():
    config = ModelConfig(
        backbone="custom",
        factory="brevitas_examples.bnn_pynq.models:model_with_cfg",
        factory_args=FrozenMap({"name": "cnv_2w2a", "pretrained": False}),
        exits=("conv_features.7",),
        classifier="linear_features.6",
    )
    model = build_model(config, (3, 32, 32), 10).eval()
    with torch.no_grad():
        outs = model(torch.rand(2, 3, 32, 32))
    assert [tuple(o.shape) for o in outs] == [(2, 10), (2, 10)]


@pytest.mark.parametrize(
    "factory, what", [("make_cfg_first", "returned a tuple of dict, Net"), ("make_dict", "returned a dict")]
)
def test_factory_returning_something_else(user_module, factory, what):
    name, _ = user_module
    with pytest.raises(ConfigError) as err:
        build_model(custom(name, factory=factory), (1, 8, 8), 10)
    message = str(err.value)
    assert message.startswith(f"model.factory: {name}:{factory} {what}, not a torch module")
    assert "wrap it in a function of your own that returns the nn.Module" in message and "\n" not in message


# ---------------------------------------------------------------------------- 3. layers exitflow cannot map


def test_a_skip_add_without_a_shared_quantiser_is_named_by_the_users_block(tmp_path, user_module):
    name, _ = user_module
    model = build_model(custom(name, exits=("block0.act",), skip=True), (1, 8, 8), 10)
    with pytest.raises(ConfigError) as err:
        export_stages(model, ["block0.act"], tmp_path / "stages", torch.zeros(1, 1, 8, 8))
    message = str(err.value)
    assert message.startswith("block1: the skip connection (Add of two branches) needs one shared quantiser")
    assert "its inputs come from block1.bn (not quantised) and block0.act" in message
    assert "in Block.forward apply one QuantIdentity (the same module) to both branches" in message
    assert "\n" not in message and "seg" not in message and "Transpose" not in message
    assert not (tmp_path / "stages").exists() and not (tmp_path / ".stages.tmp").exists()


# A user's own residual network: Brevitas's default quantisers, its own module names, the add's
# two inputs quantised by one shared QuantIdentity (or, with shared=False, by two).
RESIDUAL_MODEL = """
import torch
from torch import nn
from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear, QuantReLU


class Block(nn.Module):
    def __init__(self, cin, cout, stride, shared=True):
        super().__init__()
        self.conv_a = QuantConv2d(cin, cout, 3, stride=stride, padding=1, bias=False, weight_bit_width=4)
        self.bn_a = nn.BatchNorm2d(cout)
        self.relu_a = QuantReLU(bit_width=4)
        self.conv_b = QuantConv2d(cout, cout, 3, padding=1, bias=False, weight_bit_width=4)
        self.bn_b = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                QuantConv2d(cin, cout, 1, stride=stride, bias=False, weight_bit_width=4), nn.BatchNorm2d(cout)
            )
        self.res_quant = QuantIdentity(bit_width=5, return_quant_tensor=True)
        self.skip_quant = self.res_quant if shared else QuantIdentity(bit_width=5, return_quant_tensor=True)
        self.relu_out = QuantReLU(bit_width=4, return_quant_tensor=True)

    def forward(self, x):
        y = self.res_quant(self.bn_b(self.conv_b(self.relu_a(self.bn_a(self.conv_a(x))))))
        s = self.skip_quant(x if self.down is None else self.down(x))
        return self.relu_out(y + s)


class TinyResNet(nn.Module):
    def __init__(self, shared=True, requant=True):
        super().__init__()
        self.inp = QuantIdentity(bit_width=8, return_quant_tensor=True)
        self.stem = nn.Sequential(
            QuantConv2d(1, 8, 3, padding=1, bias=False, weight_bit_width=4),
            nn.BatchNorm2d(8),
            QuantReLU(bit_width=4, return_quant_tensor=True),
        )
        self.layer1 = Block(8, 8, 1, shared)
        self.layer2 = Block(8, 16, 2, shared)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pool_quant = QuantIdentity(bit_width=8, return_quant_tensor=True) if requant else None
        self.fc = QuantLinear(16, 10, bias=False, weight_bit_width=4)

    def forward(self, x):
        x = torch.flatten(self.pool(self.layer2(self.layer1(self.stem(self.inp(x))))), 1)
        return self.fc(x if self.pool_quant is None else self.pool_quant(x))


def tiny_resnet(shared: bool = True, requant: bool = True):
    return TinyResNet(shared, requant)
"""


@pytest.fixture
def residual_module(tmp_path, monkeypatch):
    name = f"myres_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(RESIDUAL_MODEL)
    monkeypatch.syspath_prepend(str(folder))
    yield name
    sys.modules.pop(name, None)


def _residual(name: str, exits: tuple[str, ...], shared: bool = True, requant: bool = True) -> ModelConfig:
    return ModelConfig(
        backbone="custom",
        factory=f"{name}:tiny_resnet",
        factory_args=FrozenMap({"shared": shared, "requant": requant}),
        exits=exits,
        classifier="fc",
    )


def test_a_users_residual_network_exports_stage_by_stage_bit_exactly(tmp_path, residual_module):
    from exitflow.quant.export import run_stages

    from .conftest import randomise_batch_norm

    torch.manual_seed(0)
    model = build_model(_residual(residual_module, ("stem.2", "layer1.relu_out")), (1, 8, 8), 10)
    randomise_batch_norm(model)
    model.eval()
    x = torch.rand(20, 1, 8, 8)
    manifest = export_stages(model, ["stem.2", "layer1.relu_out"], tmp_path / "stages", x[:1])
    assert manifest.exits == ("stem.2", "layer1.relu_out", "fc")
    with torch.no_grad():
        expected = [o.int().numpy() for o in model(x)]
    produced = run_stages(tmp_path / "stages", x.numpy())
    for exit_name, want, got in zip(manifest.exits, expected, produced, strict=True):
        assert np.array_equal(want, got), f"exit {exit_name}: exported stages differ from Brevitas"
    assert len(np.unique(produced[-1])) > 10


def test_a_residual_add_with_two_quantisers_names_them(tmp_path, residual_module):
    model = build_model(_residual(residual_module, ("layer1.relu_out",), shared=False), (1, 8, 8), 10)
    with pytest.raises(ConfigError) as err:
        export_stages(model, ["layer1.relu_out"], tmp_path / "stages", torch.zeros(1, 1, 8, 8))
    assert str(err.value) == (
        "layer1: the skip connection (Add of two branches) needs one shared quantiser on both inputs, as FINN's "
        "residual blocks do, but its inputs come from layer1.res_quant and layer1.skip_quant; in Block.forward "
        "apply one QuantIdentity (the same module) to both branches before the add"
    )


UNMAPPED_MODEL = """
from torch import nn
from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear, QuantReLU


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = QuantIdentity(bit_width=8)
        self.conv = QuantConv2d(1, 8, 3, bias=False, weight_bit_width=4)
        self.act = QuantReLU(bit_width=4)
        self.gate = nn.Sigmoid()
        self.conv2 = QuantConv2d(8, 8, 3, bias=False, weight_bit_width=4)
        self.act2 = QuantReLU(bit_width=4)
        self.flat = nn.Flatten()
        self.fc = QuantLinear(8 * 4 * 4, 10, bias=False, weight_bit_width=4)

    def forward(self, x):
        x = self.act(self.conv(self.inp(x)))
        x = self.act2(self.conv2(x * self.gate(x)))
        return self.fc(self.flat(x))


def make():
    return Net()
"""


def test_a_layer_exitflow_cannot_map_is_named_with_what_is_supported(tmp_path, monkeypatch):
    name = f"unmapped_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(UNMAPPED_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = ModelConfig(backbone="custom", factory=f"{name}:make", exits=("act",), classifier="fc")
    model = build_model(config, (1, 8, 8), 10)
    with pytest.raises(ConfigError) as err:
        export_stages(model, ["act"], tmp_path / "stages", torch.zeros(1, 1, 8, 8))
    sys.modules.pop(name, None)
    assert str(err.value) == (
        "gate: layer type Sigmoid (Sigmoid) cannot be mapped to hardware; exitflow maps quantised convolutions "
        "(dense and depthwise) and linear layers, batch norm, ReLU and activation quantisers, max pooling, global "
        "average pooling, flatten, scalar scaling and residual adds"
    )
    assert not (tmp_path / "stages").exists()


def test_a_classifier_reading_an_average_pool_directly_is_refused(residual_module):
    with pytest.raises(ConfigError) as err:
        build_model(_residual(residual_module, ("layer1.relu_out",), requant=False), (1, 8, 8), 10)
    assert str(err.value) == (
        "model.classifier: 'fc' does not read the output of an activation quantiser (something between "
        "'layer2.relu_out' and it, e.g. an average pool, changes the values); put a QuantIdentity right before 'fc'"
    )


def test_an_exit_inside_a_residual_block_is_refused(tmp_path, residual_module):
    model = build_model(_residual(residual_module, ("layer1.relu_a",)), (1, 8, 8), 10)
    with pytest.raises(ConfigError) as err:
        export_stages(model, ["layer1.relu_a"], tmp_path / "stages", torch.zeros(1, 1, 8, 8))
    assert str(err.value) == (
        "model.exits: the exit after 'layer1.relu_a' cuts through a branch (layer1.res_quant reads a tensor from "
        "before it); put exits where the whole feature map passes, e.g. after a residual block's output quantiser"
    )


def test_concatenation_in_the_backbones_forward(tmp_path, user_module):
    name, _ = user_module
    model = build_model(custom(name, exits=("block0.act",), concat=True), (1, 8, 8), 10)
    with pytest.raises(ConfigError) as err:
        export_stages(model, ["block0.act"], tmp_path / "stages", torch.zeros(1, 1, 8, 8))
    assert str(err.value).startswith("the backbone: the join (Concat of two branches) is not supported")
    assert "remove the branch from Net.forward" in str(err.value)


def test_a_chain_exports(tmp_path, user_module):
    name, _ = user_module
    model = build_model(custom(name, exits=("block0.act",)), (1, 8, 8), 10)
    manifest = to_data(export_stages(model, ["block0.act"], tmp_path / "stages", torch.zeros(1, 1, 8, 8)))
    assert manifest["exits"] == ["block0.act", "fc"]


def test_unquantised_conv_is_named_when_the_model_is_built(user_module):
    name, _ = user_module
    with pytest.raises(ConfigError) as err:
        build_model(custom(name, exits=("block0.act",), plain=True), (1, 8, 8), 10)
    assert str(err.value) == (
        "model.factory: 'block1.conv' is a torch Conv2d, not quantised: the hardware has only "
        "quantised weight layers; make it a brevitas.nn.QuantConv2d"
    )


# ---------------------------------------------------------------------------- 4. stages without hardware


@pytest.mark.parametrize(
    "exits, message",
    [
        (("act2",), "no weight layer (QuantConv2d or QuantLinear) between the exit 'act2' and the classifier 'fc'"),
        (
            ("block1.act", "mid"),
            "no weight layer (QuantConv2d or QuantLinear) between the exits 'block1.act' and 'mid'",
        ),
        (("inp",), "no weight layer (QuantConv2d or QuantLinear) before the first exit 'inp'"),
    ],
)
def test_exit_that_leaves_a_stage_without_hardware(tmp_path, user_module, exits, message):
    name, _ = user_module
    with pytest.raises(ConfigError) as err:
        build_model(custom(name, exits=exits), (1, 8, 8), 10)
    assert str(err.value).startswith(f"model.exits: {message}, so that stage would have no hardware")
    config = RunConfig(data=DataSpec(name="digits"), model=custom(name, exits=exits), train=TrainConfig(epochs=1))
    with pytest.raises(ConfigError, match="so that stage would have no hardware"):  # before any training
        train(config, tmp_path / "run", **QUIET)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- 5. checkpoints name nothing that runs


RECORDER = """
import pathlib
pathlib.Path({log!r}).open("a").write("imported\\n")


def make(**kw):
    pathlib.Path({log!r}).open("a").write("called\\n")
    raise SystemExit("a checkpoint's factory ran")
"""


def _forge(source_run, folder, model_section):
    """``folder/model.pt``: ``source_run``'s checkpoint whose stored config names ``model_section``."""
    data = ckpt.load(source_run)
    config = to_data(ckpt.run_config(data))
    config["model"] = model_section
    payload = {k: v for k, v in data.items() if k not in ("format", "version", "path")}
    payload["config"] = config
    folder.mkdir(parents=True, exist_ok=True)
    ckpt.save(folder / "model.pt", payload)
    return folder


@pytest.mark.parametrize("beside", ["none", "honest"])
def test_checkpoint_naming_os_system_is_refused(tmp_path, digits_run, beside):
    marker = tmp_path / "pwned"
    evil = {
        "backbone": "custom",
        "factory": "os:system",
        "factory_args": {"command": f"touch {marker}"},
        "exits": ["conv0"],
        "classifier": "fc",
    }
    folder = _forge(digits_run, tmp_path / "forged", evil)
    if beside == "honest":
        (folder / "config.yaml").write_text((digits_run / "config.yaml").read_text())
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_model(folder)
    message = str(err.value)
    assert not marker.exists()
    assert "\n" not in message and message.startswith(str(folder / "model.pt"))
    if beside == "none":
        assert "no config.yaml beside it" in message
    else:
        assert "its stored config has model.backbone = 'custom' but" in message and "config.yaml has 'lenet'" in message


def test_checkpoint_naming_a_module_never_imports_it(tmp_path, digits_run, user_module):
    name, src = user_module
    log = tmp_path / "recorder.log"
    recorder = f"recorder_{uuid.uuid4().hex[:8]}"
    (src / f"{recorder}.py").write_text(RECORDER.format(log=str(log)))
    honest = RunConfig(data=DataSpec(name="digits"), model=custom(name), train=TrainConfig(epochs=1))
    forged = to_data(honest.model)
    forged["factory"] = f"{recorder}:make"
    folder = _forge(digits_run, tmp_path / "forged", forged)
    with pytest.raises(ckpt.CheckpointError, match="no config.yaml beside it"):  # nothing to trust beside it
        ckpt.load_model(folder)
    with pytest.raises(
        ckpt.CheckpointError, match=rf"stored config has model.factory = '{recorder}:make' but the given"
    ):
        ckpt.load_model(folder, config=honest)
    (folder / "config.yaml").write_text(dump_yaml(honest))
    with pytest.raises(
        ckpt.CheckpointError, match=rf"stored config has model.factory = '{recorder}:make' but .*config.yaml"
    ):
        ckpt.load_model(folder)
    assert not log.exists() and recorder not in sys.modules


def test_config_passed_explicitly_must_match(tmp_path, digits_run):
    config = ckpt.run_config(ckpt.load(digits_run))
    loaded, _, _ = ckpt.load_model(digits_run, config=config)
    assert loaded == config
    import dataclasses

    other = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=config.train.epochs + 1))
    with pytest.raises(ckpt.CheckpointError, match=r"stored config has train.epochs = 6 but the given config has 7"):
        ckpt.load_model(digits_run, config=other)


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "pickled code"])
def test_damaged_checkpoint_is_one_line_without_torchs_advice(tmp_path, digits_run, damage, exitflow_cmd):
    run = tmp_path / "run"
    run.mkdir()
    raw = (digits_run / "model.pt").read_bytes()
    if damage == "truncated":
        (run / "model.pt").write_bytes(raw[: len(raw) // 2])
    elif damage == "empty":
        (run / "model.pt").write_bytes(b"")
    elif damage == "garbage":
        (run / "model.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    else:

        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {tmp_path / 'pwned'}",))

        torch.save({"format": "exitflow-checkpoint", "version": 1, "x": Evil()}, run / "model.pt")
    (run / "config.yaml").write_text((digits_run / "config.yaml").read_text())
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_model(run)
    message = str(err.value)
    assert message.startswith(f"{run / 'model.pt'}: corrupt or unreadable checkpoint")
    assert "weights_only" not in message and "\n" not in message and "\x1b" not in message
    if damage == "pickled code":
        assert "holds Python objects" in message
    result = subprocess.run([*exitflow_cmd, "profile", str(run)], capture_output=True, text=True)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "weights_only" not in result.stderr
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_resume_with_default_quantisers_matches_an_uninterrupted_run(tmp_path, user_module):
    name, _ = user_module
    # 26 batches an epoch: the quantisers are still collecting statistics (300 batches) when cut
    config = RunConfig(
        data=DataSpec(name="digits"),
        model=custom(name, exits=("block0.act", "mid")),
        train=TrainConfig(epochs=3, batch_size=48, seed=1),
    )
    train(config, tmp_path / "whole", **QUIET)

    def interrupt_after_first_epoch(line):
        if line.startswith("epoch 1/3"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "cut", log=interrupt_after_first_epoch)
    assert (tmp_path / "cut" / "checkpoint.pt").exists()
    assert train(config, tmp_path / "cut", **QUIET).epochs_run == 2
    whole = ckpt.load(tmp_path / "whole")["state_dict"]
    cut = ckpt.load(tmp_path / "cut")["state_dict"]
    assert any(k.endswith("scaling_impl.value") for k in whole)
    assert whole.keys() == cut.keys()
    assert all(torch.equal(whole[k], cut[k]) for k in whole), [k for k in whole if not torch.equal(whole[k], cut[k])][
        :3
    ]

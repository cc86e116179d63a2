"""quant/checkpoint.py: checkpoints are saved atomically and loaded with weights_only=True; a
missing, corrupt, truncated or foreign file, one that holds code, or one for another model is one
CheckpointError line, and nothing a checkpoint names is ever imported or called."""

import os
import pickle
import sys

import numpy as np
import pytest
import torch

from exitflow.core.data import DataSpec
from exitflow.core.errors import ExitflowError
from exitflow.core.schema import to_data, write_file
from exitflow.quant import checkpoint as ckpt
from exitflow.quant.config import ModelConfig, RunConfig, TrainConfig
from exitflow.quant.network import build_model

SHAPE = (1, 8, 8)


def _config(**train):
    return RunConfig(data=DataSpec(name="digits"), model=ModelConfig(), train=TrainConfig(**train))


def _trained_like(config, seed=0):
    """A lenet whose weights and quantiser scales are not the initial ones (a few forward passes
    in train mode and random weights), in eval mode."""
    torch.manual_seed(seed)
    model = build_model(config.model, SHAPE, 10)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.train()
    for _ in range(3):
        model(torch.rand(16, *SHAPE))
    return model.eval()


def _payload(config, model):
    return {
        "config": to_data(config),
        "state_dict": model.state_dict(),
        "input_shape": list(SHAPE),
        "num_classes": 10,
        "exit_names": model.exit_names,
    }


@pytest.fixture(scope="module")
def trained():
    config = _config(epochs=2, seed=3)
    return config, _trained_like(config)


@pytest.fixture
def run(tmp_path, trained):
    """A run folder as train leaves it: model.pt and config.yaml."""
    config, model = trained
    folder = tmp_path / "run"
    folder.mkdir()
    ckpt.save(folder / "model.pt", _payload(config, model))
    write_file(config, folder / "config.yaml")
    return folder, config, model


def _outputs(model, x):
    with torch.no_grad():
        out = model(x)
    return [getattr(o, "value", o).detach().numpy() for o in (out if isinstance(out, (list, tuple)) else [out])]


def test_save_and_load_model_round_trip_bit_exactly(run):
    folder, config, model = run
    data = ckpt.load(folder)  # a folder means its model.pt
    assert data["format"] == "exitflow-checkpoint" and data["version"] == 1
    assert data["path"] == str(folder / "model.pt")
    assert data["exit_names"] == model.exit_names
    loaded_config, loaded, _ = ckpt.load_model(folder)
    assert loaded_config == config
    assert not loaded.training
    x = torch.rand(32, *SHAPE, generator=torch.Generator().manual_seed(1))
    ours, theirs = _outputs(model, x), _outputs(loaded, x)
    assert len(ours) == len(theirs) == len(model.exit_names)
    for a, b in zip(ours, theirs, strict=True):
        assert np.array_equal(a, b)
    assert {p.name for p in folder.iterdir()} == {"model.pt", "config.yaml"}  # no temporary file left behind


def test_a_fresh_model_differs_from_the_loaded_one(run):
    """The round trip above means something: an untrained lenet computes something else."""
    folder, config, model = run
    fresh = build_model(config.model, SHAPE, 10).eval()
    x = torch.rand(32, *SHAPE, generator=torch.Generator().manual_seed(1))
    assert not np.array_equal(_outputs(model, x)[-1], _outputs(fresh, x)[-1])


def test_missing_checkpoint(tmp_path):
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(ckpt.CheckpointError, match=r"empty_run/model\.pt: checkpoint not found$"):
        ckpt.load(tmp_path / "empty_run")
    with pytest.raises(ckpt.CheckpointError, match=r"nope\.pt: checkpoint not found$"):
        ckpt.load(tmp_path / "nope.pt")
    assert issubclass(ckpt.CheckpointError, ExitflowError)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda raw: b"", "the file is empty or truncated"),
        (lambda raw: raw[:100], "not a complete torch archive: truncated or damaged"),
        (lambda raw: raw[: len(raw) // 2], "not a complete torch archive: truncated or damaged"),
        (lambda raw: raw[:-10], "not a complete torch archive: truncated or damaged"),
        (lambda raw: os.urandom(64), ""),
        (lambda raw: b"\x80\x02garbage that is not a pickle", ""),
    ],
    ids=["empty", "truncated-head", "truncated-half", "truncated-tail", "random", "bad-pickle"],
)
def test_corrupt_or_truncated_files_are_refused(run, damage, reason):
    folder, _, _ = run
    path = folder / "model.pt"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load(path)
    text = str(err.value)
    assert text.startswith(f"{path}: corrupt or unreadable checkpoint (")
    assert text.endswith("train it again or point at the run folder's own model.pt")
    assert reason in text
    assert "weights_only=False" not in text and "\n" not in text


@pytest.mark.parametrize(
    "content, message",
    [
        ({"state_dict": {}}, "not an exitflow checkpoint (written by something else)"),
        ([1, 2, 3], "not an exitflow checkpoint (written by something else)"),
        ({"format": "other", "version": 1}, "not an exitflow checkpoint (written by something else)"),
        ({"format": "exitflow-checkpoint", "version": 2}, "checkpoint version 2 is not supported (expected 1)"),
        ({"format": "exitflow-checkpoint"}, "checkpoint version None is not supported (expected 1)"),
    ],
)
def test_files_of_another_kind_are_refused(tmp_path, content, message):
    path = tmp_path / "model.pt"
    torch.save(content, path)
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load(path)
    assert str(err.value) == f"{path}: {message}"


class _RunsCode:
    """Unpickling this calls ``exec`` with a statement that writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_a_pickle_that_would_run_code_is_refused_and_the_code_does_not_run(tmp_path):
    marker = tmp_path / "ran.txt"
    # the payload really runs code when unpickled without weights_only (the test means something)
    pickle.loads(pickle.dumps(_RunsCode(tmp_path / "control.txt")))
    assert (tmp_path / "control.txt").read_text() == "ran"
    for name, write in [
        ("zip.pt", lambda p: torch.save({"format": "exitflow-checkpoint", "version": 1, "x": _RunsCode(marker)}, p)),
        (
            "legacy.pt",
            lambda p: p.write_bytes(
                pickle.dumps({"format": "exitflow-checkpoint", "x": _RunsCode(marker)}, protocol=2)
            ),
        ),
    ]:
        path = tmp_path / name
        write(path)
        with pytest.raises(ckpt.CheckpointError) as err:
            ckpt.load(path)
        assert str(err.value) == (
            f"{path}: corrupt or unreadable checkpoint (it holds Python objects, not only tensors and plain "
            "data; exitflow never loads code from a checkpoint); train it again or point at the run folder's "
            "own model.pt"
        )
        assert not marker.exists()


def test_an_object_of_a_class_is_refused_too(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"format": "exitflow-checkpoint", "version": 1, "config": _config()}, path)  # a dataclass
    with pytest.raises(ckpt.CheckpointError, match=r"it holds Python objects, not only tensors and plain data"):
        ckpt.load(path)


def test_load_uses_weights_only(run, monkeypatch):
    folder, _, _ = run
    seen = {}
    real = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    ckpt.load(folder)
    assert seen.get("weights_only") is True and seen.get("map_location") == "cpu"


def test_stored_config_that_differs_from_config_yaml_is_refused(run):
    folder, config, _ = run
    write_file(_config(epochs=5, seed=3), folder / "config.yaml")
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_model(folder)
    assert str(err.value) == (
        f"{folder / 'model.pt'}: its stored config has train.epochs = 2 but {folder / 'config.yaml'} has 5; the "
        "checkpoint was not trained with this config (use the config it was trained with, or train again)"
    )
    # a config passed in wins over the folder's, and is compared the same way
    config_back, _, _ = ckpt.load_model(folder, config=config)
    assert config_back == config
    with pytest.raises(ckpt.CheckpointError, match=r"train\.seed = 3 but the given config has 4"):
        ckpt.load_model(folder, config=_config(epochs=2, seed=4))


def test_without_config_yaml_a_builtin_backbone_is_built_from_the_stored_config(run):
    folder, config, _ = run
    (folder / "config.yaml").unlink()
    assert ckpt.load_model(folder)[0] == config


def test_a_custom_factory_named_only_in_the_checkpoint_is_never_imported(tmp_path, monkeypatch):
    """A checkpoint names a factory in a module that would write a marker on import: without a
    config beside it, the checkpoint is refused and the module is not imported."""
    marker = tmp_path / "imported.txt"
    (tmp_path / "evil_factory_h1.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\ndef make():\n    raise SystemExit('called')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = RunConfig(
        data=DataSpec(name="digits"),
        model=ModelConfig(backbone="custom", factory="evil_factory_h1:make", exits=("a",), classifier="fc"),
    )
    path = tmp_path / "run" / "model.pt"
    path.parent.mkdir()
    ckpt.save(path, {"config": to_data(config), "state_dict": {}, "input_shape": list(SHAPE), "num_classes": 10})
    with pytest.raises(
        ckpt.CheckpointError, match=r"no config\.yaml beside it, and a custom backbone's model\.factory"
    ):
        ckpt.load_model(path)
    assert not marker.exists() and "evil_factory_h1" not in sys.modules


def test_a_stored_config_that_is_not_a_run_config_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    ckpt.save(path, {"config": {"model": {"backbone": "resnet"}}, "state_dict": {}})
    with pytest.raises(ckpt.CheckpointError, match=r"model\.pt \(config\): model\.backbone: must be one of"):
        ckpt.load_model(path)
    ckpt.save(path, {"state_dict": {}})
    with pytest.raises(
        ckpt.CheckpointError, match=r"model\.pt \(config\): must be a mapping with keys data, model, train"
    ):
        ckpt.run_config(ckpt.load(path))


def test_a_checkpoint_for_another_architecture_is_refused(run):
    folder, config, model = run
    state = dict(model.state_dict())
    key = next(k for k in state if k.endswith("weight") and state[k].dim() > 1)
    fresh = build_model(config.model, SHAPE, 10)
    missing = {k: v for k, v in state.items() if k != key}
    with pytest.raises(
        ckpt.CheckpointError, match=rf"^ck\.pt: checkpoint is for a different architecture: it lacks {key}$"
    ):
        ckpt.load_state(fresh, missing, "ck.pt")
    wrong = {**state, key: torch.zeros(3, 3)}
    with pytest.raises(
        ckpt.CheckpointError,
        match=rf"^ck\.pt: checkpoint is for a different architecture: it has {key} of shape \(3, 3\), the model ",
    ):
        ckpt.load_state(fresh, wrong, "ck.pt")
    # a model with 7 classes: the classifier's shape tells
    other = build_model(config.model, SHAPE, 7)
    with pytest.raises(ckpt.CheckpointError, match=r"checkpoint is for a different architecture: it has .* of shape"):
        ckpt.load_state(other, state, "ck.pt")


def test_load_state_with_prefixes_loads_only_those_keys(run):
    folder, config, model = run
    state = model.state_dict()
    prefix = next(iter(state)).split(".")[0] + "."
    fresh = build_model(config.model, SHAPE, 10)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    only = {k: v for k, v in state.items() if k.startswith(prefix)}  # the rest need not be there
    ckpt.load_state(fresh, only, "ck.pt", prefixes=(prefix,))
    after = fresh.state_dict()
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert changed and all(k.startswith(prefix) for k in changed)
    for k in only:
        assert torch.equal(after[k], state[k])


def test_quantiser_stats_survive_a_restore():
    """Loading the scale of a stats-initialised quantiser ends its statistics collection;
    restore_quantiser_stats puts the collection back where it was."""
    from brevitas.nn import QuantIdentity, QuantLinear, QuantReLU

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(QuantIdentity(bit_width=4), QuantLinear(8, 8, bias=True), QuantReLU(bit_width=4))

    model = net().train()
    model(torch.rand(8, 8))  # one batch of statistics collected
    stats = ckpt.quantiser_stats(model)
    assert len(stats) == 2 and all(s["counter"] == 1 for s in stats.values())
    other = net().train()
    ckpt.load_state(other, model.state_dict(), "ck.pt")
    ended = ckpt.quantiser_stats(other)
    assert all(s["counter"] != 1 for s in ended.values())  # loading the scale ended the collection
    ckpt.restore_quantiser_stats(other, stats)
    again = ckpt.quantiser_stats(other)
    assert set(again) == set(stats)
    for name, s in stats.items():
        assert again[name]["counter"] == s["counter"]
        assert torch.equal(again[name]["buffer"], s["buffer"]) and torch.equal(again[name]["value"], s["value"])
    x = torch.rand(4, 8)
    model(x), other(x)  # both collect a second batch the same way
    assert all(
        torch.equal(a["buffer"], b["buffer"])
        for a, b in zip(ckpt.quantiser_stats(model).values(), ckpt.quantiser_stats(other).values(), strict=True)
    )

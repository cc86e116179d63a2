"""Training: files written, resume loses nothing, exits-only keeps the final exit bit-identical,
self-distillation, and refusing to overwrite or to load the wrong checkpoint."""

import json

import numpy as np
import pytest
import torch

from exitflow.core.data import DataSpec, load_splits
from exitflow.core.errors import ConfigError, ExitflowError
from exitflow.core.schema import dump_yaml, from_data
from exitflow.quant import checkpoint as ckpt
from exitflow.quant.config import ModelConfig, RunConfig, TrainConfig
from exitflow.quant.train import to_input, train

QUIET = {"log": lambda line: None}


def _config(**train):
    return RunConfig(
        data=DataSpec(name="digits"), model=ModelConfig(), train=TrainConfig(**{"epochs": 6, "seed": 1, **train})
    )


def test_run_folder_contents(digits_run):
    names = {p.name for p in digits_run.iterdir()}  # other tests add profile and stage files
    assert {"config.yaml", "model.pt", "train_log.json"} <= names and "checkpoint.pt" not in names
    config = from_data(RunConfig, __import__("yaml").safe_load((digits_run / "config.yaml").read_text()))
    assert config == _config()
    log = json.loads((digits_run / "train_log.json").read_text())
    assert log["exits"] == ["conv0", "conv1", "fc0", "fc1"]
    assert [e["epoch"] for e in log["epochs"]] == [1, 2, 3, 4, 5, 6]
    for epoch in log["epochs"]:
        assert set(epoch["loss"]) == set(epoch["val_accuracy"]) == set(log["exits"])
    assert log["epochs"][-1]["val_accuracy"]["fc1"] > 0.85  # it learns, even in six short epochs


def test_same_config_again_is_a_no_op(digits_run):
    before = (digits_run / "model.pt").stat().st_mtime_ns
    result = train(_config(), digits_run, **QUIET)
    assert result.epochs_run == 0
    assert (digits_run / "model.pt").stat().st_mtime_ns == before


def test_other_config_in_the_same_folder_is_refused(digits_run):
    before = (digits_run / "config.yaml").read_text()
    with pytest.raises(ExitflowError, match="already holds a run with a different config"):
        train(_config(lr=0.5), digits_run, **QUIET)
    assert (digits_run / "config.yaml").read_text() == before


def test_resume_after_interrupt_matches_an_uninterrupted_run(tmp_path):
    config = _config(epochs=3)
    train(config, tmp_path / "whole", **QUIET)

    def interrupt_after_first_epoch(line):
        if line.startswith("epoch 1/3"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "cut", log=interrupt_after_first_epoch)
    assert (tmp_path / "cut" / "checkpoint.pt").exists() and not (tmp_path / "cut" / "model.pt").exists()
    lines = []
    result = train(config, tmp_path / "cut", log=lines.append)
    assert result.epochs_run == 2 and lines[0] == f"resuming {tmp_path / 'cut'} after epoch 1/3"
    whole = ckpt.load(tmp_path / "whole")["state_dict"]
    cut = ckpt.load(tmp_path / "cut")["state_dict"]
    assert whole.keys() == cut.keys()
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
    assert not (tmp_path / "cut" / "checkpoint.pt").exists()


def _final_logits(run):
    config, model, _ = ckpt.load_model(run)
    test = load_splits(config.data).test
    with torch.no_grad():
        outs = model(to_input(test.x))
    return [o.int().numpy() for o in outs]


def test_exits_only_keeps_the_final_exit_bit_identical(digits_run, tmp_path):
    config = _config(mode="exits_only", backbone_from=str(digits_run), lr=0.05)
    train(config, tmp_path / "exits", **QUIET)
    before, after = _final_logits(digits_run), _final_logits(tmp_path / "exits")
    assert np.array_equal(before[-1], after[-1])  # final exit unchanged, bit for bit
    assert not np.array_equal(before[0], after[0])  # the early heads did learn
    old, new = ckpt.load(digits_run)["state_dict"], ckpt.load(tmp_path / "exits")["state_dict"]
    frozen = [k for k in old if k.startswith(("blocks.", "input_quant.", "heads.fc1."))]
    assert frozen and all(torch.equal(old[k], new[k]) for k in frozen)
    log = json.loads((tmp_path / "exits" / "train_log.json").read_text())
    assert set(log["epochs"][0]["loss"]) == {"conv0", "conv1", "fc0"}


def test_exits_only_refuses_another_architecture(digits_run, tmp_path):
    config = RunConfig(
        data=DataSpec(name="digits"),
        model=ModelConfig(preset="w2a2"),
        train=TrainConfig(mode="exits_only", backbone_from=str(digits_run)),
    )
    with pytest.raises(ckpt.CheckpointError, match="backbone checkpoint has model.preset = 'w4a4', this config 'w2a2'"):
        train(config, tmp_path / "x", **QUIET)


def test_distillation_trains_every_exit(tmp_path):
    result = train(_config(mode="distill", temperature=2.0, alpha=0.7), tmp_path / "kd", **QUIET)
    assert result.epochs_run == 6 and set(result.val_accuracy) == {"conv0", "conv1", "fc0", "fc1"}
    assert min(result.val_accuracy.values()) > 0.3


def test_exit_weights_must_match_the_exits(tmp_path):
    with pytest.raises(ConfigError, match=r"train.exit_weights: 2 weights for 4 exits \(conv0, conv1, fc0, fc1\)"):
        train(_config(exit_weights=(1.0, 2.0)), tmp_path / "w", **QUIET)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "corrupt or unreadable checkpoint"),
        (b"\x80\x04garbage", "corrupt or unreadable checkpoint"),
    ],
)
def test_corrupt_checkpoint(tmp_path, content, message):
    (tmp_path / "model.pt").write_bytes(content)
    with pytest.raises(ckpt.CheckpointError, match=message):
        ckpt.load_model(tmp_path)


def test_foreign_checkpoint_and_wrong_architecture(tmp_path, digits_run):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "model.pt")
    with pytest.raises(ckpt.CheckpointError, match="not an exitflow checkpoint"):
        ckpt.load_model(tmp_path)
    data = ckpt.load(digits_run)
    data["state_dict"] = {k: v for k, v in data["state_dict"].items() if not k.startswith("blocks.fc0")}
    del data["path"]
    ckpt.save(tmp_path / "model.pt", {k: v for k, v in data.items() if k not in ("format", "version")})
    with pytest.raises(ckpt.CheckpointError, match="checkpoint is for a different architecture: it lacks blocks.fc0"):
        ckpt.load_model(tmp_path)


def test_checkpoint_never_unpickles_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": "exitflow-checkpoint", "version": 1, "x": Evil()}, tmp_path / "model.pt")
    with pytest.raises(ckpt.CheckpointError, match="corrupt or unreadable checkpoint"):
        ckpt.load(tmp_path / "model.pt")


@pytest.mark.parametrize(
    "data, message",
    [
        ({"mode": "exits_only"}, "train.backbone_from: mode exits_only needs the trained backbone"),
        ({"backbone_from": "x"}, "train.backbone_from: is only used with mode exits_only"),
        ({"alpha": 2}, "train.alpha: must be in [0, 1]; got 2.0"),
        ({"epochs": 0}, "train.epochs: must be >= 1; got 0"),
        ({"mode": "fast"}, "train.mode: must be one of 'end_to_end', 'exits_only', 'distill'"),
        ({"lr": "big"}, "train.lr: must be a number; got 'big' (str)"),
    ],
)
def test_train_config_errors(data, message):
    with pytest.raises(ConfigError) as err:
        from_data(RunConfig, {"train": data}, source="run.yaml")
    assert message in str(err.value)


def test_resolved_config_round_trips():
    config = _config(mode="distill")
    assert from_data(RunConfig, __import__("yaml").safe_load(dump_yaml(config))) == config

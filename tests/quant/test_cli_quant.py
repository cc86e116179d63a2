"""`exitflow train`, `profile` and `export` from the command line, and their bad inputs."""

import subprocess

import pytest

CONFIG = """\
data: {name: digits, seed: 0}
model: {backbone: lenet, preset: w4a4, exits: [conv0, fc0]}
train: {epochs: 3, seed: 2}
"""


def run(cmd, *args):
    return subprocess.run([*cmd, *args], capture_output=True, text=True)


@pytest.mark.slow
def test_train_profile_export(tmp_path, exitflow_cmd):
    (tmp_path / "run.yaml").write_text(CONFIG)
    out = tmp_path / "out"
    result = run(exitflow_cmd, "train", str(tmp_path / "run.yaml"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "epoch 3/3" in result.stdout and f"trained {out}/model.pt" in result.stdout
    assert {p.name for p in out.iterdir() if not p.name.startswith(".")} == {
        "model.pt",
        "config.yaml",
        "train_log.json",
    }
    result = run(exitflow_cmd, "profile", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "profile.npz").exists() and "test accuracy: conv0" in result.stdout
    result = run(exitflow_cmd, "export", str(out), "--exits", "conv0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("exported exits conv0, fc1")
    assert sorted(p.name for p in (out / "stages").iterdir()) == [
        "head0.onnx",
        "head1.onnx",
        "manifest.json",
        "stage0.onnx",
        "stage1.onnx",
    ]


@pytest.mark.parametrize(
    "config, message",
    [
        (
            "model: {exits: [conv7]}\ntrain: {epochs: 1}\ndata: {name: digits}\n",
            "model.exits: no block named 'conv7' in lenet",
        ),
        ("model: {preset: w16a16}\n", "model.preset: must be one of 'w1a1', 'w2a2', 'w4a4', 'w8a8'"),
        ("model: {block_bits: {conv0: {act: 12}}}\n", "model.block_bits.conv0.act: unsupported bit width 12"),
        ("data: {name: digits}\nmodel: {backbone: cnv}\n", "cnv takes 3x32x32 images but the data is 1x8x8"),
        ("data: {name: digits}\nmodle: {}\n", "modle: unknown key; allowed keys here: data, model, train"),
        ("data: [1, 2\n", "malformed YAML: line"),
    ],
)
def test_bad_train_config_is_one_line_exit_2(tmp_path, exitflow_cmd, config, message):
    (tmp_path / "run.yaml").write_text(config)
    result = run(exitflow_cmd, "train", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert message in result.stderr
    assert not (tmp_path / "out" / "model.pt").exists()


def test_corrupt_checkpoint_is_one_line_exit_2(tmp_path, exitflow_cmd):
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    result = run(exitflow_cmd, "profile", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.startswith("exitflow profile: error: ") and "corrupt or unreadable checkpoint" in result.stderr
    assert result.stderr.count("\n") == 1
    assert (tmp_path / "model.pt").read_bytes() == b"not a checkpoint"


def test_export_unknown_exit(digits_run, exitflow_cmd):
    result = run(exitflow_cmd, "export", str(digits_run), "--exits", "conv0,nope")
    assert result.returncode == 2
    assert "exits: 'nope' is not a candidate exit of this model" in result.stderr

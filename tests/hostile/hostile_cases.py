"""The table of hostile-user cases: what a user types, in what folder, and what must follow.

A case is one ``exitflow`` command run in a fresh working folder (``cwd``) prepared by its
``setup`` (which may copy the session's trained run to ``cwd/run``: ``trained=True``), with
relative paths as a user types them. Unless ``code`` says otherwise the command must exit 2 with
one line on stderr, no traceback, and leave every file as it was (``may_write``: the glob
patterns, relative to ``cwd``, of files it may write or change; ``new_ok``: it may create files).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    setup: Callable[[Path], None] | None = None
    trained: bool = False  # copy the session's trained run to cwd/run first
    code: int = 2
    may_write: tuple[str, ...] = ()
    new_ok: bool = False
    stderr_has: tuple[str, ...] = ()  # substrings the error line must hold (case-insensitive)
    env: dict = field(default_factory=dict)
    check: Callable[[Path, object], None] | None = None  # more assertions on (cwd, result)
    where: str = "run"  # where the trained run is copied, relative to cwd


CASES: list[Case] = []

# The config of the session's trained run (written as cwd/hostile.yaml beside every copy of it).
TRAINED_CONFIG = """\
# lenet on digits for 2 epochs: the shared trained run of the hostile-user suite
data: {name: digits}
model: {backbone: lenet, preset: w4a4, exits: [conv1, fc0]}
train: {epochs: 2, seed: 1}
"""


def case(id: str, *args: str, **kw) -> None:
    CASES.append(Case(id, tuple(args), **kw))


# ---------------------------------------------------------------------------- helpers for setups


def write(rel: str, content: str | bytes) -> Callable[[Path], None]:
    def setup(cwd: Path) -> None:
        path = cwd / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")

    return setup


def both(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(cwd: Path) -> None:
        for s in setups:
            s(cwd)

    return setup


def edit_yaml(rel: str, change: Callable[[dict], object]) -> Callable[[Path], None]:
    def setup(cwd: Path) -> None:
        path = cwd / rel
        data = yaml.safe_load(path.read_text())
        out = change(data)
        path.write_text(yaml.safe_dump(data if out is None else out, sort_keys=False))

    return setup


def design_from_run(change: Callable[[dict], object], rel: str = "d.yaml") -> Callable[[Path], None]:
    """A design file ``rel`` in cwd: the trained run's chosen design, changed."""

    def setup(cwd: Path) -> None:
        data = yaml.safe_load((cwd / "run" / "sweep" / "design.yaml").read_text())
        out = change(data)
        (cwd / rel).parent.mkdir(parents=True, exist_ok=True)
        (cwd / rel).write_text(yaml.safe_dump(data if out is None else out, sort_keys=False))

    return setup


def truncate(rel: str, keep: float = 0.5) -> Callable[[Path], None]:
    def setup(cwd: Path) -> None:
        path = cwd / rel
        raw = path.read_bytes()
        path.write_bytes(raw[: int(len(raw) * keep)])

    return setup


def remove(rel: str) -> Callable[[Path], None]:
    def setup(cwd: Path) -> None:
        path = cwd / rel
        if path.is_dir():
            import shutil

            shutil.rmtree(path)
        else:
            path.unlink()

    return setup


def random_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def idx_bytes(data: np.ndarray) -> bytes:
    return (
        struct.pack(">HBB", 0, 8, data.ndim)
        + struct.pack(f">{data.ndim}I", *data.shape)
        + data.astype(np.uint8).tobytes()
    )


def cfg(
    data: str = "{name: digits}", model: str = "{backbone: lenet}", train: str = "{epochs: 1}", extra: str = ""
) -> str:
    return f"data: {data}\nmodel: {model}\ntrain: {train}\n{extra}"


def stage_fold(stage: int, layer: str, **values) -> Callable[[dict], None]:
    def change(d: dict) -> None:
        d["stages"][stage].setdefault("folding", {}).setdefault(layer, {}).update(values)

    return change


def set_key(path: str, value) -> Callable[[dict], None]:
    keys = path.split(".")

    def change(d: dict) -> None:
        node = d
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        last = keys[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return change


def make_checkpoint(rel: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    """Rewrite the checkpoint ``rel`` (torch, weights only) with ``change`` applied to its dict."""

    def setup(cwd: Path) -> None:
        import torch

        path = cwd / rel
        data = torch.load(path, map_location="cpu", weights_only=True)
        change(data)
        torch.save(data, path)

    return setup


def not_created(rel: str) -> Callable[[Path, object], None]:
    def check(cwd: Path, done) -> None:
        assert not (cwd / rel).exists(), f"{rel} was created: a name inside a file was called"

    return check


GOOD_DIGITS = np.random.default_rng(1).integers(0, 256, (60, 1, 8, 8), dtype=np.uint8)
GOOD_LABELS = np.arange(60) % 10

# ---------------------------------------------------------------------------- configs (train / run)

TRAIN = ("train", "c.yaml", "--out", "out")
for cid, text in [
    ("malformed-flow", "data: {name: digits\n"),
    ("malformed-indent", "data:\n  name: digits\n   seed: 1\n"),
    ("malformed-tab", "data:\n\tname: digits\n"),
    ("unclosed-quote", 'data: {name: "digits}\n'),
    ("duplicate-top-key", "data: {name: digits}\ndata: {name: mnist5k}\n"),
    ("duplicate-nested-key", "model: {backbone: lenet, backbone: cnv}\n"),
    ("duplicate-train-key", "train:\n  epochs: 1\n  epochs: 2\n"),
    ("top-level-list", "- data\n- model\n"),
    ("top-level-scalar", "just a string\n"),
    ("unknown-top-key", cfg(extra="board: Pynq-Z2\n")),
    ("unknown-data-key", cfg(data="{name: digits, colour: red}")),
    ("unknown-model-key", cfg(model="{backbone: lenet, depth: 9}")),
    ("unknown-train-key", cfg(train="{epochs: 1, epoch: 2}")),
    ("unknown-dataset", cfg(data="{name: imagenet}")),
    ("unknown-backbone", cfg(model="{backbone: resnet50}")),
    ("unknown-preset", cfg(model="{backbone: lenet, preset: w3a3}")),
    ("exit-unknown-block", cfg(model="{backbone: lenet, exits: [conv9]}")),
    ("exit-is-final-block", cfg(model="{backbone: lenet, exits: [fc1]}")),
    ("block-bits-unknown-block", cfg(model="{backbone: lenet, block_bits: {conv7: {weight: 8}}}")),
    ("block-bits-bad-width", cfg(model="{backbone: lenet, block_bits: {conv0: {weight: 33}}}")),
    ("epochs-negative", cfg(train="{epochs: -1}")),
    ("epochs-zero", cfg(train="{epochs: 0}")),
    ("epochs-string", cfg(train="{epochs: many}")),
    ("epochs-float", cfg(train="{epochs: 1.5}")),
    ("lr-negative", cfg(train="{epochs: 1, lr: -0.1}")),
    ("batch-size-zero", cfg(train="{epochs: 1, batch_size: 0}")),
    (
        "exit-weights-wrong-length",
        cfg(model="{backbone: lenet, exits: [conv1]}", train="{epochs: 1, exit_weights: [1, 1, 1, 1, 1]}"),
    ),
    ("unknown-train-mode", cfg(train="{epochs: 1, mode: telepathy}")),
    ("exits-only-without-backbone", cfg(train="{epochs: 1, mode: exits_only}")),
    ("head-pool-zero", cfg(model="{backbone: lenet, head: {pool_to: 0}}")),
    ("builtin-data-with-path", cfg(data="{name: digits, path: somewhere}")),
    ("npz-without-path", cfg(data="{name: npz}")),
    ("val-fraction-one", cfg(data="{name: digits, val_fraction: 1.0}")),
    ("seed-string", cfg(data="{name: digits, seed: abc}")),
    ("cnv-on-8x8-digits", cfg(model="{backbone: cnv}")),
    ("custom-without-factory", cfg(model="{backbone: custom}")),
    ("custom-factory-not-importable", cfg(model="{backbone: custom, factory: 'no_such_module_xyz:make'}")),
    ("yaml-python-tag", "data: !!python/object/apply:os.system ['touch PWNED']\n"),
]:
    check = not_created("PWNED") if "python-tag" in cid else None
    case(f"config/{cid}", *TRAIN, setup=write("c.yaml", text), check=check)

case("config/not-utf8", *TRAIN, setup=write("c.yaml", b"data: {name: \xff\xfe digits}\n"))
case("config/binary-file", *TRAIN, setup=write("c.yaml", random_bytes(4096)))
case("config/oversized", *TRAIN, setup=write("c.yaml", "# padding\n" * 120_000 + cfg()))
case("config/missing-file", *TRAIN)
case("config/is-a-folder", *TRAIN, setup=write("c.yaml/inside.txt", "x"))
case("config/run-malformed", "run", "c.yaml", "--out", "out", setup=write("c.yaml", "data: [\n"))
case("config/run-duplicate-key", "run", "c.yaml", "--out", "out", setup=write("c.yaml", cfg() + "train: {epochs: 2}\n"))
case(
    "config/run-unknown-board",
    "run",
    "c.yaml",
    "--out",
    "out",
    "--board",
    "Pynq-Z9",
    setup=write("c.yaml", cfg()),
    stderr_has=("Pynq-Z9",),
)
case(
    "config/run-board-lowercase-typo",
    "run",
    "c.yaml",
    "--out",
    "out",
    "--board",
    "pynqz2",
    setup=write("c.yaml", cfg()),
)
case("config/run-missing-file", "run", "nope.yaml", "--out", "out")

# ---------------------------------------------------------------------------- data files

NPZ_CFG = cfg(data="{name: npz, path: data.npz}")
for cid, arrays in [
    ("labels-out-of-range", {"x": GOOD_DIGITS, "y": GOOD_LABELS + 5}),
    ("labels-negative", {"x": GOOD_DIGITS, "y": GOOD_LABELS - 1}),
    ("one-class", {"x": GOOD_DIGITS, "y": np.zeros(60, dtype=np.int64)}),
    ("label-count-mismatch", {"x": GOOD_DIGITS, "y": GOOD_LABELS[:50]}),
    ("float-labels", {"x": GOOD_DIGITS, "y": GOOD_LABELS + 0.5}),
    ("images-wrong-rank", {"x": GOOD_DIGITS[:, 0, 0, :], "y": GOOD_LABELS}),
    ("wrong-keys", {"images": GOOD_DIGITS, "labels": GOOD_LABELS}),
    ("empty-arrays", {"x": GOOD_DIGITS[:0], "y": GOOD_LABELS[:0]}),
]:
    case(f"data/npz-{cid}", *TRAIN, setup=both(write("c.yaml", NPZ_CFG), write("data.npz", npz_bytes(**arrays))))
case(
    "data/npz-truncated",
    *TRAIN,
    setup=both(write("c.yaml", NPZ_CFG), write("data.npz", npz_bytes(x=GOOD_DIGITS, y=GOOD_LABELS)[:300])),
)
case("data/npz-random-bytes", *TRAIN, setup=both(write("c.yaml", NPZ_CFG), write("data.npz", random_bytes(2000))))
case("data/npz-missing", *TRAIN, setup=write("c.yaml", NPZ_CFG))
case(
    "data/npz-object-array",
    *TRAIN,
    setup=both(
        write("c.yaml", NPZ_CFG), write("data.npz", npz_bytes(x=np.array([{"a": 1}] * 60, dtype=object), y=GOOD_LABELS))
    ),
)

IDX_CFG = cfg(data="{name: mnist_idx, path: mnist}")
IMAGES = np.random.default_rng(2).integers(0, 256, (40, 28, 28), dtype=np.uint8)
LABELS = (np.arange(40) % 10).astype(np.uint8)
for cid, images, labels in [
    (
        "header-overflow",
        struct.pack(">HBB", 0, 8, 4) + struct.pack(">4I", 65536, 65536, 65536, 65536),
        idx_bytes(LABELS),
    ),
    (
        "header-huge-dims",
        struct.pack(">HBB", 0, 8, 3) + struct.pack(">3I", 4_000_000_000, 28, 28) + b"\0" * 100,
        idx_bytes(LABELS),
    ),
    ("bad-magic", b"\x12\x34\x08\x03" + idx_bytes(IMAGES)[4:], idx_bytes(LABELS)),
    ("truncated-header", b"\x00\x00\x08\x03\x00\x00", idx_bytes(LABELS)),
    ("truncated-data", idx_bytes(IMAGES)[:-100], idx_bytes(LABELS)),
    ("labels-out-of-range", idx_bytes(IMAGES), idx_bytes(LABELS + 20)),
    ("one-class", idx_bytes(IMAGES), idx_bytes(np.zeros(40, dtype=np.uint8))),
    ("count-mismatch", idx_bytes(IMAGES), idx_bytes(LABELS[:30])),
    ("bad-gzip", gzip.compress(idx_bytes(IMAGES))[:50], idx_bytes(LABELS)),
]:
    suffix = ".gz" if cid == "bad-gzip" else ""
    case(
        f"data/idx-{cid}",
        *TRAIN,
        setup=both(
            write("c.yaml", IDX_CFG),
            write(f"mnist/train-images-idx3-ubyte{suffix}", images),
            write("mnist/train-labels-idx1-ubyte", labels),
        ),
    )
case("data/idx-folder-missing", *TRAIN, setup=write("c.yaml", IDX_CFG))
case(
    "data/cifar-binary-wrong-size",
    *TRAIN,
    setup=both(
        write("c.yaml", cfg(data="{name: cifar10_binary, path: cifar}", model="{backbone: cnv}")),
        write("cifar/data_batch_1.bin", random_bytes(3073 * 3 + 17)),
    ),
)
case(
    "data/cifar-python-not-a-pickle",
    *TRAIN,
    setup=both(
        write("c.yaml", cfg(data="{name: cifar10_python, path: cifar}", model="{backbone: cnv}")),
        write("cifar/data_batch_1", random_bytes(5000)),
    ),
)

# ---------------------------------------------------------------------------- models (profile / export)

for cid, setup in [
    ("model-truncated", truncate("run/model.pt", 0.5)),
    ("model-truncated-tiny", truncate("run/model.pt", 0.01)),
    ("model-empty", write("run/model.pt", b"")),
    ("model-random-bytes", write("run/model.pt", random_bytes(50_000))),
    ("model-text", write("run/model.pt", "this is not a checkpoint\n")),
    (
        "model-zip-of-junk",
        write(
            "run/model.pt",
            (lambda b: (zipfile.ZipFile(b, "w").writestr("x/data.pkl", "junk"), b.getvalue())[1])(io.BytesIO()),
        ),
    ),
    ("model-missing", remove("run/model.pt")),
    ("model-foreign-dict", make_checkpoint("run/model.pt", lambda d: d.update(format="someone-else"))),
    ("model-future-version", make_checkpoint("run/model.pt", lambda d: d.update(version=999))),
    (
        "model-state-dict-missing-key",
        make_checkpoint("run/model.pt", lambda d: d["state_dict"].pop(next(iter(d["state_dict"])))),
    ),
    (
        "model-state-dict-wrong-shape",
        make_checkpoint(
            "run/model.pt",
            lambda d: d["state_dict"].update({next(iter(d["state_dict"])): __import__("torch").zeros(3, 3)}),
        ),
    ),
    ("model-other-architecture-in-config", edit_yaml("run/config.yaml", set_key("model.exits", ["conv0"]))),
    ("config-yaml-garbage", write("run/config.yaml", "model: [unclosed\n")),
    ("config-yaml-duplicate-key", write("run/config.yaml", "model: {backbone: lenet}\nmodel: {backbone: cnv}\n")),
]:
    case(f"model/profile-{cid}", "profile", "run", trained=True, setup=setup)

# A checkpoint whose stored config names a callable as factory: never imported, never called.
EVIL = {"backbone": "custom", "factory": "subprocess:run", "factory_args": {"args": ["touch", "PWNED"]}}
EVIL_SYSTEM = {"backbone": "custom", "factory": "os:system", "factory_args": {"command": "touch PWNED"}}
for cid, model in [("subprocess-run", EVIL), ("os-system", EVIL_SYSTEM)]:
    evil = make_checkpoint("run/model.pt", lambda d, m=model: d["config"]["model"].update(m))
    case(
        f"model/evil-factory-{cid}-with-config",
        "profile",
        "run",
        trained=True,
        setup=evil,
        check=not_created("run/PWNED"),
    )
    case(
        f"model/evil-factory-{cid}-alone",
        "profile",
        "run",
        trained=True,
        setup=both(evil, remove("run/config.yaml")),
        check=not_created("run/PWNED"),
    )
    case(
        f"model/evil-factory-{cid}-export",
        "export",
        "run",
        "--exits",
        "conv1",
        trained=True,
        setup=evil,
        check=not_created("run/PWNED"),
    )
case(
    "model/evil-factory-in-config-yaml-too",
    "profile",
    "run",
    trained=True,
    check=not_created("run/PWNED"),
    setup=both(
        make_checkpoint("run/model.pt", lambda d: d["config"]["model"].update(EVIL)),
        edit_yaml("run/config.yaml", lambda d: d["model"].update({"backbone": "custom", "factory": "no_such_mod:x"})),
    ),
)
case("model/export-unknown-exit", "export", "run", "--exits", "conv9", trained=True)
case("model/export-final-block-as-exit", "export", "run", "--exits", "fc1", trained=True)

# ---------------------------------------------------------------------------- profile.npz, layers.json, run folder

SWEEP = ("sweep", "run", "--board", "Pynq-Z2")
for cid, setup in [
    ("truncated", truncate("run/profile.npz", 0.5)),
    ("random-bytes", write("run/profile.npz", random_bytes(10_000))),
    ("empty", write("run/profile.npz", b"")),
    ("wrong-keys", write("run/profile.npz", npz_bytes(a=np.zeros(3), b=np.ones(2)))),
    ("no-arrays", write("run/profile.npz", npz_bytes())),
    ("missing", remove("run/profile.npz")),
    ("is-a-folder", both(remove("run/profile.npz"), write("run/profile.npz/x", "x"))),
]:
    case(f"profile-npz/sweep-{cid}", *SWEEP, trained=True, setup=setup)
case(
    "profile-npz/cosim-truncated",
    "cosim",
    "run",
    "--samples",
    "5",
    trained=True,
    setup=truncate("run/profile.npz", 0.3),
)

for cid, content in [
    ("list", "[]"),
    ("string", '"layers"'),
    ("layers-a-list", '{"layers": ["conv0"]}'),
    ("layers-values-numbers", '{"layers": {"conv0": 3}}'),
    ("truncated", '{"layers": {"conv0": "MVAU'),
    ("empty", ""),
]:
    case(
        f"layers-json/cosim-{cid}",
        "cosim",
        "run",
        "--samples",
        "5",
        trained=True,
        setup=lambda cwd, c=content: (
            cwd
            / "run"
            / "hw"
            / json.loads((cwd / "run" / "hw" / "build.json").read_text())["graphs"][0]["name"]
            / "layers.json"
        ).write_text(c),
    )

for cid, setup, args in [
    ("build-json-garbage", write("run/hw/build.json", "{not json"), ("cosim", "run", "--samples", "5")),
    ("build-json-list", write("run/hw/build.json", "[1, 2]"), ("cosim", "run", "--samples", "5")),
    ("hw-missing-cosim", remove("run/hw"), ("cosim", "run", "--samples", "5")),
    ("design-missing-build", remove("run/sweep/design.yaml"), ("build", "run")),
    ("design-missing-cosim", remove("run/sweep/design.yaml"), ("cosim", "run", "--samples", "5")),
    ("run-json-garbage", write("run/run.json", "{{{"), ("run", "hostile.yaml", "--out", "run")),
    ("run-json-list", write("run/run.json", "[]"), ("run", "hostile.yaml", "--out", "run")),
    ("other-config-train", write("c.yaml", cfg(train="{epochs: 1, seed: 5}")), ("train", "c.yaml", "--out", "run")),
    ("no-model-profile", remove("run/model.pt"), ("export", "run", "--exits", "conv1")),
    ("profile-of-empty-folder", write("empty/.keep", ""), ("profile", "empty")),
    ("cosim-of-nonexistent", None, ("cosim", "nowhere")),
    ("report-of-nonexistent", None, ("report", "nowhere")),
    ("sweep-of-nonexistent", None, ("sweep", "nowhere", "--board", "Pynq-Z2")),
    ("build-of-nonexistent", None, ("build", "nowhere")),
]:
    case(f"run-folder/{cid}", *args, trained=True, setup=setup)

# ---------------------------------------------------------------------------- design files (build / cosim)

BUILD = ("build", "run", "--design", "d.yaml")
for cid, change in [
    ("pe-not-dividing", stage_fold(0, "conv1", pe=7)),
    ("simd-not-dividing", stage_fold(0, "conv1", simd=5)),
    ("pe-zero", stage_fold(0, "conv1", pe=0)),
    ("simd-negative", stage_fold(0, "fc0", simd=-4)),
    ("pe-string", stage_fold(0, "conv0", pe="four")),
    ("pe-simd-too-wide", stage_fold(0, "fc0", pe=64, simd=256)),
    ("ram-style-ultra-no-uram", stage_fold(0, "fc0", ram_style="ultra")),
    ("ram-style-unknown", stage_fold(0, "fc0", ram_style="flash")),
    ("res-type-unknown", stage_fold(0, "fc0", res_type="magic")),
    ("folding-unknown-layer", stage_fold(0, "conv9", pe=1, simd=1)),
    ("folding-unknown-key", stage_fold(0, "conv0", unroll=2)),
    ("unknown-board", set_key("board", "Pynq-Z9")),
    ("unknown-top-key", lambda d: d.update(colour="red")),
    ("other-model", set_key("model", "cnv")),
    ("clock-negative", set_key("clock_mhz", -100)),
    ("clock-string", set_key("clock_mhz", "fast")),
    ("no-stages", set_key("stages", [])),
    ("stages-a-mapping", set_key("stages", {"a": 1})),
    ("block-unknown", lambda d: d["stages"][0]["blocks"].append("conv9")),
    ("block-twice", lambda d: d["stages"][0]["blocks"].append("conv0")),
    ("blocks-missing-one", lambda d: d["stages"][0]["blocks"].remove("fc0")),
    ("blocks-out-of-order", lambda d: d["stages"][0]["blocks"].reverse()),
    ("stage-name-bad", set_key("stages.0.name", "my stage!")),
    ("threshold-on-final", set_key("stages.0.head.threshold", 0.9)),
    ("policy-unknown", set_key("stages.0.head.policy", "vibes")),
    ("gate-depth-on-final", set_key("stages.0.gate_depth", 4)),
    (
        "early-exit-threshold-two",
        lambda d: d.update(
            stages=[
                {
                    "name": "early",
                    "blocks": ["conv0", "conv1"],
                    "gate_depth": 2,
                    "head": {"name": "exit0", "threshold": 2.0},
                },
                {"name": "rest", "blocks": ["fc0", "fc1"], "head": {"name": "final"}},
            ]
        ),
    ),
    (
        "exit-not-a-candidate",
        lambda d: d.update(
            stages=[
                {"name": "early", "blocks": ["conv0"], "gate_depth": 2, "head": {"name": "exit0", "threshold": 0.9}},
                {"name": "rest", "blocks": ["conv1", "fc0", "fc1"], "head": {"name": "final"}},
            ]
        ),
    ),
    (
        "gate-depth-beyond-board",
        lambda d: d.update(
            stages=[
                {
                    "name": "early",
                    "blocks": ["conv0", "conv1"],
                    "gate_depth": 10_000_000,
                    "head": {"name": "exit0", "threshold": 0.9},
                },
                {"name": "rest", "blocks": ["fc0", "fc1"], "head": {"name": "final"}},
            ]
        ),
    ),
    (
        "gate-depth-zero",
        lambda d: d.update(
            stages=[
                {
                    "name": "early",
                    "blocks": ["conv0", "conv1"],
                    "gate_depth": 0,
                    "head": {"name": "exit0", "threshold": 0.9},
                },
                {"name": "rest", "blocks": ["fc0", "fc1"], "head": {"name": "final"}},
            ]
        ),
    ),
    (
        "duplicate-head-names",
        lambda d: d.update(
            stages=[
                {
                    "name": "early",
                    "blocks": ["conv0", "conv1"],
                    "gate_depth": 2,
                    "head": {"name": "final", "threshold": 0.9},
                },
                {"name": "rest", "blocks": ["fc0", "fc1"], "head": {"name": "final"}},
            ]
        ),
    ),
    ("top-level-list", lambda d: [d]),
]:
    case(f"design/build-{cid}", *BUILD, trained=True, setup=design_from_run(change))
case("design/build-malformed", *BUILD, trained=True, setup=write("d.yaml", "stages: [\n"))
case(
    "design/build-duplicate-key",
    *BUILD,
    trained=True,
    setup=write("d.yaml", "model: lenet\nmodel: lenet\nboard: Pynq-Z2\n"),
)
case("design/build-oversized", *BUILD, trained=True, setup=write("d.yaml", "#" * 80 + "\n" * 1 + ("# x\n" * 400_000)))
case("design/build-missing-file", *BUILD, trained=True)
case("design/build-empty-file", *BUILD, trained=True, setup=write("d.yaml", ""))
case(
    "design/cosim-illegal-folding",
    "cosim",
    "run",
    "--design",
    "d.yaml",
    "--samples",
    "5",
    trained=True,
    setup=design_from_run(stage_fold(0, "conv1", pe=7)),
)
case(
    "design/run-edited-illegal",
    "run",
    "hostile.yaml",
    "--out",
    "run",
    trained=True,
    setup=edit_yaml("run/sweep/design.yaml", stage_fold(0, "conv1", pe=7)),
    may_write=("run/run.json",),
)

# ---------------------------------------------------------------------------- board files (EXITFLOW_BOARDS)

PYNQ = Path(__file__).resolve().parents[2] / "core" / "catalogue" / "Pynq-Z2.yaml"


def board_file(change: Callable[[dict], object] | None = None, text: str | None = None) -> Callable[[Path], None]:
    def setup(cwd: Path) -> None:
        (cwd / "myboards").mkdir(exist_ok=True)
        if text is not None:
            (cwd / "myboards" / "MyBoard.yaml").write_text(text)
            return
        data = yaml.safe_load(PYNQ.read_text())
        data["name"] = "MyBoard"
        out = change(data) if change else None
        (cwd / "myboards" / "MyBoard.yaml").write_text(yaml.safe_dump(data if out is None else out, sort_keys=False))

    return setup


BOARD_ENV = {"EXITFLOW_BOARDS": "myboards"}
for cid, setup in [
    ("malformed", board_file(text="name: MyBoard\nresources: {lut: 1\n")),
    ("duplicate-key", board_file(text=PYNQ.read_text().replace("name: Pynq-Z2", "name: MyBoard\nname: MyBoard2"))),
    ("missing-lut", board_file(lambda d: d["resources"].pop("lut"))),
    ("missing-part", board_file(lambda d: d.pop("part"))),
    ("lut-zero", board_file(lambda d: d["resources"].update(lut=0))),
    ("lut-string", board_file(lambda d: d["resources"].update(lut="lots"))),
    ("negative-dsp", board_file(lambda d: d["resources"].update(dsp=-1))),
    ("unknown-key", board_file(lambda d: d.update(colour="green"))),
    ("unknown-finn-board", board_file(lambda d: d.update(finn_board="Pynq-Z9"))),
    ("clock-zero", board_file(lambda d: d.update(clock_mhz=0))),
    ("shell-bigger-than-device", board_file(lambda d: d["shell"].update(lut=10**7))),
    ("list-not-mapping", board_file(text="- name: MyBoard\n")),
    ("empty-file", board_file(text="")),
]:
    case(f"board/boards-{cid}", "boards", env=BOARD_ENV, setup=setup)
case(
    "board/sweep-with-broken-board",
    "sweep",
    "run",
    "--board",
    "MyBoard",
    env=BOARD_ENV,
    trained=True,
    setup=board_file(lambda d: d["resources"].pop("lut")),
)
case("board/unknown-board", "boards", "Pynq-Z9", stderr_has=("Pynq-Z9",))
case("board/folder-is-a-file", "boards", env={"EXITFLOW_BOARDS": "notafolder"}, setup=write("notafolder", "x"))

# ---------------------------------------------------------------------------- flags

for cid, args in [
    ("util-abc", SWEEP + ("--util", "abc")),
    ("util-zero", SWEEP + ("--util", "0")),
    ("util-above-one", SWEEP + ("--util", "1.5")),
    ("util-nan", SWEEP + ("--util", "nan")),
    ("min-accuracy-two", SWEEP + ("--min-accuracy", "2")),
    ("min-accuracy-negative", SWEEP + ("--min-accuracy", "-0.1")),
    ("max-drop-negative", SWEEP + ("--max-drop-pp", "-1")),
    ("max-latency-zero", SWEEP + ("--max-latency-us", "0")),
    ("objective-unknown", SWEEP + ("--objective", "beauty")),
    ("max-exits-negative", SWEEP + ("--max-exits", "-1")),
    ("board-missing", ("sweep", "run")),
    ("threads-zero", ("train", "run/config.yaml", "--out", "run", "--threads", "0")),
    ("threads-negative", ("train", "run/config.yaml", "--out", "run", "--threads", "-3")),
    ("threads-abc", ("train", "run/config.yaml", "--out", "run", "--threads", "abc")),
    ("samples-zero", ("cosim", "run", "--samples", "0")),
    ("samples-abc", ("cosim", "run", "--samples", "abc")),
    ("reference-samples-zero", ("cosim", "run", "--reference-samples", "0")),
    ("engine-unknown", ("cosim", "run", "--engine", "gpu")),
    ("unknown-flag", ("build", "run", "--turbo")),
    ("unknown-command", ("deploy", "run")),
    ("no-command", ()),
    ("out-missing", ("train", "run/config.yaml")),
    ("out-empty-string", ("train", "run/config.yaml", "--out", "")),
]:
    case(f"flags/{cid}", *args, trained=True)

# ---------------------------------------------------------------------------- paths

USER_FILES = both(
    write("mine/hw/top.v", "module top(); endmodule\n"), write("mine/notes.txt", "my notes\n"), write("c.yaml", cfg())
)
case("paths/out-foreign-folder-train", "train", "c.yaml", "--out", "mine", setup=USER_FILES)
case("paths/out-foreign-folder-run", "run", "c.yaml", "--out", "mine", setup=USER_FILES)
case("paths/out-foreign-folder-run-default", "run", "--out", "mine", setup=USER_FILES)
case(
    "paths/out-foreign-hidden-file",
    "run",
    "c.yaml",
    "--out",
    "mine",
    setup=both(write("mine/.gitignore", "*\n"), write("c.yaml", cfg())),
)
case(
    "paths/out-is-a-file", "train", "c.yaml", "--out", "afile", setup=both(write("afile", "x"), write("c.yaml", cfg()))
)
case(
    "paths/out-under-a-file",
    "train",
    "c.yaml",
    "--out",
    "afile/run",
    setup=both(write("afile", "x"), write("c.yaml", cfg())),
)
case("paths/out-dot-dot-foreign", "train", "../c.yaml", "--out", "..", setup=write("c.yaml", cfg()))
case(
    "paths/config-with-spaces-malformed",
    "train",
    "my configs/Ünï cfg.yaml",
    "--out",
    "out",
    setup=write("my configs/Ünï cfg.yaml", "data: {"),
    stderr_has=("Ünï cfg.yaml",),
)
case(
    "paths/design-with-spaces-illegal",
    "build",
    "run",
    "--design",
    "my designs/dé sign.yaml",
    trained=True,
    setup=design_from_run(stage_fold(0, "conv1", pe=7), rel="my designs/dé sign.yaml"),
)
case("paths/tilde-nonexistent", "profile", "~/no-such-run")
case("paths/name-too-long", "profile", "x" * 300)
# Success cases: a user's folder with spaces and non-ASCII characters works end to end.
SPACED = "my runs/Ünïcode dir"
case(
    "paths/report-in-spaced-folder",
    "report",
    SPACED,
    trained=True,
    where=SPACED,
    code=0,
    may_write=(f"{SPACED}/report.html", f"{SPACED}/*.log"),
    new_ok=True,
)
case(
    "paths/cosim-in-spaced-folder",
    "cosim",
    SPACED,
    "--samples",
    "20",
    trained=True,
    where=SPACED,
    code=0,
    may_write=(f"{SPACED}/cosim/report.json", f"{SPACED}/*.log", f"{SPACED}/cosim/*"),
    new_ok=True,
)
case(
    "paths/export-in-spaced-folder",
    "export",
    SPACED,
    "--exits",
    "conv1",
    trained=True,
    where=SPACED,
    code=0,
    may_write=(f"{SPACED}/stages/*",),
    new_ok=True,
)
case(
    "paths/run-again-relative-skips",
    "run",
    "hostile.yaml",
    "--out",
    "run",
    "--board",
    "Pynq-Z2",
    trained=True,
    code=0,
    may_write=("run/run.json", "run/report.html", "run/*.log"),
    setup=None,
)
case("paths/boards-json", "boards", "KV260", "--json", code=0)


# Near-duplicates of cases above, left out of the default run to keep the suite's time modest
# (each case is a process that imports torch); EXITFLOW_HOSTILE_ALL=1 runs them too.
EXTRA = {
    f"config/{c}"
    for c in (
        "malformed-tab",
        "unclosed-quote",
        "duplicate-train-key",
        "top-level-scalar",
        "unknown-train-key",
        "epochs-float",
        "lr-negative",
        "batch-size-zero",
        "head-pool-zero",
        "builtin-data-with-path",
        "val-fraction-one",
        "seed-string",
        "run-board-lowercase-typo",
        "binary-file",
        "exit-is-final-block",
        "block-bits-bad-width",
        "epochs-zero",
        "unknown-model-key",
        "malformed-indent",
        "custom-without-factory",
        "cnv-on-8x8-digits",
        "run-missing-file",
    )
}
EXTRA |= {
    f"data/{c}"
    for c in (
        "npz-float-labels",
        "npz-empty-arrays",
        "npz-object-array",
        "idx-truncated-header",
        "idx-count-mismatch",
        "cifar-python-not-a-pickle",
        "idx-header-huge-dims",
        "npz-labels-negative",
        "npz-label-count-mismatch",
        "npz-images-wrong-rank",
        "npz-missing",
    )
}
EXTRA |= {
    f"model/{c}"
    for c in (
        "profile-model-truncated-tiny",
        "profile-model-text",
        "profile-model-zip-of-junk",
        "profile-model-future-version",
        "profile-model-empty",
        "profile-model-state-dict-wrong-shape",
        "profile-config-yaml-duplicate-key",
        "export-final-block-as-exit",
    )
}
EXTRA |= {
    "profile-npz/sweep-no-arrays",
    "profile-npz/sweep-is-a-folder",
    "layers-json/cosim-string",
    "layers-json/cosim-layers-values-numbers",
}
EXTRA |= {
    f"run-folder/{c}"
    for c in (
        "build-json-list",
        "run-json-list",
        "cosim-of-nonexistent",
        "build-of-nonexistent",
        "design-missing-cosim",
        "other-config-train",
    )
}
EXTRA |= {
    f"design/build-{c}"
    for c in (
        "simd-negative",
        "pe-string",
        "ram-style-unknown",
        "res-type-unknown",
        "clock-string",
        "stages-a-mapping",
        "block-twice",
        "blocks-out-of-order",
        "stage-name-bad",
        "gate-depth-zero",
        "duplicate-head-names",
        "empty-file",
        "top-level-list",
        "simd-not-dividing",
        "pe-simd-too-wide",
        "folding-unknown-key",
        "clock-negative",
        "blocks-missing-one",
        "policy-unknown",
        "gate-depth-on-final",
        "missing-file",
    )
}
EXTRA |= {f"board/boards-{c}" for c in ("lut-string", "negative-dsp", "list-not-mapping", "clock-zero")}
EXTRA |= {
    f"flags/{c}"
    for c in (
        "util-nan",
        "max-latency-zero",
        "samples-abc",
        "engine-unknown",
        "unknown-command",
        "out-empty-string",
        "max-drop-negative",
        "threads-negative",
        "reference-samples-zero",
        "board-missing",
    )
}
EXTRA |= {"paths/out-foreign-hidden-file", "paths/tilde-nonexistent"}
assert EXTRA <= {c.id for c in CASES}, EXTRA - {c.id for c in CASES}
if os.environ.get("EXITFLOW_HOSTILE_ALL") != "1":
    CASES = [c for c in CASES if c.id not in EXTRA]

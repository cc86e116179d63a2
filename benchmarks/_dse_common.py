"""Shared by the dse_* benchmarks: train, profile and sweep each model once per process."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time

_CACHE: dict = {}

MODELS = {
    # FINN's CNV-W2A2 topology, candidate exits including one after the first convolution
    # (15 epochs; 30 % of the images validate, so the thresholds are chosen on 1,500 samples: on
    # 750, the 1 pp floor was met on validation but missed by 0.5 pp on the test split); exit
    # heads with a hidden layer of 32 units (issue 16: with a bare classifier conv0's exit reached
    # 87-91 % and the certified gains 2.16-2.64x)
    "cnv": dict(
        backbone="cnv",
        preset="w2a2",
        exits=("conv0", "conv1", "conv3", "conv5", "fc0"),
        head={"hidden": 32},
        shape=(3, 32, 32),
        data="mnist5k padded to 3x32x32 (no CIFAR-10 here), 30 % validation split",
        val_fraction=0.3,
        epochs=15,
    ),
    # the built-in default: lenet w4a4, an exit after every block
    "lenet": dict(
        backbone="lenet", preset="w4a4", exits=None, shape=None, data="mnist5k", val_fraction=0.15, epochs=30
    ),
    # MLPerf Tiny's ResNet-8 and a MobileNet-v1-style network at w4a4 (benchmark `families`)
    "resnet8": dict(
        backbone="resnet8",
        preset="w4a4",
        exits=("stem", "stack1", "stack2"),
        shape=(3, 32, 32),
        data="mnist5k padded to 3x32x32 (no CIFAR-10 here), 30 % validation split",
        val_fraction=0.3,
        epochs=15,
    ),
    "mobilenet": dict(
        backbone="mobilenet",
        preset="w4a4",
        exits=("stem", "sep1", "sep2", "sep3", "sep4", "sep5"),
        shape=(3, 32, 32),
        data="mnist5k padded to 3x32x32 (no CIFAR-10 here), 30 % validation split",
        val_fraction=0.3,
        epochs=15,
    ),
}


def swept(model: str, drop_pp: float, seed: int = 0, exhaustive: bool = False):
    """(SweepResult, train seconds) for ``model`` trained with ``seed`` on Pynq-Z2 with an
    accuracy floor of ``drop_pp`` below the final exit (certified at the sweep's default
    confidence); ``exhaustive``: every threshold configuration costed, not only those keeping the
    floor (a benchmark that re-certifies needs them all). EXITFLOW_DSE_EPOCHS overrides the
    epochs of every model but lenet (default 15); EXITFLOW_DSE_RUNS names a folder where the
    trained runs are kept and reused (default: a temporary folder, removed at exit)."""
    key = (model, drop_pp, seed, exhaustive)
    if key in _CACHE:
        return _CACHE[key]
    import torch

    from exitflow.core.data import DataSpec
    from exitflow.dse.sweep import sweep
    from exitflow.quant.config import HeadConfig, ModelConfig, RunConfig, TrainConfig
    from exitflow.quant.profile import profile
    from exitflow.quant.train import train

    torch.set_num_threads(2)
    spec = MODELS[model]
    run = _CACHE.get(("run", model, seed))
    if run is None:
        epochs = int(os.environ.get("EXITFLOW_DSE_EPOCHS", spec["epochs"])) if model != "lenet" else spec["epochs"]
        keep = os.environ.get("EXITFLOW_DSE_RUNS")  # a folder to keep trained runs in, reused next time
        if keep:
            folder = os.path.join(keep, _run_name(model, epochs, seed))
        else:
            folder = tempfile.mkdtemp(prefix=f"exitflow_bench_{model}_")
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
        config = RunConfig(
            data=DataSpec(name="mnist5k", shape=spec["shape"], val_fraction=spec["val_fraction"]),
            model=ModelConfig(
                backbone=spec["backbone"],
                preset=spec["preset"],
                exits=spec["exits"],
                head=HeadConfig(**spec.get("head", {})),
            ),
            train=TrainConfig(epochs=epochs, seed=seed, **spec.get("train", {})),
        )
        train_s = None  # trained in an earlier run (EXITFLOW_DSE_RUNS)
        if not os.path.exists(os.path.join(folder, "model.pt")):
            start = time.perf_counter()
            train(config, folder, log=lambda line: None)
            train_s = time.perf_counter() - start
        if not os.path.exists(os.path.join(folder, "profile.npz")):  # kept runs are profiled again when it is removed
            profile(folder, plot=False)
        run = _CACHE[("run", model, seed)] = (folder, train_s)
    folder, train_s = run
    import gc

    gc.collect()  # what earlier sweeps of this process left behind (hundreds of thousands of candidates)
    result = sweep(folder, "Pynq-Z2", max_drop_pp=drop_pp, log=lambda line: None, exhaustive=exhaustive)
    _CACHE[key] = (result, train_s)
    return _CACHE[key]


RUN_FILES = ("model.pt", "config.yaml", "profile.npz", "profile.json", "train_log.json")


def private_sweep(model: str, drop_pp: float, root):
    """(a private copy of ``model``'s trained run in ``root/model``, swept there at ``drop_pp``;
    the SweepResult; the sweep's seconds). The shared run folder's sweep/design.yaml is rewritten
    by every sweep of it, so a design to build gets a folder of its own."""
    from pathlib import Path

    from exitflow.dse.sweep import sweep

    swept(model, drop_pp)  # trains and profiles once per process
    source = Path(run_folder(model))
    run = Path(root) / model
    run.mkdir(parents=True)
    for name in RUN_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, run / name)
    start = time.perf_counter()
    result = sweep(run, "Pynq-Z2", max_drop_pp=drop_pp, log=lambda line: None)
    return run, result, time.perf_counter() - start


def _run_name(model: str, epochs: int, seed: int) -> str:
    """The kept run's folder name: what it was trained with (a head other than the default, a
    recipe other than end-to-end training and a seed other than 0 are in the name, so a kept run is
    never reused for another)."""
    spec = MODELS[model]
    name = f"{model}-{epochs}ep-val{spec['val_fraction']}"
    name += "".join(f"-{k}{v}" for k, v in sorted(spec.get("head", {}).items()))  # a head other than the default
    recipe = spec.get("train", {})
    if recipe:
        name += "-" + "-".join(f"{k}{v}" for k, v in sorted(recipe.items()))
    return name + (f"-seed{seed}" if seed else "")


def run_folder(model: str, seed: int = 0) -> str:
    """The trained, profiled and swept run folder of ``model`` (after :func:`swept`)."""
    return _CACHE[("run", model, seed)][0]


def lut_fraction_at_equal_throughput(result) -> float | None:
    """LUTs of the cheapest multi-exit design keeping the sweep's accuracy floor (certified) at
    least as fast as the best no-exit one with unbounded gates (ATHEENA's rule), over the no-exit
    design's LUTs. With finite gates: ``result.equal_throughput`` (the sweep simulates them)."""
    matching = [c for c in result.candidates if c.exits and c.fps >= result.no_exit.fps and result.floor.admits(c)]
    if not matching:
        return None
    return min(c.resources.lut for c in matching) / result.no_exit.resources.lut

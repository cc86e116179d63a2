"""`cosim_speed`: exitflow's vectorised cosimulation engine against FINN's own Python execution.

* ``ratio_vs_finn_cnv``: images/s of the vectorised engine over FINN's ``execute_onnx`` on the
  same CNV-W2A2 HW graph (the whole network as one stage), measured side by side in this run,
  outputs checked bit-exact. Target: at least 80.
* ``lenet_images_per_s``: the whole ``mnist5k`` ``lenet`` design (two early exits, routing
  included) on 2 threads. Target: at least 2,000.
* ``peak_mem_mb_10k``: peak resident memory of a process cosimulating 10,000 samples of the
  CNV design (vectorised, chunked). Target: at most 2,048.

The models are trained for one epoch only: speed does not depend on accuracy.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

CNV_BLOCKS = ["conv0", "conv1", "conv2", "conv3", "conv4", "conv5", "fc0", "fc1"]
FINN_SAMPLES = 6
VECTORISED_SAMPLES = 512

PEAK_MEM = """
import resource, sys, numpy as np, torch
torch.set_num_threads(2)
from exitflow.cosim.functional import load_built, run_design
from exitflow.core.data import load_splits
built = load_built(sys.argv[1], sys.argv[2])
x = load_splits(built.config.data).test.x
images = np.resize(x, (10_000, *x.shape[1:]))  # the test split repeated to 10,000 samples
run_design(built, images)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def _trained_and_built(root: Path, name: str, data, model, design: dict) -> tuple[Path, Path]:
    from exitflow.hw.build import build
    from exitflow.quant.config import RunConfig, TrainConfig
    from exitflow.quant.train import train

    run = root / name
    train(RunConfig(data=data, model=model, train=TrainConfig(epochs=1)), run, log=lambda line: None)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(design, sort_keys=False))
    build(run, path, log=lambda line: None, vivado_project=None)
    return run, path


def run() -> dict:
    import torch

    from exitflow.core.data import DataSpec, load_splits
    from exitflow.cosim.engines import FinnEngine, VectorisedEngine
    from exitflow.cosim.functional import load_built, run_design
    from exitflow.quant.config import ModelConfig

    torch.set_num_threads(2)
    root = Path(tempfile.mkdtemp(prefix="exitflow_bench_cosim_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)

    # CNV-W2A2, the whole network as one stage
    cnv_design = {
        "model": "cnv",
        "board": "Pynq-Z2",
        "stages": [{"name": "all", "blocks": CNV_BLOCKS, "head": {"name": "final"}}],
    }
    cnv_run, cnv_path = _trained_and_built(
        root, "cnv", DataSpec(name="mnist5k", shape=(3, 32, 32)), ModelConfig(backbone="cnv", preset="w2a2"), cnv_design
    )
    built = load_built(cnv_run, cnv_path)
    stage = built.graphs[0][0]
    images = np.resize(load_splits(built.config.data).test.x, (VECTORISED_SAMPLES, 3, 32, 32))
    x = built.input_order(images)
    finn, vectorised = FinnEngine(stage.model), VectorisedEngine(stage.model)
    start = time.perf_counter()
    want, _ = finn.run(x[:FINN_SAMPLES])
    finn_rate = FINN_SAMPLES / (time.perf_counter() - start)
    got = np.concatenate([vectorised.run(x[i : i + 32])[0] for i in range(0, 64, 32)])  # warm-up
    start = time.perf_counter()
    got = np.concatenate([vectorised.run(x[i : i + 32])[0] for i in range(0, len(x), 32)])
    vectorised_rate = len(x) / (time.perf_counter() - start)
    if not np.array_equal(want, got[:FINN_SAMPLES]):
        raise RuntimeError("the vectorised engine is not bit-exact with FINN on the CNV graph")

    # lenet on mnist5k, two early exits
    lenet_design = {
        "model": "lenet",
        "board": "Pynq-Z2",
        "stages": [
            {"name": "s0", "blocks": ["conv0"], "gate_depth": 2, "head": {"name": "e0", "threshold": 0.9}},
            {"name": "s1", "blocks": ["conv1", "fc0"], "gate_depth": 2, "head": {"name": "e1", "threshold": 0.9}},
            {"name": "s2", "blocks": ["fc1"], "head": {"name": "final"}},
        ],
    }
    lenet_run, lenet_path = _trained_and_built(root, "lenet", DataSpec(name="mnist5k"), ModelConfig(), lenet_design)
    lenet = load_built(lenet_run, lenet_path)
    test = load_splits(lenet.config.data).test.x
    run_design(lenet, test[:64])  # engines built, caches warm
    images = np.resize(test, (5_000, *test.shape[1:]))
    start = time.perf_counter()
    run_design(lenet, images)
    lenet_rate = len(images) / (time.perf_counter() - start)

    out = subprocess.run(
        [sys.executable, "-c", PEAK_MEM, str(cnv_run), str(cnv_path)], capture_output=True, text=True, check=True
    )
    peak_mb = float(out.stdout.strip().splitlines()[-1])
    return {
        "ratio_vs_finn_cnv": round(vectorised_rate / finn_rate, 1),
        "finn_cnv_images_per_s": round(finn_rate, 2),
        "vectorised_cnv_images_per_s": round(vectorised_rate, 1),
        "lenet_images_per_s": round(lenet_rate),
        "peak_mem_mb_10k": round(peak_mb),
    }

"""`dse`: the early-exit gain on Pynq-Z2 with FINN's CNV-W2A2 topology.

Trains `cnv` at w2a2 with candidate exits after conv0, conv1, conv3, conv5 and fc0 on `mnist5k`
padded to 3x32x32 (no CIFAR-10 here), profiles it, and sweeps Pynq-Z2 at 85% utilisation.
Prints, for accuracy floors 0.5 and 1.0 percentage points below the final exit, the throughput of
the chosen design over the best design without early exits under the same budget (the search
runs both), the accuracies, and the sweep time. Target: >= 3.0x at 1.0 pp (ATHEENA: 2.00-2.78x).
EXITFLOW_DSE_EPOCHS sets the training epochs (default 6).
"""

from __future__ import annotations

import os
import tempfile
import time


def run() -> list[dict]:
    import torch

    from exitflow.data import DataSpec
    from exitflow.dse.sweep import sweep
    from exitflow.quant.config import ModelConfig, RunConfig, TrainConfig
    from exitflow.quant.profile import profile
    from exitflow.quant.train import train

    torch.set_num_threads(2)
    epochs = int(os.environ.get("EXITFLOW_DSE_EPOCHS", "6"))
    config = RunConfig(
        data=DataSpec(name="mnist5k", shape=(3, 32, 32)),
        model=ModelConfig(backbone="cnv", preset="w2a2", exits=("conv0", "conv1", "conv3", "conv5", "fc0")),
        train=TrainConfig(epochs=epochs),
    )
    rows = []
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        train(config, out, log=lambda line: None)
        train_s = time.perf_counter() - start
        profile(out, plot=False)
        for drop in (0.5, 1.0):
            start = time.perf_counter()
            r = sweep(out, "Pynq-Z2", max_drop_pp=drop, log=lambda line: None)
            rows.append({
                "board": "Pynq-Z2", "model": "cnv-w2a2", "dataset": "mnist5k@3x32x32", "max_drop_pp": drop,
                "gain": round(r.gain, 3), "fps": round(r.chosen.fps, 1), "no_exit_fps": round(r.no_exit.fps, 1),
                "fps_with_gates": round(r.fps_with_gates, 1), "exits": list(r.chosen.exits),
                "val_accuracy": round(r.chosen.accuracy, 4), "test_accuracy": round(r.test_accuracy, 4),
                "final_test_accuracy": round(r.final_test_accuracy, 4),
                "lut": r.chosen.resources[0], "bram18": r.chosen.resources[1], "dsp": r.chosen.resources[3],
                "sweep_s": round(time.perf_counter() - start, 1), "train_s": round(train_s, 1), "epochs": epochs,
            })
    return rows

"""`quant`: train lenet at w4a4 on the default split of each built-in data set, then profile.

Per data set: final-exit test accuracy, training time, and, with one max_prob threshold for all
exits, the share of test samples leaving before the final exit and the accuracy drop against
the final exit alone. The threshold is calibrated on the validation split (largest early
fraction with a drop of at most 0.5 pp there) and then applied to the test split, as a user would.
Targets (mnist5k): final_acc >= 0.975, early_fraction >= 0.75 at acc_drop_pp <= 0.5, train_s <= 180.
"""

from __future__ import annotations

import tempfile
import time

import torch

DATASETS = ("mnist5k", "digits")
MAX_DROP_PP = 0.5


def calibrate(summary: dict) -> int:
    """Index of the grid threshold with the largest early fraction and a validation accuracy
    drop of at most MAX_DROP_PP (the strictest threshold when none qualifies)."""
    val = summary["splits"]["val"]["max_prob"]["cascade"]
    ok = [i for i, d in enumerate(val["accuracy_drop_pp"]) if d <= MAX_DROP_PP]
    if not ok:
        return len(val["accuracy_drop_pp"]) - 1
    return max(ok, key=lambda i: (val["early_fraction"][i], -i))


def run_one(dataset: str) -> dict:
    from exitflow.core.data import DataSpec
    from exitflow.quant.config import RunConfig
    from exitflow.quant.profile import profile
    from exitflow.quant.train import train

    torch.set_num_threads(2)
    config = RunConfig(data=DataSpec(name=dataset))
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        train(config, out, log=lambda line: None)
        train_s = time.perf_counter() - start
        summary = profile(out, plot=False)
    i = calibrate(summary)
    test = summary["splits"]["test"]["max_prob"]
    return {
        "dataset": dataset,
        "final_acc": round(test["final_accuracy"], 4),
        "early_fraction": round(test["cascade"]["early_fraction"][i], 4),
        "acc_drop_pp": round(test["cascade"]["accuracy_drop_pp"][i], 3),
        "threshold": test["thresholds"][i],
        "train_s": round(train_s, 1),
        "epochs": config.train.epochs,
    }


def run() -> list[dict]:
    return [run_one(d) for d in DATASETS]

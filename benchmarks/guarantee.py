"""`guarantee`: does the chosen design keep its accuracy floor on new data, and what does the
guarantee cost? For cnv and lenet (trained as in `dse_gain`), the profile's held-out samples
(validation and test splits pooled) are split again at random into a validation and a test
part of the original sizes, :data:`SPLITS` times. On each split, two procedures choose the fastest
threshold configuration whose designs fit Pynq-Z2 (the sweep's candidates, each configuration at
its fastest design with unbounded gates, so every split is judged on the same hardware):

- ``point``: the floor met on the validation part (``--confidence 1``, the rule before the
  certificate);
- ``certified``: the floor certified at confidence 0.9 (:mod:`exitflow.dse.risk`, the default).

Per procedure: the share of splits where the chosen design's drop on the test part exceeds the
1 pp floor (target for ``certified``: at most 1 - confidence = 0.1), the median test drop and
the median gain over the fastest design without exits. ``gain_cost`` is the certified median
gain over the point-estimate one. The test part's drop is itself an estimate from a few
hundred samples: a design whose true drop is 0.7 pp exceeds 1 pp on the test part of some splits.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _dse_common import MODELS, run_folder, swept  # noqa: E402

SPLITS = 200
MAX_DROP = 0.01
CONFIDENCE = 0.9


def run() -> list[dict]:
    return [evaluate(model) for model in ("cnv", "lenet")]


def evaluate(model: str, splits: int = SPLITS) -> dict:
    from exitflow.core.artifacts import RunDir
    from exitflow.core.catalogue import get_board
    from exitflow.core.resources import Resources
    from exitflow.dse import risk
    from exitflow.dse.sweep import _inventory, _key, _load_run, outcomes

    result, _ = swept(model, 1.0, exhaustive=True)  # every configuration: each re-split certifies anew
    run = RunDir(run_folder(model))
    board = get_board("Pynq-Z2")
    config, net, prof = _load_run(run)
    limits = np.array(Resources.of(board.available).scaled(0.85))
    segments = _inventory(run, net, config.model.backbone, board, limits, log=lambda line: None)
    fastest: dict = {}
    for c in result.candidates:
        key = _key(c)
        fastest[key] = max(fastest.get(key, 0.0), c.fps)
    keys = sorted(fastest)
    fps = np.array([fastest[k] for k in keys])
    no_exit = [i for i, k in enumerate(keys) if not k[1]]
    val, test = (outcomes(keys, segments, prof, split) for split in ("val", "test"))
    correct = np.concatenate([val.correct, test.correct], axis=1)
    disagree = np.concatenate([val.disagree, test.disagree], axis=1)
    work = np.concatenate([val.work, test.work], axis=1)
    final = np.concatenate([prof["val_correct"][:, -1], prof["test_correct"][:, -1]])
    n_val = len(prof["val_correct"])
    floor = risk.Floor(max_drop=MAX_DROP)
    rng = np.random.default_rng(2026)
    picked: dict[str, list] = {"point": [], "certified": []}
    for _ in range(splits):
        order = rng.permutation(len(final))
        v, t = np.sort(order[:n_val]), np.sort(order[n_val:])
        val_drop = final[v].mean() - correct[:, v].mean(axis=1)
        admitted = {"point": np.flatnonzero(val_drop <= MAX_DROP + 1e-12)}
        cert = risk.certify(
            correct[:, v], final[v], work[:, v], floor, CONFIDENCE, exclude=no_exit, disagree=disagree[:, v]
        )
        admitted["certified"] = np.array(sorted(set(cert.certified) | set(no_exit)))
        for how, pool in admitted.items():
            i = pool[np.argmax(fps[pool])]
            test_drop = final[t].mean() - correct[i, t].mean()
            picked[how].append((fps[i] / fps[no_exit].max(), test_drop, len(keys[i][1])))
    row = {"model": model, "board": "Pynq-Z2", "data": MODELS[model]["data"], "splits": splits}
    row.update(
        {
            "validation_samples": n_val,
            "test_samples": len(final) - n_val,
            "configurations": len(keys),
            "floor_pp": 100 * MAX_DROP,
            "confidence": CONFIDENCE,
        }
    )
    for how, rows in picked.items():
        gain, drop, exits = (np.array(col) for col in zip(*rows, strict=True))
        row[f"{how}_share_test_drop_over_floor"] = round(float(np.mean(drop > MAX_DROP + 1e-12)), 3)
        row[f"{how}_median_test_drop_pp"] = round(100 * float(np.median(drop)), 3)
        row[f"{how}_median_gain"] = round(float(np.median(gain)), 3)
        row[f"{how}_min_gain"] = round(float(gain.min()), 3)
        row[f"{how}_share_without_exits"] = round(float(np.mean(exits == 0)), 3)
    row["gain_cost"] = round(row["certified_median_gain"] / row["point_median_gain"], 3)
    return row

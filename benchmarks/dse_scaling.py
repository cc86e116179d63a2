"""`dse_scaling`: how the design search scales with the candidate exits and the exits per design
(issue 17, section 1), on Pynq-Z2 with the sweep's defaults (1 pp accuracy floor, certified at
0.9 confidence).

Models: cnv (the `_dse_common` run, five candidate exits), and VGG-style chains of 4-bit conv
blocks written as a Brevitas user writes them (benchmarks/vgg_chain.py, ``backbone: custom``):
9 blocks give 8 candidate early exits ("vgg8"), 13 blocks 12 ("vgg12"); width 8 then 16
channels, trained 3 epochs on mnist5k padded to [3, 32, 32] (no CIFAR-10 here) with a 30 %
validation split: their accuracy is not the point, the search's cost is. Their early exits'
heads (max pool to 4 x 4, 256 features) learn faster than the final exit (global average pool,
16 features): after 3 epochs vgg8's final exit reaches 85.3 % on validation against 81-94 %
for its early exits (after 2: 70.6 %), vgg12's 95.5 % against 83-96 %. So vgg8's 1 pp floor
admits nearly every threshold configuration (the row's ``floor``: 908 of 938 certified when
written), the hard case for a search that costs only what keeps the floor; vgg12's admits few.

Cases: vgg8 with max_exits 3 (the default), 4 and 5; vgg12 with max_exits 4; cnv with max_exits
3 (the default case). Every sweep runs in a child process of its own, one after another, so
that its peak memory is the child's ``ru_maxrss``. Each case runs the streaming search
(``exhaustive=False``, the default); cnv and vgg8 at max_exits 3 and 4 also run the exhaustive
one (``exhaustive=True``, which keeps every design that fits: the reference) for the ratios
``search_speedup`` (exhaustive / streaming search seconds), ``memory_ratio`` (exhaustive /
streaming peak MB) and ``same_choice`` (chosen exits, thresholds and fps equal). The exhaustive
search at vgg8 max_exits 5 needs more than 12 GB and is not run. Every measured child runs
under a 10 GB address-space limit and a timeout of its whole sweep call (600 s at vgg8
max_exits 5, else 1800 s); a child that runs out of either is reported as "out of memory" /
"timeout" instead of its figures, with ``*_failed_after_seconds`` and ``*_failed_in`` (the
innermost frame of exitflow's in the traceback). Progress goes to stderr.

Before the cases, one warm-up sweep per run folder (max_exits 0) builds the one-time FINN
inventory of every stage and head, so that the cases exclude it: ``inventory_seconds`` (small
when a kept run's inventory was reused: ``inventory_reused``), ``warmup_sweep_seconds`` the whole
warm-up sweep. ``sweep_seconds`` is a case's whole sweep call (search, accuracy floor, selection
with its FIFO sizing, FINN's SetFolding baseline, the report), ``mb_before_sweep`` the child's
peak before it, ``floor`` the sweep's line on the accuracy floor.

Targets:
  * vgg8, max_exits 5: peak memory <= 2048 MB and search <= 60 s;
  * vgg12, max_exits 4: peak memory <= 2048 MB and search <= 120 s;
  * the default cases (cnv and vgg8 at max_exits 3): the streaming search no slower than the
    exhaustive one (``search_speedup`` >= 1).

EXITFLOW_DSE_RUNS names a folder where the trained runs are kept and reused (default: a
temporary folder, removed at exit); EXITFLOW_DSE_EPOCHS overrides cnv's epochs (default 15).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _dse_common import MODELS, _run_name  # noqa: E402

BOARD = "Pynq-Z2"
VGG_EPOCHS = 3
VGG_WIDTH = 8
VGG = {"vgg8": 9, "vgg12": 13}  # case -> blocks (blocks - 1 candidate early exits)
VGG_DATA = "mnist5k padded to 3x32x32 (no CIFAR-10 here), 30 % validation split"

MEMORY_LIMIT = 10 * 2**30  # bytes of address space of every measured child
TIMEOUT_S = 1800  # of a measured child (its whole sweep call)

# (model, max_exits, also run the exhaustive search, target peak MB, target search seconds,
# target: streaming no slower than exhaustive, timeout of the streaming child in seconds)
CASES = (
    ("vgg8", 3, True, None, None, True, TIMEOUT_S),
    ("vgg8", 4, True, None, None, False, TIMEOUT_S),
    ("vgg8", 5, False, 2048, 60, False, 600),  # far beyond its targets: a slow child is stopped
    ("vgg12", 4, False, 2048, 120, False, TIMEOUT_S),
    ("cnv", 3, True, None, None, True, TIMEOUT_S),
)

# the child: one sweep, its figures on one JSON line on stdout
CHILD = r"""
import json, resource, sys, time
folder, benchmarks, max_exits, exhaustive, limit = sys.argv[1:6]
if int(limit):
    resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))
sys.path.insert(0, benchmarks)  # the vgg chain's factory
import exitflow.dse.sweep as sweeping
from exitflow.quant.profile import load_profile

timed = {}
inventory = getattr(sweeping, "_inventory", None)
if inventory is not None:  # its seconds, read only: the inventory is built by the first sweep of a run
    def _timed_inventory(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inventory(*args, **kwargs)
        finally:
            timed["inventory_seconds"] = round(time.perf_counter() - start, 1)
    sweeping._inventory = _timed_inventory
names = [str(n) for n in load_profile(folder)["exit_names"]]
lines = []
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
result = sweeping.sweep(folder, BOARD, max_exits=int(max_exits), exhaustive=exhaustive == "1", log=lines.append)
wall = time.perf_counter() - start
stats, c = result.search_stats, result.chosen
print("RESULT " + json.dumps({
    "candidate_exits": stats["candidate_exits"],
    "search_seconds": round(stats["search_seconds"], 2),
    "selection_seconds": round(stats["selection_seconds"], 2),
    "sweep_seconds": round(wall, 1),
    **timed,
    "designs": stats["designs"],
    "skipped_threshold_combinations": stats["skipped_threshold_combinations"],
    "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    "mb_before_sweep": round(before),
    "chosen": {
        "exits": [names[k] for k in c.exits],
        "thresholds": [float(t) for t in c.thresholds],
        "fps": float(c.fps),
        "lut": float(c.resources.lut),
        "accuracy": round(float(c.accuracy), 4),
    },
    "floor": next((line for line in lines if line.startswith("accuracy floor")), None),
}), flush=True)
""".replace("BOARD", repr(BOARD))


def run() -> list[dict]:
    folders = {}  # model -> (folder, train seconds, profile seconds)
    for model in dict.fromkeys(case[0] for case in CASES):
        folders[model] = _prepare(model)
    warm = {}  # model -> the warm-up's figures
    for model, (folder, _, _) in folders.items():
        reused = (Path(folder) / "sweep" / "inventory").is_dir()
        out = _child(folder, 0, exhaustive=False, limit=0, timeout=None)
        if "status" in out:
            raise RuntimeError(f"dse_scaling: the warm-up sweep of {folder} failed: {out['status']}")
        warm[model] = {
            "inventory_seconds": out.get("inventory_seconds"),
            "inventory_reused": reused,
            "warmup_sweep_seconds": out["sweep_seconds"],
        }
    rows = []
    for model, max_exits, with_exhaustive, peak_target, search_target, no_slower_target, timeout in CASES:
        folder, train_s, profile_s = folders[model]
        streaming = _child(folder, max_exits, exhaustive=False, limit=MEMORY_LIMIT, timeout=timeout)
        row = {
            "case": f"{model} max_exits {max_exits}",
            "model": model,
            "data": MODELS["cnv"]["data"] if model == "cnv" else VGG_DATA,
            "max_exits": max_exits,
            "train_seconds": train_s,  # None: a kept run (EXITFLOW_DSE_RUNS)
            "profile_seconds": profile_s,
            **warm[model],
            "streaming": streaming.pop("status", "ok"),
        }
        streaming.pop("inventory_seconds", None)  # the check that the warm-up's inventory is fresh
        for key in ("failed_after_seconds", "failed_in"):
            if key in streaming:
                row[f"streaming_{key}"] = streaming.pop(key)
        row.update(streaming)
        if with_exhaustive:
            reference = _child(folder, max_exits, exhaustive=True, limit=MEMORY_LIMIT, timeout=TIMEOUT_S)
            row["exhaustive"] = reference.pop("status", "ok")
            for key in ("search_seconds", "selection_seconds", "designs", "peak_mb", "chosen"):
                row[f"exhaustive_{key}"] = reference.get(key)
            for key in ("failed_after_seconds", "failed_in"):
                if key in reference:
                    row[f"exhaustive_{key}"] = reference[key]
            both = row["streaming"] == "ok" and row["exhaustive"] == "ok"
            row["search_speedup"] = (
                round(reference["search_seconds"] / max(streaming["search_seconds"], 1e-3), 2) if both else None
            )
            row["memory_ratio"] = round(reference["peak_mb"] / streaming["peak_mb"], 2) if both else None
            row["same_choice"] = _same(streaming["chosen"], reference["chosen"]) if both else None
        else:
            row["exhaustive"] = "not run (needs more than 12 GB)" if model == "vgg8" else "not run"
        ok = row["streaming"] == "ok"
        if peak_target is not None:
            row["target_peak_mb"] = peak_target
            row["meets_memory_target"] = ok and streaming["peak_mb"] <= peak_target
        if search_target is not None:
            row["target_search_seconds"] = search_target
            row["meets_search_target"] = ok and streaming["search_seconds"] <= search_target
        if no_slower_target:
            speedup = row.get("search_speedup")
            row["no_slower_than_exhaustive"] = speedup is not None and speedup >= 1.0
        rows.append(row)
    return rows


def _same(a: dict, b: dict) -> bool:
    return a["exits"] == b["exits"] and a["thresholds"] == b["thresholds"] and a["fps"] == b["fps"]


def _child(folder: str, max_exits: int, exhaustive: bool, limit: int, timeout: float | None) -> dict:
    """One sweep of ``folder`` in a child process under ``limit`` bytes of address space (0: none)
    and ``timeout`` seconds: its JSON figures, or ``{"status": ...}`` when it did not finish."""
    search = "exhaustive" if exhaustive else "streaming"
    print(f"dse_scaling: {Path(folder).name}, max_exits {max_exits}, {search} search", file=sys.stderr, flush=True)
    args = [sys.executable, "-c", CHILD, folder, str(HERE), str(max_exits), "1" if exhaustive else "0", str(limit)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    start = time.perf_counter()
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # the child and whatever it started
        child.communicate()
        return {"status": "timeout", "failed_after_seconds": timeout}
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if child.returncode == 0 and lines:
        return json.loads(lines[-1][len("RESULT ") :])
    failed = {"failed_after_seconds": round(time.perf_counter() - start, 1)}
    frames = [line.strip() for line in err.splitlines() if line.strip().startswith('File "')]
    exitflow_frames = [f for f in frames if "site-packages" not in f] or frames
    if exitflow_frames:  # the innermost frame of exitflow's own (else of a library)
        failed["failed_in"] = exitflow_frames[-1].replace(str(HERE.parent) + "/", "")
    if any(sign in err for sign in ("MemoryError", "bad_alloc", "allocate memory", "Unable to allocate")):
        return {"status": "out of memory", **failed}
    last = err.strip().splitlines()[-1] if err.strip() else f"exit status {child.returncode}"
    return {"status": f"failed: {last}", **failed}


def _prepare(model: str) -> tuple[str, float | None, float | None]:
    """(run folder of ``model``, trained and profiled; train seconds, profile seconds), the
    seconds None for what a kept run (EXITFLOW_DSE_RUNS) already had."""
    import torch

    from exitflow.core.data import DataSpec
    from exitflow.core.schema import FrozenMap
    from exitflow.quant.config import HeadConfig, ModelConfig, RunConfig, TrainConfig
    from exitflow.quant.profile import profile
    from exitflow.quant.train import train

    torch.set_num_threads(2)
    if model == "cnv":
        spec = MODELS["cnv"]
        epochs = int(os.environ.get("EXITFLOW_DSE_EPOCHS", spec["epochs"]))
        name = _run_name("cnv", epochs, 0)
        data = DataSpec(name="mnist5k", shape=spec["shape"], val_fraction=spec["val_fraction"])
        model_config = ModelConfig(
            backbone="cnv", preset=spec["preset"], exits=spec["exits"], head=HeadConfig(**spec.get("head", {}))
        )
    else:
        from vgg_chain import exit_names

        blocks, epochs = VGG[model], VGG_EPOCHS
        name = f"vgg{blocks}blocks-w{VGG_WIDTH}-{epochs}ep-val0.3"
        data = DataSpec(name="mnist5k", shape=(3, 32, 32), val_fraction=0.3)
        model_config = ModelConfig(
            backbone="custom",
            preset="w4a4",  # bits of exitflow's exit heads
            factory="vgg_chain:vgg_chain",
            factory_args=FrozenMap({"num_classes": 10, "blocks": blocks, "width": VGG_WIDTH}),
            exits=exit_names(blocks),
            classifier="fc",
        )
    keep = os.environ.get("EXITFLOW_DSE_RUNS")
    if keep:
        folder = os.path.join(keep, name)
    else:
        folder = tempfile.mkdtemp(prefix=f"exitflow_bench_{model}_")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    config = RunConfig(data=data, model=model_config, train=TrainConfig(epochs=epochs, seed=0))
    train_s = profile_s = None
    if not os.path.exists(os.path.join(folder, "model.pt")):
        start = time.perf_counter()
        train(config, folder, log=lambda line: None)
        train_s = round(time.perf_counter() - start, 1)
    if not os.path.exists(os.path.join(folder, "profile.npz")):
        start = time.perf_counter()
        profile(folder, plot=False)
        profile_s = round(time.perf_counter() - start, 1)
    return folder, train_s, profile_s

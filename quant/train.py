"""Training a multi-exit network on the CPU, reproducibly from a seed, resumable per epoch.

Modes (``train.mode``):

``end_to_end``
    all weights, loss = sum_k w_k * CE(exit_k).
``exits_only``
    the backbone and the final exit come from a trained run (``train.backbone_from``) and are
    frozen, weights and batch-norm statistics alike, so the final exit stays bit-identical; only
    the early heads learn ("train once, deploy everywhere").
``distill``
    as end_to_end, but every early exit also learns from the final exit's softened output:
    w_k * ((1 - alpha) * CE + alpha * T^2 * KL(final/T || exit_k/T)), the teacher detached.

Every epoch ends with a checkpoint (``DIR/checkpoint.pt``) and one summary line; an interrupted
run resumes from the last finished epoch and ends exactly where an uninterrupted one would,
because every epoch reseeds from (seed, epoch). The run writes ``DIR/config.yaml`` (the resolved
config), ``DIR/train_log.json`` and, at the end, ``DIR/model.pt``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from exitflow.core.data import ImageSet, load_splits
from exitflow.core.errors import ConfigError, ExitflowError
from exitflow.core.files import atomic_write, user_path
from exitflow.core.schema import dump_yaml, to_data

from . import checkpoint as ckpt
from .config import RunConfig
from .network import MultiExitNet, build_model


@dataclass(frozen=True)
class TrainResult:
    out: Path
    epochs_run: int  # epochs this call ran (0 when the run was complete already)
    val_accuracy: dict[str, float]  # per exit, after the last epoch
    seconds: float


def to_input(x: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images -> the float tensor the model takes (pixel / 255)."""
    return torch.from_numpy(np.ascontiguousarray(x)).to(dtype).div_(255.0)


def _shift(x: torch.Tensor, rng: np.random.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translation of each image by up to ``max_shift`` pixels, zero filled."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy = rng.integers(0, 2 * max_shift + 1, n)
    dx = rng.integers(0, 2 * max_shift + 1, n)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


@torch.no_grad()
def evaluate(model: MultiExitNet, data: ImageSet, batch_size: int = 500) -> dict[str, float]:
    """Accuracy of every exit on ``data``."""
    was_training = model.training
    model.eval()
    correct = np.zeros(len(model.exit_names))
    for start in range(0, len(data), batch_size):
        x = to_input(data.x[start : start + batch_size])
        y = torch.from_numpy(data.y[start : start + batch_size])
        for k, out in enumerate(model(x)):
            correct[k] += (out.value.argmax(dim=1) == y).sum().item()
    model.train(was_training)
    return {name: float(c / len(data)) for name, c in zip(model.exit_names, correct, strict=False)}


def _exit_weights(config: RunConfig, model: MultiExitNet) -> list[float]:
    n = len(model.exit_names)
    weights = config.train.exit_weights
    if weights is None:
        return [1.0] * n
    if len(weights) != n:
        raise ConfigError(
            f"train.exit_weights: {len(weights)} weights for {n} exits ({', '.join(model.exit_names)}); "
            "give one per exit"
        )
    return list(weights)


def _loss(config: RunConfig, outputs: list, y: torch.Tensor, weights: list[float]) -> tuple[torch.Tensor, list[float]]:
    logits = [o.value for o in outputs]
    mode = config.train.mode
    per_exit = [F.cross_entropy(z, y) for z in logits]
    if mode == "distill":
        t, alpha = config.train.temperature, config.train.alpha
        teacher = F.softmax(logits[-1].detach() / t, dim=1)
        for k, z in enumerate(logits[:-1]):
            kd = F.kl_div(F.log_softmax(z / t, dim=1), teacher, reduction="batchmean") * t * t
            per_exit[k] = (1 - alpha) * per_exit[k] + alpha * kd
    if mode == "exits_only":
        per_exit = per_exit[:-1]
        weights = weights[:-1]
    total = sum(w * loss for w, loss in zip(weights, per_exit, strict=False))
    return total, [float(loss.detach()) for loss in per_exit]


def _freeze_backbone(model: MultiExitNet) -> None:
    for module in model.frozen_modules():
        for p in module.parameters():
            p.requires_grad_(False)


def _backbone_eval(model: MultiExitNet) -> None:
    """Frozen parts stay in eval mode: no batch-norm or quantiser statistics change."""
    for module in model.frozen_modules():
        module.eval()


def _load_backbone(config: RunConfig, model: MultiExitNet, input_shape, num_classes) -> None:
    source = ckpt.load(Path(config.train.backbone_from).expanduser())
    theirs = ckpt.run_config(source)
    mine = config.model
    for key in ("backbone", "preset", "block_bits", "width", "head", "factory", "factory_args", "classifier"):
        if getattr(theirs.model, key) != getattr(mine, key):
            raise ckpt.CheckpointError(
                f"{source['path']}: backbone checkpoint has model.{key} = {to_data(getattr(theirs.model, key))!r}, "
                f"this config {to_data(getattr(mine, key))!r}; they must match for exits_only"
            )
    if tuple(source["input_shape"]) != tuple(input_shape) or int(source["num_classes"]) != num_classes:
        raise ckpt.CheckpointError(
            f"{source['path']}: backbone was trained on {source['input_shape']} images with {source['num_classes']} "
            f"classes; this data has {list(input_shape)} and {num_classes}"
        )
    ckpt.load_state(model, source["state_dict"], source["path"], prefixes=model.frozen_prefixes())


def _check_out(out: Path, config: RunConfig) -> dict | None:
    """Refuse to overwrite another run; return the checkpoint to resume from, if any."""
    resolved = dump_yaml(config)
    config_file = out / "config.yaml"
    if config_file.exists() and config_file.read_text() != resolved:
        raise ExitflowError(
            f"{out} already holds a run with a different config ({config_file}); "
            "choose another --out folder (nothing was overwritten)"
        )
    partial = out / "checkpoint.pt"
    if partial.exists():
        data = ckpt.load(partial)
        if dump_yaml(ckpt.run_config(data)) != resolved:
            raise ExitflowError(f"{partial} was written by a different config; choose another --out folder")
        return data
    return None


def train(
    config: RunConfig, out: str | Path, log: Callable[[str], None] = print, progress: bool | None = None
) -> TrainResult:
    """Train (or resume, or find finished) the run ``config`` in folder ``out``."""
    out = user_path(out)
    started = time.perf_counter()
    resume = _check_out(out, config)
    if (out / "model.pt").exists() and resume is None:
        done = ckpt.load(out / "model.pt")
        if dump_yaml(ckpt.run_config(done)) == dump_yaml(config):
            log(f"{out}/model.pt is complete for this config; nothing to do")
            return TrainResult(out, 0, done["val_accuracy"], 0.0)
    splits = load_splits(config.data)
    input_shape, num_classes = splits.train.shape, splits.num_classes
    torch.manual_seed(config.train.seed)
    model = build_model(config.model, input_shape, num_classes)
    weights = _exit_weights(config, model)
    if config.train.mode == "exits_only":
        _load_backbone(config, model, input_shape, num_classes)
        _freeze_backbone(model)
    if resume is not None:
        # before the optimizer is built: Brevitas may replace parameter objects when loading
        ckpt.load_state(model, resume["state_dict"], resume["path"])
        ckpt.restore_quantiser_stats(model, resume.get("quant_stats", {}))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.train.lr, weight_decay=config.train.weight_decay)
    epochs = config.train.epochs
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.5 * (1 + math.cos(math.pi * e / epochs)))
    history: list[dict] = []
    first = 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        history = list(resume["history"])
        first = int(resume["epoch"])
        log(f"resuming {out} after epoch {first}/{epochs}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_yaml(config))
    show = sys.stderr.isatty() if progress is None else progress
    from tqdm import tqdm

    n = len(splits.train)
    val = {}
    for epoch in range(first, epochs):
        rng = np.random.default_rng([config.train.seed, epoch])
        torch.manual_seed(config.train.seed * 100_003 + epoch)
        model.train()
        if config.train.mode == "exits_only":
            _backbone_eval(model)
        order = rng.permutation(n)
        sums = np.zeros(len(weights))
        batches = range(0, n, config.train.batch_size)
        for start in tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", disable=not show, leave=False, unit="batch"):
            idx = order[start : start + config.train.batch_size]
            if len(idx) < 2:  # batch norm needs two samples
                continue
            x = to_input(splits.train.x[idx])
            if config.train.augment:
                x = _shift(x, rng)
            y = torch.from_numpy(splits.train.y[idx])
            loss, parts = _loss(config, model(x), y, weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums[: len(parts)] += np.asarray(parts) * len(idx)
        schedule.step()
        val = evaluate(model, splits.val)
        trained = model.exit_names[:-1] if config.train.mode == "exits_only" else model.exit_names
        history.append(
            {
                "epoch": epoch + 1,
                "loss": {name: float(sums[k] / n) for k, name in enumerate(trained)},
                "val_accuracy": val,
            }
        )
        ckpt.save(
            out / "checkpoint.pt",
            {
                "config": to_data(config),
                "epoch": epoch + 1,
                "state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "history": history,
                "quant_stats": ckpt.quantiser_stats(model),
                "input_shape": list(input_shape),
                "num_classes": num_classes,
            },
        )
        _write_log(out, config, model, history)
        log(f"epoch {epoch + 1}/{epochs}: val accuracy " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in val.items()))
    if not val:
        val = evaluate(model, splits.val)
    ckpt.save(
        out / "model.pt",
        {
            "config": to_data(config),
            "state_dict": model.state_dict(),
            "input_shape": list(input_shape),
            "num_classes": num_classes,
            "exit_names": model.exit_names,
            "val_accuracy": val,
        },
    )
    (out / "checkpoint.pt").unlink(missing_ok=True)
    return TrainResult(out, epochs - first, val, time.perf_counter() - started)


def _write_log(out: Path, config: RunConfig, model: MultiExitNet, history: list[dict]) -> None:
    log = {"mode": config.train.mode, "exits": model.exit_names, "epochs": history}
    atomic_write(out / "train_log.json", lambda tmp: tmp.write_text(json.dumps(log, indent=1)))

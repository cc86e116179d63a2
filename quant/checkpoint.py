"""Checkpoints: what ``model.pt`` and ``checkpoint.pt`` hold, and loading them safely.

Files are written atomically and read with ``torch.load(..., weights_only=True)``: a checkpoint
holds tensors and plain data only, never pickled code. A corrupt file, a file that is not an
exitflow checkpoint, or one trained for another architecture is one clear error line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from exitflow.errors import ConfigError, ExitflowError
from exitflow.schema import from_data, to_data

FORMAT = "exitflow-checkpoint"
VERSION = 1


class CheckpointError(ExitflowError):
    """A checkpoint that is missing, corrupt, or does not fit the model."""


def save(path: Path, payload: dict[str, Any]) -> None:
    from exitflow.files import atomic_write

    atomic_write(path, lambda tmp: torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp))


def load(path: Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a damaged file
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({type(err).__name__}: {_first_line(err)})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an exitflow checkpoint (written by something else)")
    if data.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {data.get('version')} is not supported (expected {VERSION})")
    data["path"] = str(path)
    return data


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else ""


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str, prefixes: tuple[str, ...] | None = None) -> None:
    """Load ``state`` into ``model`` (only keys under ``prefixes`` when given), or explain in one
    line why the checkpoint belongs to another architecture."""
    own = model.state_dict()
    wanted = {k: v for k, v in own.items() if prefixes is None or k.startswith(prefixes)}
    missing = [k for k in wanted if k not in state]
    shape = [k for k in wanted if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or shape:
        what = f"lacks {missing[0]}" if missing else (
            f"has {shape[0]} of shape {tuple(state[shape[0]].shape)}, the model {tuple(own[shape[0]].shape)}")
        raise CheckpointError(f"{path}: checkpoint is for a different architecture: it {what}")
    model.load_state_dict({**own, **{k: state[k] for k in wanted}})


def run_config(data: dict[str, Any]):
    """The RunConfig a checkpoint was trained with."""
    from .config import RunConfig

    try:
        return from_data(RunConfig, data.get("config"), source=f"{data.get('path', 'checkpoint')} (config)")
    except ConfigError as err:
        raise CheckpointError(str(err)) from None


def load_model(path: Path):
    """(RunConfig, MultiExitNet in eval mode, checkpoint dict) from a run folder or model.pt."""
    from .network import build_model

    data = load(path)
    config = run_config(data)
    model = build_model(config.model, tuple(data["input_shape"]), int(data["num_classes"]))
    load_state(model, data["state_dict"], data["path"])
    return config, model.eval(), data


__all__ = ["CheckpointError", "load", "load_model", "load_state", "run_config", "save", "to_data"]

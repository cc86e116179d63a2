"""Checkpoints: what ``model.pt`` and ``checkpoint.pt`` hold, and loading them safely.

Files are written atomically and read with ``torch.load(..., weights_only=True)``: a checkpoint
holds tensors and plain data only, never pickled code. Nor does loading one import or call
anything it names: the model is built from the config the user keeps beside it (the run folder's
``config.yaml``, written by train) or passes, and a checkpoint whose stored config differs from
that is refused. A corrupt file, a file that is not an exitflow checkpoint, or one trained for
another architecture is one clear error line.
"""

from __future__ import annotations

import errno
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from exitflow.core.errors import ConfigError, ExitflowError
from exitflow.core.files import atomic_write
from exitflow.core.schema import from_data, load_file, to_data

from .config import RunConfig
from .network import build_model

FORMAT = "exitflow-checkpoint"
VERSION = 1


class CheckpointError(ExitflowError):
    """A checkpoint that is missing, corrupt, or does not fit the model."""


def save(path: Path, payload: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp))


def load(path: Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on foreign files
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a damaged file
        raise CheckpointError(
            f"{path}: corrupt or unreadable checkpoint ({_reason(err)}); "
            "train it again or point at the run folder's own model.pt"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an exitflow checkpoint (written by something else)")
    if data.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {data.get('version')} is not supported (expected {VERSION})")
    data["path"] = str(path)
    return data


def _reason(err: Exception) -> str:
    """Why torch could not read a file, in exitflow's words: never torch's advice to load with
    ``weights_only=False`` (which would run whatever code the file holds)."""
    text = str(err)
    if "Weights only load failed" in text:
        if "Unsupported global" in text or "GLOBAL" in text:
            return (
                "it holds Python objects, not only tensors and plain data; exitflow never loads code from a checkpoint"
            )
        return "its pickle data is invalid: truncated, damaged or not a torch file"
    if isinstance(err, EOFError) or not text.strip():
        return "the file is empty or truncated"
    if "zip archive" in text or "central directory" in text:
        return "not a complete torch archive: truncated or damaged"
    if isinstance(err, OSError) and err.errno == errno.EINVAL:
        # torch's zip reader seeks past the end of an archive cut short after its first records
        return "not a complete torch archive: truncated or damaged"
    lines = [ln for ln in text.strip().splitlines() if "weights_only" not in ln]
    first = re.sub(r"\x1b\[[0-9;]*m", "", lines[0]).strip()[:160] if lines else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def _full_state_keys(model: torch.nn.Module) -> list[str]:
    """Every key ``model`` accepts when loading, including the learned scales of Brevitas's
    stats-initialised quantisers (``ParameterFromRuntimeStatsScaling``, the default of
    ``QuantReLU``/``QuantIdentity``), which a model that has not seen data leaves out of its
    ``state_dict`` although ``load_state_dict`` takes them."""
    from brevitas import config as brevitas_config

    full = brevitas_config._FULL_STATE_DICT
    brevitas_config._FULL_STATE_DICT = True
    try:
        return list(model.state_dict().keys())
    finally:
        brevitas_config._FULL_STATE_DICT = full


def load_state(
    model: torch.nn.Module, state: dict[str, torch.Tensor], path: str, prefixes: tuple[str, ...] | None = None
) -> None:
    """Load ``state`` into ``model`` (only keys under ``prefixes`` when given), or explain in one
    line why the checkpoint belongs to another architecture.

    A Brevitas quantiser whose scale is initialised from data saves its scale once it has seen
    data; loading that scale ends its statistics collection, as Brevitas intends (its
    ``_load_from_state_dict``), so the loaded model computes what the saved one did. A quantiser
    that had not seen data when saved has no scale in the file and keeps collecting."""
    own = model.state_dict(keep_vars=True)
    accepted = _full_state_keys(model)

    def under(key: str) -> bool:
        return prefixes is None or key.startswith(prefixes)

    required = [k for k in own if under(k)]
    missing = [k for k in required if k not in state]
    shape = [k for k in required if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or shape:
        what = (
            f"lacks {missing[0]}"
            if missing
            else (f"has {shape[0]} of shape {tuple(state[shape[0]].shape)}, the model {tuple(own[shape[0]].shape)}")
        )
        raise CheckpointError(f"{path}: checkpoint is for a different architecture: it {what}")
    loaded = {k: state[k] for k in accepted if under(k) and k in state}
    # A module shared between a loaded part and a kept part (an exit head re-applies the
    # backbone's quantiser) is listed under both names: it takes the loaded value under both.
    by_tensor = {id(own[k]): loaded[k] for k in loaded if k in own}
    merged = {k: by_tensor.get(id(v), v.detach()) for k, v in own.items()}
    merged.update(loaded)
    try:
        result = model.load_state_dict(merged, strict=False)
    except RuntimeError as err:  # size mismatch of a key the fresh model does not list
        raise CheckpointError(
            f"{path}: checkpoint is for a different architecture: {str(err).strip().splitlines()[-1].strip()[:200]}"
        ) from None
    # Only the stats-initialised scales a model that has not seen data omits may stay missing.
    left = [k for k in result.missing_keys if k in own]
    if left:
        raise CheckpointError(f"{path}: checkpoint is for a different architecture: it lacks {left[0]}")


def quantiser_stats(model: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """What a state dict leaves out of Brevitas's stats-initialised quantisers and a resumed run
    needs to continue exactly: how many batches each has collected, the running statistic and the
    parameter the statistic will initialise."""
    from brevitas.core.scaling import ParameterFromRuntimeStatsScaling

    return {
        name: {"counter": int(m.counter), "buffer": m.buffer.detach().clone(), "value": m.value.detach().clone()}
        for name, m in model.named_modules()
        if isinstance(m, ParameterFromRuntimeStatsScaling)
    }


def restore_quantiser_stats(model: torch.nn.Module, stats: dict[str, dict[str, Any]]) -> None:
    """Put back what :func:`quantiser_stats` saved, after :func:`load_state`, for the quantisers
    that were still collecting statistics (loading their scale ended the collection)."""
    from brevitas.core.scaling import ParameterFromRuntimeStatsScaling

    for name, m in model.named_modules():
        saved = stats.get(name)
        if isinstance(m, ParameterFromRuntimeStatsScaling) and saved and saved["counter"] <= m.collect_stats_steps:
            with torch.no_grad():
                m.buffer.copy_(saved["buffer"])
                m.value.copy_(saved["value"])
            m.counter = int(saved["counter"])


def run_config(data: dict[str, Any]):
    """The RunConfig a checkpoint was trained with (read as data: nothing named in it is
    imported or called)."""
    try:
        return from_data(RunConfig, data.get("config"), source=f"{data.get('path', 'checkpoint')} (config)")
    except ConfigError as err:
        raise CheckpointError(str(err)) from None


def _first_difference(a: Any, b: Any, key: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in [*a, *(k for k in b if k not in a)]:
            found = _first_difference(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))
            if found:
                return found
        return None
    return None if a == b else (key, a, b)


def trusted_config(path: Path, data: dict[str, Any], config=None):
    """The RunConfig to build the checkpoint's model from: ``config`` (a RunConfig or a YAML
    file) when given, else the run folder's ``config.yaml`` that train wrote beside it. The
    checkpoint's own stored config is only compared with it, never used to import anything: a
    checkpoint whose stored config differs is refused. Without either, a built-in backbone is
    built from the stored config (it names nothing to import); a custom one is refused."""
    stored = run_config(data)
    source = None
    if config is None:
        candidate = Path(path).parent / "config.yaml"
        if candidate.is_file():
            source = str(candidate)
            config = load_file(RunConfig, candidate)
    elif not isinstance(config, RunConfig):
        source = str(config)
        config = load_file(RunConfig, config)
    else:
        source = "the given config"
    if config is None:
        if stored.model.backbone == "custom":
            raise CheckpointError(
                f"{path}: no config.yaml beside it, and a custom backbone's model.factory is never taken from the "
                "checkpoint itself; put the run's config.yaml next to model.pt (or pass the config)"
            )
        return stored
    diff = _first_difference(to_data(stored), to_data(config))
    if diff:
        key, theirs, ours = diff
        raise CheckpointError(
            f"{path}: its stored config has {key} = {theirs!r} but {source} has {ours!r}; the checkpoint "
            "was not trained with this config (use the config it was trained with, or train again)"
        )
    return config


def load_model(path: Path, config=None):
    """(RunConfig, MultiExitNet in eval mode, checkpoint dict) from a run folder or model.pt.

    The model is built from ``config`` (a RunConfig or YAML file) or the run folder's
    ``config.yaml`` (see :func:`trusted_config`), never from what the checkpoint names."""
    data = load(path)
    config = trusted_config(Path(data["path"]), data, config)
    model = build_model(config.model, tuple(data["input_shape"]), int(data["num_classes"]))
    load_state(model, data["state_dict"], data["path"])
    return config, model.eval(), data


__all__ = [
    "CheckpointError",
    "load",
    "load_model",
    "load_state",
    "run_config",
    "quantiser_stats",
    "restore_quantiser_stats",
    "save",
    "to_data",
    "trusted_config",
]

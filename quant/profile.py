"""Profiling a trained multi-exit network: what every exit says about every sample.

``profile(DIR)`` runs the quantised model on the validation and test splits and writes

* ``DIR/profile.npz``: per split, per sample and exit: integer logits, prediction (the class),
  correct or not, and the confidence code of each policy; per exit: scale and logit bit width.
  A policy that uses another's code (``agreement`` uses ``max_prob``'s,
  :data:`~exitflow.quant.policies.SAME_CODE`) is not stored twice: :func:`load_profile` gives
  ``{split}_code_agreement`` as the ``max_prob`` array, and the class its agreement test
  compares is ``{split}_pred``;
* ``DIR/profile.json``: per split and exit, on a threshold grid: exit rate and the accuracy of
  the samples that exit there; and for the whole cascade with that threshold at every exit: the
  fraction leaving at each exit, the share leaving early, and the cumulative accuracy;
* ``DIR/profile.png``: exit rate and accuracy against threshold, one curve per exit.

Every figure comes from :mod:`exitflow.quant.policies`, the same integer function the hardware
uses, so exit rates predicted here are the exit rates the hardware produces.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from exitflow.core.data import ImageSet, load_splits
from exitflow.core.errors import ConfigError
from exitflow.core.files import atomic_write, user_path

from . import checkpoint as ckpt
from .network import MultiExitNet
from .policies import DEFAULT_FRAC_BITS, POLICIES, SAME_CODE, code_policy, confidence_code, exits, route, threshold_code
from .train import to_input

#: max_prob thresholds of the grid (confidence), margin thresholds are in logit units
#: The policies whose confidence codes profile.npz holds (the others share one of them)
STORED_CODES: tuple[str, ...] = tuple(p for p in POLICIES if p not in SAME_CODE)

MAX_PROB_GRID = tuple(np.round(np.concatenate([np.arange(0.30, 0.899, 0.05), np.arange(0.90, 1.0, 0.005)]), 4).tolist())


@dataclass(frozen=True, eq=False)
class SplitProfile:
    """Everything the exits say about one split."""

    logits: np.ndarray  # (samples, exits, classes) int64
    labels: np.ndarray  # (samples,)
    pred: np.ndarray  # (samples, exits)
    codes: dict[str, np.ndarray]  # policy -> (samples, exits) int64, every policy (shared codes are one array)

    @property
    def correct(self) -> np.ndarray:
        return self.pred == self.labels[:, None]


@contextlib.contextmanager
def reference_model(model: MultiExitNet) -> Iterator[MultiExitNet]:
    """``model`` in float64 and eval mode for the ``with`` block: the reference the hardware is
    held to. Back in float32 afterwards, bit for bit (float32 -> float64 -> float32 is exact);
    converted in place, as a copy would keep hooks bound to the original (a user's model read by
    hooks, ``backbone: custom``).

    In float32, the Brevitas model's integer outputs depend on how the convolution library sums
    (a batch of 500 and a batch of 1 differ): a pre-activation within float32 rounding of a
    quantisation boundary lands on either side, and 4 of 750 samples of a ResNet-8 changed their
    confidence code that way. In float64 the model is the function of its (float32) parameters to
    about 1e-13, the same in every batch, and the integer hardware computes it."""
    training = model.training
    dtype = next(model.parameters()).dtype
    model.double().eval()
    try:
        yield model
    finally:
        model.to(dtype).train(training)


@torch.no_grad()
def run_exits(model: MultiExitNet, data: ImageSet, frac_bits: int = DEFAULT_FRAC_BITS, batch_size: int = 500):
    """(SplitProfile, scales, logit bit widths) of ``model`` on ``data``: the integer logits of
    the float64 :func:`reference_model`, the scales the float32 model (and so its export, from
    which the hardware's ROM is built) has."""
    model.eval()
    outs = model(to_input(data.x[:1]))
    scales, bits = [float(o.scale) for o in outs], [int(o.bit_width) for o in outs]
    logits = []
    with reference_model(model) as exact:
        for start in range(0, len(data), batch_size):
            outs = exact(to_input(data.x[start : start + batch_size], torch.float64))
            logits.append(np.stack([o.int().numpy().astype(np.int64) for o in outs], axis=1))
            if [int(o.bit_width) for o in outs] != bits:
                raise RuntimeError("exit bit widths changed between batches; the model is not in eval mode")
    z = np.concatenate(logits)
    codes = {}
    for policy in STORED_CODES:
        per_exit = [confidence_code(policy, z[:, k], scales[k], bits[k], frac_bits) for k in range(z.shape[1])]
        codes[policy] = np.stack([c for _, c in per_exit], axis=1)
    for policy in POLICIES:
        codes.setdefault(policy, codes[code_policy(policy)])
    pred = np.argmax(z, axis=2)
    return SplitProfile(z, data.y.astype(np.int64), pred, codes), np.array(scales), np.array(bits)


def margin_grid(scales: np.ndarray, codes: np.ndarray) -> tuple[float, ...]:
    """Margin thresholds in logit units covering the observed margins."""
    top = float(np.percentile(codes * scales[None, :], 99)) if codes.size else 1.0
    return tuple(np.round(np.linspace(0.0, max(top, 1e-6), 40), 6).tolist())


def threshold_table(
    split: SplitProfile,
    policy: str,
    grid: tuple[float, ...],
    scales: np.ndarray,
    names: list[str],
    frac_bits: int = DEFAULT_FRAC_BITS,
) -> dict:
    """Per exit and for the whole cascade, at every threshold of ``grid``."""
    n, e = split.pred.shape
    correct = split.correct
    final_acc = float(correct[:, -1].mean())
    per_exit = {name: {"exit_rate": [], "accuracy_of_exiting": []} for name in names}
    cascade = {"exit_fractions": [], "early_fraction": [], "accuracy": [], "accuracy_drop_pp": []}
    for t in grid:
        constants = [threshold_code(policy, t, scales[k], frac_bits) for k in range(e)]
        for k, name in enumerate(names):
            leave = exits(policy, split.codes[policy][:, k], constants[k])
            per_exit[name]["exit_rate"].append(float(leave.mean()))
            per_exit[name]["accuracy_of_exiting"].append(float(correct[leave, k].mean()) if leave.any() else None)
        taken = route(policy, split.codes[policy], constants[:-1])
        fractions = np.bincount(taken, minlength=e) / n
        accuracy = float(correct[np.arange(n), taken].mean())
        cascade["exit_fractions"].append(fractions.round(6).tolist())
        cascade["early_fraction"].append(float(1.0 - fractions[-1]))
        cascade["accuracy"].append(accuracy)
        cascade["accuracy_drop_pp"].append(round(100 * (final_acc - accuracy), 6))
    return {"thresholds": list(grid), "exits": per_exit, "cascade": cascade, "final_accuracy": final_acc}


def profile(run_dir: str | Path, frac_bits: int = DEFAULT_FRAC_BITS, plot: bool = True) -> dict:
    """Profile the trained run in ``run_dir``; returns what profile.json holds."""
    run_dir = user_path(run_dir)
    config, model, _ = ckpt.load_model(run_dir)
    splits = load_splits(config.data)
    names = model.exit_names
    arrays: dict[str, np.ndarray] = {"exit_names": np.array(names), "frac_bits": np.array(frac_bits)}
    summary: dict = {"exits": names, "frac_bits": frac_bits, "splits": {}}
    for split_name, data in (("val", splits.val), ("test", splits.test)):
        prof, scales, bits = run_exits(model, data, frac_bits)
        arrays["scales"], arrays["logit_bits"] = scales, bits
        arrays.update(
            {
                f"{split_name}_logits": prof.logits,
                f"{split_name}_labels": prof.labels,
                f"{split_name}_pred": prof.pred,
                f"{split_name}_correct": prof.correct,
                **{f"{split_name}_code_{p}": prof.codes[p] for p in STORED_CODES},
            }
        )
        summary["splits"][split_name] = {
            "samples": int(len(data)),
            "accuracy": dict(zip(names, prof.correct.mean(axis=0).round(6).tolist(), strict=False)),
            "max_prob": threshold_table(prof, "max_prob", MAX_PROB_GRID, scales, names, frac_bits),
            "margin": threshold_table(
                prof, "margin", margin_grid(scales, prof.codes["margin"]), scales, names, frac_bits
            ),
        }
    summary["scales"] = arrays["scales"].tolist()
    summary["logit_bits"] = arrays["logit_bits"].tolist()
    atomic_write(run_dir / "profile.npz", lambda p: np.savez_compressed(p, **arrays))
    atomic_write(run_dir / "profile.json", lambda p: p.write_text(json.dumps(summary, indent=1)))
    if plot:
        atomic_write(run_dir / "profile.png", lambda p: plot_profile(summary, p))
    return summary


def load_profile(run_dir: str | Path) -> dict[str, np.ndarray]:
    """DIR/profile.npz, checked: every array :func:`profile` writes, of the shapes it writes. A
    missing, empty, truncated or foreign file is one :class:`ConfigError` line naming the file and
    the fix (``exitflow profile DIR``); the sweep and the cosimulation read it only through here.
    Every policy has its ``{split}_code_{policy}``: one that shares another's code
    (``agreement``) is that array."""
    run_dir = Path(run_dir)
    path = run_dir / "profile.npz"
    again = f"run `exitflow profile {run_dir}` again"
    if not path.is_file():
        raise ConfigError(f"{path}: not found; run `exitflow profile {run_dir}` first")
    if path.stat().st_size == 0:
        raise ConfigError(f"{path}: empty file; {again}")
    splits = ("val", "test")
    per_split = ("logits", "labels", "pred", "correct", *(f"code_{p}" for p in STORED_CODES))
    wanted = ["exit_names", "frac_bits", "scales", "logit_bits", *(f"{s}_{k}" for s in splits for k in per_split)]
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in wanted if k not in npz.files]
            if missing:
                raise ConfigError(
                    f"{path}: not a profile exitflow wrote (lacks {', '.join(missing[:4])}"
                    f"{', ...' if len(missing) > 4 else ''}); {again}"
                )
            arrays = {k: npz[k] for k in wanted}
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 (zipfile, zlib, numpy format errors of a damaged file)
        raise ConfigError(f"{path}: unreadable, truncated or not an .npz ({type(err).__name__}); {again}") from None

    def bad(key: str, what: str):
        shape = arrays[key].shape
        return ConfigError(f"{path}: {key} has shape {shape} and dtype {arrays[key].dtype}, expected {what}; {again}")

    names = arrays["exit_names"]
    if names.ndim != 1 or len(names) == 0 or names.dtype.kind not in "US":
        raise bad("exit_names", "a list of exit names")
    n_exits = len(names)
    if arrays["frac_bits"].ndim != 0 or arrays["frac_bits"].dtype.kind not in "iu":
        raise bad("frac_bits", "one integer")
    for key, kinds in (("scales", "f"), ("logit_bits", "iu")):
        if arrays[key].shape != (n_exits,) or arrays[key].dtype.kind not in kinds:
            raise bad(key, f"one {'number' if kinds == 'f' else 'integer'} per exit ({n_exits},)")
    if not np.all(np.isfinite(arrays["scales"])) or not np.all(arrays["scales"] > 0):
        raise ConfigError(f"{path}: scales must be positive finite numbers; got {arrays['scales'].tolist()}; {again}")
    for split in splits:
        labels = arrays[f"{split}_labels"]
        if labels.ndim != 1 or len(labels) == 0 or labels.dtype.kind not in "iu":
            raise bad(f"{split}_labels", "one integer label per sample, at least one sample")
        n = len(labels)
        logits = arrays[f"{split}_logits"]
        if logits.ndim != 3 or logits.shape[:2] != (n, n_exits) or logits.dtype.kind not in "iu":
            raise bad(f"{split}_logits", f"integers of shape ({n}, {n_exits}, classes)")
        for key in ("pred", "correct", *(f"code_{p}" for p in STORED_CODES)):
            array = arrays[f"{split}_{key}"]
            if array.shape != (n, n_exits) or array.dtype.kind not in ("b" if key == "correct" else "iu"):
                raise bad(
                    f"{split}_{key}", f"{'booleans' if key == 'correct' else 'integers'} of shape ({n}, {n_exits})"
                )
        for policy, same in SAME_CODE.items():
            arrays[f"{split}_code_{policy}"] = arrays[f"{split}_code_{same}"]
    return arrays


def plot_profile(summary: dict, path: Path) -> None:
    """Exit rate and accuracy of the exiting samples against the max_prob threshold (test split)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summary["splits"]["test"]["max_prob"]
    t = table["thresholds"]
    fig, (ax_rate, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for name, series in table["exits"].items():
        ax_rate.plot(t, series["exit_rate"], label=name)
        acc = [np.nan if a is None else a for a in series["accuracy_of_exiting"]]
        ax_acc.plot(t, acc, label=name)
    ax_acc.plot(t, table["cascade"]["accuracy"], "k--", label="whole network")
    ax_rate.set(xlabel="max_prob threshold", ylabel="exit rate", title="Samples an exit would take", ylim=(0, 1.02))
    ax_acc.set(xlabel="max_prob threshold", ylabel="accuracy", title="Accuracy of the samples that exit")
    for ax in (ax_rate, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)

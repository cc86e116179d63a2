"""Configuration of the model side: which network, which bits, how to train it.

A run config is YAML with three sections of the model side, each optional::

    data:  {name: mnist5k, seed: 0}            # exitflow.core.data.DataSpec
    model: {backbone: lenet, preset: w4a4}      # ModelConfig
    train: {mode: end_to_end, epochs: 12}       # TrainConfig

(and ``sweep``, which ``exitflow run`` reads: :class:`exitflow.app.run.SweepSection`).

Unknown keys and impossible values are rejected with one line naming the key
(see :mod:`exitflow.core.schema`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from exitflow.core.data import DataSpec
from exitflow.core.schema import FieldError, FrozenMap

from .presets import PRESETS, SUPPORTED_BITS, Bits

Backbone = Literal["lenet", "cnv", "resnet8", "mobilenet", "custom"]
Scalar = bool | int | float | str
Preset = Literal["w1a1", "w2a2", "w4a4", "w8a8"]
TrainMode = Literal["end_to_end", "exits_only", "distill"]


def _check_bits(key: str, value: int | None) -> None:
    if value is not None and value not in SUPPORTED_BITS:
        raise FieldError(key, f"unsupported bit width {value}; supported: {', '.join(map(str, SUPPORTED_BITS))}")


@dataclass(frozen=True, kw_only=True)
class BitsOverride:
    """Per-block bit widths; what is left out comes from the preset."""

    weight: int | None = None
    act: int | None = None

    def __post_init__(self) -> None:
        _check_bits("weight", self.weight)
        _check_bits("act", self.act)


@dataclass(frozen=True, kw_only=True)
class HeadConfig:
    """Exit heads: max pooling down to ``pool_to`` x ``pool_to``, an optional hidden layer of
    ``hidden`` units (0: none), then the classifier."""

    pool_to: int = 4
    hidden: int = 0

    def __post_init__(self) -> None:
        if self.pool_to < 1:
            raise FieldError("pool_to", f"must be >= 1; got {self.pool_to}")
        if self.hidden < 0:
            raise FieldError("hidden", f"must be >= 0 (0: no hidden layer); got {self.hidden}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The network. Built in: ``lenet``, ``cnv``. ``custom``: your own Brevitas model, built by
    ``factory`` (``"package.module:callable"``) with ``factory_args``; exits go after the modules
    named in ``exits`` and the final exit is the QuantLinear named ``classifier``."""

    backbone: Backbone = "lenet"
    preset: Preset = "w4a4"
    block_bits: FrozenMap[str, BitsOverride] = field(default_factory=FrozenMap)
    exits: tuple[str, ...] | None = None  # candidate exits (block names); None: after every block
    width: float = 1.0  # channel multiplier of cnv, resnet8, mobilenet (1.0: the built-in model)
    head: HeadConfig = field(default_factory=HeadConfig)
    factory: str | None = None  # custom: "package.module:callable" building the backbone
    factory_args: FrozenMap[str, Scalar] = field(default_factory=FrozenMap)
    classifier: str | None = None  # custom: module name of the final QuantLinear

    def __post_init__(self) -> None:
        if self.backbone == "custom":
            for key in ("factory", "classifier"):
                if not getattr(self, key):
                    raise FieldError(key, f"a custom backbone needs {key} (see the model section of the docs)")
            if not self.exits:
                raise FieldError("exits", "a custom backbone needs the module names after which exits go")
            if self.block_bits:
                raise FieldError("block_bits", "bit widths of a custom backbone are set by its own factory")
        else:
            for key in ("factory", "classifier"):
                if getattr(self, key) is not None:
                    raise FieldError(key, f"is only used with backbone: custom (backbone is {self.backbone})")
            if self.factory_args:
                raise FieldError("factory_args", f"is only used with backbone: custom (backbone is {self.backbone})")
        if not 0.0 < self.width <= 4.0:
            raise FieldError("width", f"must be in (0, 4]; got {self.width}")
        if self.exits is not None and len(set(self.exits)) != len(self.exits):
            raise FieldError("exits", f"names a block twice: {list(self.exits)}")

    def bits_for(self, block: str) -> Bits:
        base = Bits.preset(self.preset)
        o = self.block_bits.get(block)
        if o is None:
            return base
        return Bits(o.weight if o.weight is not None else base.weight, o.act if o.act is not None else base.act)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    mode: TrainMode = "end_to_end"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.005
    weight_decay: float = 0.0
    seed: int = 0
    exit_weights: tuple[float, ...] | None = None  # one per exit, in order; None: 1.0 each
    temperature: float = 3.0  # distill
    alpha: float = 0.5  # distill: weight of the distillation term for early exits
    backbone_from: str | None = None  # exits_only: a run folder or model.pt with the trained backbone
    augment: bool = True  # random shifts of up to 2 pixels

    def __post_init__(self) -> None:
        for key, low in (("epochs", 1), ("batch_size", 1)):
            if getattr(self, key) < low:
                raise FieldError(key, f"must be >= {low}; got {getattr(self, key)}")
        if not self.lr > 0:
            raise FieldError("lr", f"must be > 0; got {self.lr}")
        if self.weight_decay < 0:
            raise FieldError("weight_decay", f"must be >= 0; got {self.weight_decay}")
        if self.exit_weights is not None and any(w < 0 for w in self.exit_weights):
            raise FieldError("exit_weights", f"must all be >= 0; got {list(self.exit_weights)}")
        if not self.temperature > 0:
            raise FieldError("temperature", f"must be > 0; got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise FieldError("alpha", f"must be in [0, 1]; got {self.alpha}")
        if self.mode == "exits_only" and not self.backbone_from:
            raise FieldError("backbone_from", "mode exits_only needs the trained backbone: a run folder or model.pt")
        if self.mode != "exits_only" and self.backbone_from:
            raise FieldError("backbone_from", f"is only used with mode exits_only (mode is {self.mode})")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


__all__ = ["PRESETS", "BitsOverride", "HeadConfig", "ModelConfig", "RunConfig", "TrainConfig"]

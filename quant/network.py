"""Multi-exit networks of Brevitas layers: backbones of named blocks, exit heads after blocks.

A backbone is a list of :class:`BlockSpec` (``conv`` or ``linear`` blocks); :func:`lenet` and
:func:`cnv` are the built-in ones. :class:`MultiExitNet` attaches a candidate exit head after any
subset of blocks; the head after the last block is the final exit. Every head ends in a
``QuantLinear`` without bias and with one per-tensor weight scale, so its output is integer
logits times one scale: what the confidence-threshold unit sees.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from exitflow.core.design import kept_exits
from exitflow.core.errors import ConfigError

from .custom import CustomMultiExitNet, load_factory
from .heads import build_head
from .presets import Bits, activation, input_quant, weight_kwargs


@dataclass(frozen=True)
class BlockSpec:
    """One backbone block. conv: QuantConv2d(kernel, no padding) + BN + act [+ 2x2 max pool];
    linear: [flatten] + QuantLinear + BN + act."""

    name: str
    kind: str  # "conv" or "linear"
    channels: int  # output channels or units
    kernel: int = 3
    pool: bool = False


def lenet(input_shape: tuple[int, int, int]) -> list[BlockSpec]:
    """LeNet-style: two conv blocks and two linear blocks. 5x5 kernels for 28x28 inputs, 3x3 for
    small ones such as 8x8 digits."""
    _, h, _ = input_shape
    if h >= 20:
        return [
            BlockSpec("conv0", "conv", 16, 5, True),
            BlockSpec("conv1", "conv", 32, 5, True),
            BlockSpec("fc0", "linear", 120),
            BlockSpec("fc1", "linear", 84),
        ]
    return [
        BlockSpec("conv0", "conv", 16, 3, True),
        BlockSpec("conv1", "conv", 32, 3, False),
        BlockSpec("fc0", "linear", 64),
        BlockSpec("fc1", "linear", 64),
    ]


def cnv(input_shape: tuple[int, int, int], width: float = 1.0) -> list[BlockSpec]:
    """FINN's CNV for 32x32x3 (brevitas_examples.bnn_pynq CNV): six 3x3 convolutions in three
    pairs (64, 128, 256 channels; max pooling after the first two pairs), then linear layers of
    512, 512 and the classifier. ``width`` scales every channel count (1.0 is the original)."""

    def c(n: int) -> int:
        return max(1, round(n * width))

    return [
        BlockSpec("conv0", "conv", c(64)),
        BlockSpec("conv1", "conv", c(64), pool=True),
        BlockSpec("conv2", "conv", c(128)),
        BlockSpec("conv3", "conv", c(128), pool=True),
        BlockSpec("conv4", "conv", c(256)),
        BlockSpec("conv5", "conv", c(256)),
        BlockSpec("fc0", "linear", c(512)),
        BlockSpec("fc1", "linear", c(512)),
    ]


BACKBONES = {"lenet": lenet, "cnv": cnv}


def _out_shape(spec: BlockSpec, shape: tuple[int, ...]) -> tuple[int, ...]:
    if spec.kind == "linear":
        return (spec.channels,)
    if len(shape) != 3:
        raise ValueError(f"block {spec.name!r}: a conv block cannot follow a linear block")
    _, h, w = shape
    h, w = h - spec.kernel + 1, w - spec.kernel + 1
    if h < 1 or w < 1:
        raise ValueError(
            f"block {spec.name!r}: a {spec.kernel}x{spec.kernel} kernel does not fit the {shape[1]}x{shape[2]} input"
        )
    if spec.pool:
        h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"block {spec.name!r}: 2x2 pooling does not fit")
    return (spec.channels, h, w)


def build_block(spec: BlockSpec, in_shape: tuple[int, ...], bits: Bits) -> nn.Sequential:
    from brevitas.nn import QuantConv2d, QuantLinear

    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if spec.kind == "conv":
        layers["conv"] = QuantConv2d(
            in_shape[0], spec.channels, spec.kernel, bias=False, return_quant_tensor=True, **weight_kwargs(bits.weight)
        )
        layers["bn"] = nn.BatchNorm2d(spec.channels)
        layers["act"] = activation(bits.act)
        if spec.pool:
            layers["pool"] = nn.MaxPool2d(2)
    elif spec.kind == "linear":
        if len(in_shape) > 1:
            layers["flatten"] = nn.Flatten()
        layers["linear"] = QuantLinear(
            math.prod(in_shape), spec.channels, bias=False, return_quant_tensor=True, **weight_kwargs(bits.weight)
        )
        layers["bn"] = nn.BatchNorm1d(spec.channels)
        layers["act"] = activation(bits.act)
    else:
        raise ValueError(f"block {spec.name!r}: unknown kind {spec.kind!r} (conv or linear)")
    return nn.Sequential(layers)


def _last_quantiser(module: nn.Module) -> nn.Module:
    from brevitas.nn import QuantIdentity, QuantReLU

    found = [m for m in module.modules() if isinstance(m, (QuantReLU, QuantIdentity))]
    if not found:
        raise ValueError("block has no activation quantiser")
    return found[-1]


class MultiExitNet(nn.Module):
    """Backbone blocks with candidate exit heads; ``forward`` returns every exit's logits
    (Brevitas QuantTensors: integer logits with one scale), in block order."""

    def __init__(
        self,
        specs: list[BlockSpec],
        input_shape: tuple[int, int, int],
        num_classes: int,
        exits: list[str] | None,
        bits: Bits,
        block_bits: dict[str, Bits] | None = None,
        pool_to: int = 4,
        hidden: int = 0,
    ):
        super().__init__()
        names = [s.name for s in specs]
        block_bits = block_bits or {}
        unknown = sorted(set(block_bits) - set(names))
        if unknown:
            raise ValueError(f"bit-width override for unknown block {unknown[0]!r}; blocks: {', '.join(names)}")
        exits = list(names[:-1]) if exits is None else list(exits)
        for name in exits:
            if name not in names:
                raise ValueError(f"exit after unknown block {name!r}; blocks: {', '.join(names)}")
        exit_set = set(exits) | {names[-1]}
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.input_quant = input_quant()
        self.blocks = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.shapes: dict[str, tuple[int, ...]] = {}
        shape: tuple[int, ...] = tuple(input_shape)
        for spec in specs:
            b = block_bits.get(spec.name, bits)
            self.blocks[spec.name] = build_block(spec, shape, b)
            shape = _out_shape(spec, shape)
            self.shapes[spec.name] = shape
            if spec.name in exit_set:
                self.heads[spec.name] = build_head(shape, num_classes, b, pool_to, hidden)

    @property
    def block_names(self) -> list[str]:
        return list(self.blocks)

    @property
    def exit_names(self) -> list[str]:
        """Blocks with an exit head after them, in order; the last is the final exit."""
        return list(self.heads)

    def forward(self, x: torch.Tensor) -> list:
        outputs = []
        h = self.input_quant(x)
        for name, block in self.blocks.items():
            h = block(h)
            if name in self.heads:
                outputs.append(self.heads[name](h))
        return outputs

    def head(self, name: str) -> nn.Module:
        return self.heads[name]

    # -- the MultiExitModel protocol (quant/model.py) ------------------------------------------

    stages_cut_from_whole = False  # every stage is its own modules (stage_modules)

    def kept_exits(self, exits: list[str]) -> list[str]:
        return kept_exits([e for e in self.exit_names[:-1] if e in exits], self.exit_names[-1])

    def stage_blocks(self, kept: list[str]) -> list[list[str]]:
        """The blocks after exit k-1 up to exit k, for every kept exit k."""
        out, start, names = [], 0, self.block_names
        for e in kept:
            end = names.index(e) + 1
            out.append(names[start:end])
            start = end
        return out

    def stage_layers(self, kept: list[str]) -> list[list[tuple[str, nn.Module]]]:
        """Every module of a stage's blocks, named by its block (a block's folding key)."""
        return [
            [(block, module) for block in blocks for module in self.blocks[block].modules()]
            for blocks in self.stage_blocks(kept)
        ]

    def blocks_mismatch(self, stage_blocks: list[list[str]]) -> str | None:
        flat = [b for blocks in stage_blocks for b in blocks]
        if flat != self.block_names:
            return f"the blocks {flat} must be the model's blocks in order: {self.block_names}"
        return None

    def exit_head(self, name: str) -> nn.Sequential:
        return nn.Sequential(self.boundary_quantiser(name), self.heads[name]).train(self.training)

    def frozen_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of what exits-only training keeps fixed: the backbone, the final exit."""
        return ("input_quant.", "blocks.", f"heads.{self.exit_names[-1]}.")

    def frozen_modules(self) -> list[nn.Module]:
        return [self.input_quant, self.blocks, self.heads[self.exit_names[-1]]]

    def boundary_quantiser(self, block: str | None) -> nn.Module:
        """The quantiser whose output enters the block after ``block`` (None: the input)."""
        return self.input_quant if block is None else _last_quantiser(self.blocks[block])

    def stage_modules(self, exits: list[str]) -> list[tuple[nn.Sequential, nn.Sequential]]:
        """(stage k, head k) for the chosen exits (the final exit is always added): stage k runs the
        blocks after exit k-1 up to exit k. Each starts by re-applying the quantiser of what it
        receives, which is idempotent on already-quantised values, so its graph has a quantised input."""
        chosen = self.kept_exits(exits)
        for e in exits:
            if e not in self.heads:
                raise ValueError(f"no exit head after block {e!r}; candidate exits: {', '.join(self.exit_names)}")
        out, prev = [], None
        for e, names in zip(chosen, self.stage_blocks(chosen), strict=True):
            blocks = [self.blocks[n] for n in names]
            stage = nn.Sequential(self.boundary_quantiser(prev), *blocks).train(self.training)
            out.append((stage, self.exit_head(e)))
            prev = e
        return out


def build_model(config, input_shape: tuple[int, int, int], num_classes: int) -> MultiExitNet:
    """A :class:`MultiExitNet` from a :class:`~exitflow.quant.config.ModelConfig`; a model that
    does not fit the config or the data is one :class:`~exitflow.core.errors.ConfigError` line."""
    input_shape = tuple(int(v) for v in input_shape)
    if config.backbone == "custom":
        return _build_custom(config, input_shape, num_classes)
    if config.backbone == "cnv":
        if input_shape != (3, 32, 32):
            raise ConfigError(
                f"model.backbone: cnv takes 3x32x32 images but the data is {'x'.join(map(str, input_shape))}; "
                "set data.shape: [3, 32, 32] to pad and repeat channels"
            )
        specs = cnv(input_shape, config.width)
    else:
        specs = lenet(input_shape)
    names = [s.name for s in specs]
    for key, listed in (("model.exits", config.exits or ()), ("model.block_bits", tuple(config.block_bits))):
        for name in listed:
            if name not in names:
                raise ConfigError(f"{key}: no block named {name!r} in {config.backbone}; blocks: {', '.join(names)}")
    try:
        return MultiExitNet(
            specs,
            input_shape,
            num_classes,
            exits=list(config.exits) if config.exits is not None else None,
            bits=config.bits_for("__preset__"),
            block_bits={n: config.bits_for(n) for n in config.block_bits},
            pool_to=config.head.pool_to,
            hidden=config.head.hidden,
        )
    except ValueError as err:
        shape = "x".join(map(str, input_shape))
        raise ConfigError(
            f"model: {err} (the data's images are {shape}; choose another backbone or data.shape)"
        ) from None


def _build_custom(config, input_shape, num_classes):
    factory = load_factory(config.factory)
    try:
        backbone = factory(**dict(config.factory_args))
    except TypeError as err:
        raise ConfigError(f"model.factory_args: {config.factory} does not take them ({err})") from None
    if isinstance(backbone, tuple) and backbone and isinstance(backbone[0], nn.Module):
        backbone = backbone[0]  # e.g. brevitas_examples' model_with_cfg returns (model, cfg)
    if not isinstance(backbone, nn.Module):
        what = (
            f"a tuple of {', '.join(type(v).__name__ for v in backbone[:4])}"
            if isinstance(backbone, tuple)
            else f"a {type(backbone).__name__}"
        )
        raise ConfigError(
            f"model.factory: {config.factory} returned {what}, not a torch module "
            "(nor a tuple whose first item is one); "
            "wrap it in a function of your own that returns the nn.Module and name that function as model.factory"
        )
    try:
        return CustomMultiExitNet(
            backbone,
            list(config.exits),
            config.classifier,
            input_shape,
            num_classes,
            config.bits_for("__preset__"),
            config.head.pool_to,
            config.head.hidden,
        )
    except RuntimeError as err:  # the backbone's own forward failed on the data's shape
        shape = "x".join(map(str, input_shape))
        raise ConfigError(
            f"model: {config.factory} cannot take the data's {shape} images ({str(err).splitlines()[0]})"
        ) from None

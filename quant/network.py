"""Multi-exit networks of Brevitas layers: backbones of named blocks, exit heads after blocks.

A backbone is a list of :class:`BlockSpec` (``conv``, ``linear``, ``residual`` or ``separable``
blocks); :func:`lenet`, :func:`cnv`, :func:`resnet8` and :func:`mobilenet` are the built-in ones.
:class:`MultiExitNet` attaches a candidate exit head after any subset of blocks; the head after
the last block is the final exit. Every head ends in a ``QuantLinear`` without bias and with one
per-tensor weight scale, so its output is integer logits times one scale: what the
confidence-threshold unit sees.

A residual block's add takes two inputs quantised by one shared quantiser (``add_quant``), as
FINN's residual examples require: both branches then carry integers of the same scale, which
FINN's streamlining moves past the add.
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
from .presets import ACT_MAX_INIT, Bits, activation, input_quant, weight_kwargs


@dataclass(frozen=True)
class BlockSpec:
    """One backbone block. conv: QuantConv2d(kernel, stride, padding) + BN + act [+ 2x2 max pool];
    linear: [flatten] + QuantLinear + BN + act; residual: two 3x3 convolutions (the first with
    ``stride``) and a skip (a 1x1 projection where the stride or the channels change) added under
    one shared quantiser, then act; separable: a 3x3 depthwise convolution (``stride``) + BN + act,
    a 1x1 pointwise one + BN + act."""

    name: str
    kind: str  # "conv", "linear", "residual" or "separable"
    channels: int  # output channels or units
    kernel: int = 3
    pool: bool = False
    stride: int = 1
    padding: int = 0


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


def resnet8(input_shape: tuple[int, int, int], width: float = 1.0) -> list[BlockSpec]:
    """MLPerf Tiny's ResNet-8 for 3x32x32: a 3x3 stem of 16 channels, three residual stacks of 16,
    32 and 64 channels (stride 2 and a 1x1 projection on the skip in the last two); the final exit
    is global average pooling and the classifier (:func:`gap_head`). ``width`` scales the channels."""

    def c(n: int) -> int:
        return max(1, round(n * width))

    return [
        BlockSpec("stem", "conv", c(16), padding=1),
        BlockSpec("stack1", "residual", c(16)),
        BlockSpec("stack2", "residual", c(32), stride=2),
        BlockSpec("stack3", "residual", c(64), stride=2),
    ]


#: MobileNet-v1's separable blocks for 3x32x32 at width 0.25 (output channels, stride), as in MLPerf
#: Tiny's visual-wake-words model, shortened to the resolution: 32 -> 16 -> 8 -> 4.
MOBILENET_BLOCKS: tuple[tuple[int, int], ...] = ((16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2))


def mobilenet(
    input_shape: tuple[int, int, int], width: float = 1.0, blocks: tuple[tuple[int, int], ...] = MOBILENET_BLOCKS
) -> list[BlockSpec]:
    """MobileNet-v1 style for 3x32x32: a 3x3 stem of 8 channels, then depthwise-separable blocks
    ``sep1``.. of (channels, stride) from ``blocks``; ``width`` scales every channel count; the
    final exit is global average pooling and the classifier (:func:`gap_head`)."""

    def c(n: int) -> int:
        return max(1, round(n * width))

    return [
        BlockSpec("stem", "conv", c(8), padding=1),
        *(BlockSpec(f"sep{i}", "separable", c(ch), stride=st) for i, (ch, st) in enumerate(blocks, 1)),
    ]


BACKBONES = {"lenet": lenet, "cnv": cnv, "resnet8": resnet8, "mobilenet": mobilenet}
#: Backbones whose final exit is global average pooling then the classifier.
GAP_FINAL = ("resnet8", "mobilenet")
#: The bit widths a backbone with residual or depthwise blocks takes (no bipolar activations:
#: the add and FINN's depthwise unit need integer ones).
INTEGER_ONLY = ("resnet8", "mobilenet")


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _out_shape(spec: BlockSpec, shape: tuple[int, ...]) -> tuple[int, ...]:
    if spec.kind == "linear":
        return (spec.channels,)
    if len(shape) != 3:
        raise ValueError(f"block {spec.name!r}: a {spec.kind} block cannot follow a linear block")
    _, h, w = shape
    if spec.kind in ("residual", "separable"):
        h, w = _conv_out(h, 3, spec.stride, 1), _conv_out(w, 3, spec.stride, 1)
        if h < 1 or w < 1:
            raise ValueError(f"block {spec.name!r}: stride {spec.stride} does not fit the {shape[1]}x{shape[2]} input")
        return (spec.channels, h, w)
    h, w = _conv_out(h, spec.kernel, spec.stride, spec.padding), _conv_out(w, spec.kernel, spec.stride, spec.padding)
    if h < 1 or w < 1:
        raise ValueError(
            f"block {spec.name!r}: a {spec.kernel}x{spec.kernel} kernel does not fit the {shape[1]}x{shape[2]} input"
        )
    if spec.pool:
        h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"block {spec.name!r}: 2x2 pooling does not fit")
    return (spec.channels, h, w)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions and a skip, added under one shared quantiser, then the activation.

    ``add_quant`` quantises both inputs of the add (signed, one bit more than the activations), so
    they carry integers of one scale, as FINN's residual examples require; the skip is the input
    itself or, where the stride or the channels change, a 1x1 projection with its batch norm.
    ``act`` (the block's output quantiser) is registered last: it is what the next block, stage
    or exit head receives."""

    def __init__(self, in_channels: int, channels: int, stride: int, bits: Bits):
        super().__init__()
        from brevitas.nn import QuantConv2d

        def conv(cin: int, k: int, s: int) -> nn.Module:
            return QuantConv2d(
                cin, channels, k, stride=s, padding=k // 2, bias=False, return_quant_tensor=True,
                **weight_kwargs(bits.weight),
            )  # fmt: skip

        self.conv1 = conv(in_channels, 3, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act1 = activation(bits.act)
        self.conv2 = conv(channels, 3, 1)
        self.bn2 = nn.BatchNorm2d(channels)
        if stride != 1 or in_channels != channels:
            self.proj = conv(in_channels, 1, stride)
            self.proj_bn = nn.BatchNorm2d(channels)
        else:
            self.proj = self.proj_bn = None
        self.add_quant = add_quantiser(bits.act)
        self.act = activation(bits.act)

    def forward(self, x):
        main = self.add_quant(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))))
        skip = self.add_quant(x if self.proj is None else self.proj_bn(self.proj(x)))
        return self.act(main + skip)


def add_quantiser(act_bits: int) -> nn.Module:
    """The quantiser both inputs of a residual add share: signed, one bit more than the
    activations (at most 8), a learned scale initialised from a fixed range."""
    from brevitas.nn import QuantIdentity
    from brevitas.quant import Int8ActPerTensorFloatMinMaxInit

    return QuantIdentity(
        act_quant=Int8ActPerTensorFloatMinMaxInit,
        bit_width=min(act_bits + 1, 8),
        min_val=-ACT_MAX_INIT,
        max_val=ACT_MAX_INIT,
        return_quant_tensor=True,
    )


def build_block(spec: BlockSpec, in_shape: tuple[int, ...], bits: Bits) -> nn.Module:
    from brevitas.nn import QuantConv2d, QuantLinear

    if spec.kind in ("residual", "separable") and bits.act == 1:
        raise ValueError(f"block {spec.name!r}: a {spec.kind} block needs activations of 2 bits or more")
    if spec.kind == "residual":
        return ResidualBlock(in_shape[0], spec.channels, spec.stride, bits)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if spec.kind == "conv":
        layers["conv"] = QuantConv2d(
            in_shape[0], spec.channels, spec.kernel, stride=spec.stride, padding=spec.padding, bias=False,
            return_quant_tensor=True, **weight_kwargs(bits.weight),
        )  # fmt: skip
        layers["bn"] = nn.BatchNorm2d(spec.channels)
        layers["act"] = activation(bits.act)
        if spec.pool:
            layers["pool"] = nn.MaxPool2d(2)
    elif spec.kind == "separable":
        cin = in_shape[0]
        layers["dw"] = QuantConv2d(
            cin, cin, 3, stride=spec.stride, padding=1, groups=cin, bias=False, return_quant_tensor=True,
            **weight_kwargs(bits.weight),
        )  # fmt: skip
        layers["dw_bn"] = nn.BatchNorm2d(cin)
        layers["dw_act"] = activation(bits.act)
        layers["pw"] = QuantConv2d(
            cin, spec.channels, 1, bias=False, return_quant_tensor=True, **weight_kwargs(bits.weight)
        )
        layers["pw_bn"] = nn.BatchNorm2d(spec.channels)
        layers["act"] = activation(bits.act)
    elif spec.kind == "linear":
        if len(in_shape) > 1:
            layers["flatten"] = nn.Flatten()
        layers["linear"] = QuantLinear(
            math.prod(in_shape), spec.channels, bias=False, return_quant_tensor=True, **weight_kwargs(bits.weight)
        )
        layers["bn"] = nn.BatchNorm1d(spec.channels)
        layers["act"] = activation(bits.act)
    else:
        raise ValueError(f"block {spec.name!r}: unknown kind {spec.kind!r} (conv, linear, residual or separable)")
    return nn.Sequential(layers)


def gap_head(in_shape: tuple[int, ...], num_classes: int, bits: Bits) -> nn.Sequential:
    """Global average pooling, then the classifier (QuantLinear, no bias, per-tensor scale): the
    final exit of ResNet-8 and MobileNet. The pooled sum reaches the classifier as integers with
    the scale divided by the window, so the logits stay integers times one scale."""
    from brevitas.nn import QuantLinear

    return nn.Sequential(
        OrderedDict(
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            classifier=QuantLinear(
                in_shape[0], num_classes, bias=False, return_quant_tensor=True, **weight_kwargs(bits.weight)
            ),
        )
    )


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
        gap_final: bool = False,
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
            if spec.name == names[-1] and gap_final:
                self.heads[spec.name] = gap_head(shape, num_classes, b)
            elif spec.name in exit_set:
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
        """Every module of a stage's blocks, named as a folding names it: by its block where the
        block has one weight layer, ``block.module`` where it has several (``stack2.conv1``,
        ``sep1.dw``)."""
        return [[item for block in blocks for item in self.block_layers(block)] for blocks in self.stage_blocks(kept)]

    def block_layers(self, block: str) -> list[tuple[str, nn.Module]]:
        from brevitas.nn import QuantConv2d, QuantLinear

        named = [(name, m) for name, m in self.blocks[block].named_modules() if name]
        weights = [name for name, m in named if isinstance(m, (QuantConv2d, QuantLinear))]
        if len(weights) <= 1:
            return [(block, m) for _, m in named]
        return [(f"{block}.{name}", m) for name, m in named if "." not in name]

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
    elif config.backbone in ("resnet8", "mobilenet"):
        if input_shape[0] != 3 or input_shape[1] < 8 or input_shape[2] < 8:
            raise ConfigError(
                f"model.backbone: {config.backbone} takes 3-channel images of 8x8 or more but the data is "
                f"{'x'.join(map(str, input_shape))}; set data.shape: [3, 32, 32] to pad and repeat channels"
            )
        if config.preset == "w1a1" or any(o.act == 1 for o in config.block_bits.values()):
            raise ConfigError(
                f"model.preset: {config.backbone} has residual or depthwise blocks, which need activations of "
                "2 bits or more; choose w2a2, w4a4 or w8a8"
            )
        specs = BACKBONES[config.backbone](input_shape, config.width)
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
            gap_final=config.backbone in GAP_FINAL,
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

"""A VGG-style chain of conv blocks written the way Brevitas users write one, for the benchmark
`dse_scaling` (many candidate exits, small and quick FINN builds).

    inp                 QuantIdentity, 8 bits
    blocks.<i>          conv (QuantConv2d 3x3, 4-bit weights), bn (BatchNorm2d), relu (QuantReLU,
                        4 bits); every third block ends with pool (MaxPool2d 2) while the map is
                        larger than 2 x 2
    pool, pool_quant    global average pool, QuantIdentity 8 bits
    fc                  QuantLinear classifier, no bias

The channels are ``width`` up to the first max pool and ``2 * width`` after it (8 and 16 by
default). With a [3, 32, 32] input (mnist5k padded, no CIFAR-10 here) the maps shrink
32 -> 16 -> 8 -> 4 after the 3rd, 6th and 9th blocks (-> 2 after the 12th).

Candidate exits sit at every block's output quantiser but the last one's (:func:`exit_names`):
the stage from the last exit to the classifier needs a weight layer of its own, so ``blocks``
blocks give ``blocks - 1`` candidate early exits (9 blocks: 8, 13 blocks: 12).
"""

import torch
from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear, QuantReLU
from torch import nn


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, pool: bool, weight_bits: int, act_bits: int):
        super().__init__()
        self.conv = QuantConv2d(cin, cout, 3, padding=1, bias=False, weight_bit_width=weight_bits)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = QuantReLU(bit_width=act_bits, return_quant_tensor=True)
        self.pool = nn.MaxPool2d(2) if pool else None

    def forward(self, x):
        x = self.relu(self.bn(self.conv(x)))
        return x if self.pool is None else self.pool(x)


class VGGChain(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        blocks: int = 9,
        width: int = 8,
        in_channels: int = 3,
        size: int = 32,
        pool_every: int = 3,
        weight_bits: int = 4,
        act_bits: int = 4,
    ):
        super().__init__()
        self.inp = QuantIdentity(bit_width=8, return_quant_tensor=True)
        layers, cin, channels = [], in_channels, width
        for i in range(blocks):
            pool = (i + 1) % pool_every == 0 and size > 2
            layers.append(Block(cin, channels, pool, weight_bits, act_bits))
            cin = channels
            if pool:
                size //= 2
                channels = 2 * width
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pool_quant = QuantIdentity(bit_width=8, return_quant_tensor=True)
        self.fc = QuantLinear(cin, num_classes, bias=False, weight_bit_width=weight_bits)

    def forward(self, x):
        x = self.blocks(self.inp(x))
        return self.fc(self.pool_quant(torch.flatten(self.pool(x), 1)))


def vgg_chain(num_classes: int = 10, blocks: int = 9, width: int = 8) -> VGGChain:
    """``blocks`` conv blocks of ``width`` (then ``2 * width``) channels: ``blocks - 1``
    candidate early exits (:func:`exit_names`)."""
    return VGGChain(num_classes, blocks, width)


def exit_names(blocks: int) -> tuple[str, ...]:
    """The candidate exits of :func:`vgg_chain` with ``blocks`` blocks: the output quantiser of
    every block but the last (whose stage to the classifier would have no weight layer)."""
    return tuple(f"blocks.{i}.relu" for i in range(blocks - 1))

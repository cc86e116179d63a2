"""A residual network written the way Brevitas users write one: default quantisers, the module
names of its author. What exitflow needs of it: each skip add's two inputs go through one shared
QuantIdentity (``res_quant``), exits sit at a block's output quantiser (``relu_out``), and the
classifier reads a quantiser's output (``pool_quant`` after the global average pool).

Used by examples/custom_resnet_mnist5k.yaml (run with this folder on PYTHONPATH)."""

import torch
from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear, QuantReLU
from torch import nn


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv_a = QuantConv2d(cin, cout, 3, stride=stride, padding=1, bias=False, weight_bit_width=4)
        self.bn_a = nn.BatchNorm2d(cout)
        self.relu_a = QuantReLU(bit_width=4)
        self.conv_b = QuantConv2d(cout, cout, 3, padding=1, bias=False, weight_bit_width=4)
        self.bn_b = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                QuantConv2d(cin, cout, 1, stride=stride, bias=False, weight_bit_width=4), nn.BatchNorm2d(cout)
            )
        self.res_quant = QuantIdentity(bit_width=5, return_quant_tensor=True)  # shared by both branches
        self.relu_out = QuantReLU(bit_width=4, return_quant_tensor=True)

    def forward(self, x):
        y = self.res_quant(self.bn_b(self.conv_b(self.relu_a(self.bn_a(self.conv_a(x))))))
        s = self.res_quant(x if self.down is None else self.down(x))
        return self.relu_out(y + s)


class MyResNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.inp = QuantIdentity(bit_width=8, return_quant_tensor=True)
        self.stem = nn.Sequential(
            QuantConv2d(3, width, 3, padding=1, bias=False, weight_bit_width=4),
            nn.BatchNorm2d(width),
            QuantReLU(bit_width=4, return_quant_tensor=True),
        )
        self.layer1 = Block(width, width, 1)
        self.layer2 = Block(width, 2 * width, 2)
        self.layer3 = Block(2 * width, 4 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pool_quant = QuantIdentity(bit_width=8, return_quant_tensor=True)
        self.fc = QuantLinear(4 * width, num_classes, bias=False, weight_bit_width=4)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(self.inp(x)))))
        return self.fc(self.pool_quant(torch.flatten(self.pool(x), 1)))


def my_resnet(num_classes: int = 10, width: int = 16) -> MyResNet:
    return MyResNet(num_classes, width)

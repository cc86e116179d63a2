"""A depthwise-separable network (MobileNet-v1 style) written the way Brevitas users write one:
default quantisers, the module names of its author. Each block is a depthwise 3x3 convolution
(``groups`` = channels) and a pointwise 1x1 one; exits sit at a block's output quantiser
(``pw_act``), and the classifier reads a quantiser's output (``pool_quant`` after the global
average pool).

Used by examples/custom_mobilenet_mnist5k.yaml (run with this folder on PYTHONPATH)."""

import torch
from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear, QuantReLU
from torch import nn


class Separable(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.dw = QuantConv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False, weight_bit_width=4)
        self.dw_bn = nn.BatchNorm2d(cin)
        self.dw_act = QuantReLU(bit_width=4, return_quant_tensor=True)
        self.pw = QuantConv2d(cin, cout, 1, bias=False, weight_bit_width=4)
        self.pw_bn = nn.BatchNorm2d(cout)
        self.pw_act = QuantReLU(bit_width=4, return_quant_tensor=True)

    def forward(self, x):
        return self.pw_act(self.pw_bn(self.pw(self.dw_act(self.dw_bn(self.dw(x))))))


class MyMobileNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.inp = QuantIdentity(bit_width=8, return_quant_tensor=True)
        self.stem = nn.Sequential(
            QuantConv2d(3, width, 3, stride=2, padding=1, bias=False, weight_bit_width=4),
            nn.BatchNorm2d(width),
            QuantReLU(bit_width=4, return_quant_tensor=True),
        )
        self.block1 = Separable(width, 2 * width, 1)
        self.block2 = Separable(2 * width, 4 * width, 2)
        self.block3 = Separable(4 * width, 4 * width, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pool_quant = QuantIdentity(bit_width=8, return_quant_tensor=True)
        self.fc = QuantLinear(4 * width, num_classes, bias=False, weight_bit_width=4)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.stem(self.inp(x)))))
        return self.fc(self.pool_quant(torch.flatten(self.pool(x), 1)))


def my_mobilenet(num_classes: int = 10, width: int = 16) -> MyMobileNet:
    return MyMobileNet(num_classes, width)

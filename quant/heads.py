"""The exit head every backbone gets: shared by the built-in backbones (:mod:`~exitflow.quant.network`)
and user models (:mod:`~exitflow.quant.custom`)."""

from __future__ import annotations

import math
from collections import OrderedDict

from torch import nn

from .presets import Bits, activation, weight_kwargs


def build_head(
    in_shape: tuple[int, ...], num_classes: int, bits: Bits, pool_to: int = 4, hidden: int = 0
) -> nn.Sequential:
    """A cheap exit head: max pooling down to at most ``pool_to`` x ``pool_to``, flatten, an
    optional hidden layer, and the classifier (QuantLinear, no bias, per-tensor scale)."""
    from brevitas.nn import QuantLinear

    layers: OrderedDict[str, nn.Module] = OrderedDict()
    features = in_shape
    if len(in_shape) == 3:
        _, h, w = in_shape
        k = max(1, math.ceil(max(h, w) / pool_to))
        if k > 1:
            layers["pool"] = nn.MaxPool2d(k)
            features = (in_shape[0], h // k, w // k)
        layers["flatten"] = nn.Flatten()
    n = math.prod(features)
    if hidden:
        layers["hidden"] = QuantLinear(n, hidden, bias=False, return_quant_tensor=True, **weight_kwargs(bits.weight))
        layers["hidden_bn"] = nn.BatchNorm1d(hidden)
        layers["hidden_act"] = activation(bits.act)
        n = hidden
    layers["classifier"] = QuantLinear(
        n, num_classes, bias=False, return_quant_tensor=True, **weight_kwargs(bits.weight)
    )
    return nn.Sequential(layers)

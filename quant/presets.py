"""Named bit-width presets and the Brevitas layers they produce.

Users pick ``w1a1``, ``w2a2``, ``w4a4`` or ``w8a8`` (weights / activations) for the whole model
and may override it per block; they never see Brevitas quantiser injectors. Every quantiser is
per-tensor, so each layer's output is integers times one scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch only for annotations: reading a config must not wait for torch
    from torch import nn

PRESETS: dict[str, tuple[int, int]] = {"w1a1": (1, 1), "w2a2": (2, 2), "w4a4": (4, 4), "w8a8": (8, 8)}
SUPPORTED_BITS = (1, 2, 3, 4, 5, 6, 7, 8)
ACT_MAX_INIT = 4.0  # initial clipping range of unsigned activations (after batch norm)


@dataclass(frozen=True)
class Bits:
    weight: int
    act: int

    @classmethod
    def preset(cls, name: str) -> Bits:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
        return cls(*PRESETS[name])


def weight_kwargs(bits: int) -> dict:
    """Keyword arguments for QuantConv2d / QuantLinear weights of ``bits`` bits (per-tensor)."""
    from brevitas.quant import Int8WeightPerTensorFloat, SignedBinaryWeightPerTensorConst

    if bits not in SUPPORTED_BITS:
        raise ValueError(f"unsupported weight bit width {bits}; supported: {SUPPORTED_BITS}")
    if bits == 1:
        return {"weight_quant": SignedBinaryWeightPerTensorConst}
    return {"weight_quant": Int8WeightPerTensorFloat, "weight_bit_width": bits}


def activation(bits: int) -> nn.Module:
    """The activation quantiser: bipolar sign for 1 bit, unsigned ReLU otherwise."""
    from brevitas.nn import QuantIdentity, QuantReLU
    from brevitas.quant import SignedBinaryActPerTensorConst, Uint8ActPerTensorFloatMaxInit

    if bits not in SUPPORTED_BITS:
        raise ValueError(f"unsupported activation bit width {bits}; supported: {SUPPORTED_BITS}")
    if bits == 1:
        return QuantIdentity(act_quant=SignedBinaryActPerTensorConst, return_quant_tensor=True)
    # A learned scale initialised from a fixed range (not from runtime statistics): the state
    # is the same from the first step on, so checkpoints load and resume exactly.
    return QuantReLU(
        act_quant=Uint8ActPerTensorFloatMaxInit, bit_width=bits, max_val=ACT_MAX_INIT, return_quant_tensor=True
    )


def input_quant() -> nn.Module:
    """Input images: pixels/255 quantised to UINT8 with the fixed scale 1/255, so the
    integer input the hardware sees is exactly the pixel value."""
    from brevitas.nn import QuantIdentity
    from brevitas.quant import Uint8ActPerTensorFloat

    return QuantIdentity(
        act_quant=Uint8ActPerTensorFloat,
        bit_width=8,
        scaling_impl_type="const",
        scaling_init=1.0,
        return_quant_tensor=True,
    )

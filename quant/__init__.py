"""Quantised multi-exit CNNs with Brevitas: build, train, calibrate exits, profile, export.

* :mod:`~exitflow.quant.presets`: bit-width presets (w1a1 ... w8a8) -> Brevitas layers
* :mod:`~exitflow.quant.network`: backbones (lenet, cnv), exit heads, :class:`MultiExitNet`
* :mod:`~exitflow.quant.policies`: the integer exit decision every other part calls
* :mod:`~exitflow.quant.train`, :mod:`~exitflow.quant.profile`, :mod:`~exitflow.quant.export`
"""

import warnings

# Brevitas announces an optional CUDA kernel package at import; it is not used on the CPU.
warnings.filterwarnings("ignore", message="fast_hadamard_transform package not found")

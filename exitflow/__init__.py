"""exitflow: FPGA co-design of early-exit neural networks.

Brevitas quantisation of multi-exit CNNs, FINN dataflow hardware per stage with a hardware exit
decision, design-space exploration over exits, thresholds and folding, and a bit-accurate
cosimulation. Subpackages, each importing only the ones before it: :mod:`exitflow.core`,
:mod:`exitflow.quant`, :mod:`exitflow.hls_templates`, :mod:`exitflow.hw`, :mod:`exitflow.cosim`,
:mod:`exitflow.dse`, :mod:`exitflow.boards`, :mod:`exitflow.app`.

Importing :mod:`exitflow` is cheap: torch, FINN and numpy load only where they are used.
"""

from exitflow.core import __version__  # noqa: F401  defined in core, under every layer

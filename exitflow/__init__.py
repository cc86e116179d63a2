"""exitflow: FPGA co-design of early-exit neural networks.

Brevitas quantisation of multi-exit CNNs, FINN dataflow hardware per stage with a hardware exit
decision, design-space exploration over exits, thresholds and folding, and a bit-accurate
cosimulation. Subpackages: :mod:`exitflow.quant`, :mod:`exitflow.hls_templates`,
:mod:`exitflow.dse`, :mod:`exitflow.cosim`, :mod:`exitflow.boards`.

Importing :mod:`exitflow` is cheap: torch, FINN and numpy load only where they are used.
"""

__version__ = "0.1.0"

"""exitflow's exit hardware as FINN layers: confidence-threshold unit, gate and merge.

Each layer is split as in FINN: a generic layer (shapes, stream widths, cycles, resource
estimates, ``execute_node``) and an HLS backend that generates code from a standalone template
in ``hls_templates/``.
"""

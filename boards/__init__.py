"""A built design on a board: the Vivado project and bitfile (:mod:`~exitflow.boards.vivado`) and
the PYNQ driver (:mod:`~exitflow.boards.driver`). The board facts themselves are the catalogue,
:mod:`exitflow.core.catalogue`.
"""

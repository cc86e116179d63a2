"""Hardware generation: exitflow's FINN step list (:mod:`~exitflow.hw.finn_flow`), the build of
every stage and head (:mod:`~exitflow.hw.build`), FINN's folding rules and the record FIFO sizing
(:mod:`~exitflow.hw.folding`) that the build applies and the DSE models.
"""

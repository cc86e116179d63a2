"""exitflow's exit units as FINN ops, registered on demand (importing them loads FINN)."""


def register_finn_ops() -> None:
    """exitflow's FINN layers (ConfidenceThreshold, ExitGate, ExitMerge and their HLS backends) in
    FINN's op registry, so that qonnx's ``getCustomOp`` and FINN's passes know them."""
    import exitflow.hls_templates.ctu_op  # noqa: F401  loads FINN: only once a graph needs the ops
    import exitflow.hls_templates.routing_ops  # noqa: F401

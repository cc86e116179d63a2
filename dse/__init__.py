"""Resource and throughput model of a multi-exit design, and the joint design-space search."""

"""Quantised multi-exit CNNs with Brevitas: build, train, calibrate exits, profile, export."""

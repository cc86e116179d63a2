"""The exit policies' names: the one definition that the design model (:mod:`exitflow.core.design`),
the policy functions (:mod:`exitflow.quant.policies`) and the FINN ops read. Standard library
only, so the PYNQ driver's imports stay numpy alone."""

from __future__ import annotations

from typing import Literal

Policy = Literal["max_prob", "margin", "agreement"]
POLICIES: tuple[str, ...] = ("max_prob", "margin", "agreement")

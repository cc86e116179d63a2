"""One definition of a resource vector: LUT, BRAM18, URAM and DSP, as the search, the build
reports and the sweep report count them (BRAM in 18 Kb halves, as FINN counts it).

:class:`Resources` is a frozen value (a named tuple, so it unpacks, indexes and converts to a
numpy array as the positional vectors it replaces did). FINN's estimate keys are read in one
place, :meth:`Resources.from_finn`. Arrays holding many vectors (the search's ``(..., 4)``
arrays) keep the last axis in the order of :data:`COLUMN`, and index it by name through it:
``total[..., COLUMN.lut]``.

Not :class:`exitflow.core.catalogue.DeviceResources`, a board's device totals (with flip-flops), which
:meth:`Resources.of` reads the four counted ones from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple


class Resources(NamedTuple):
    """LUT, BRAM18, URAM and DSP of a design, a part of one, or a budget.

    ``a + b`` adds element-wise (not tuple concatenation), ``a * k`` scales; zero by default,
    integer zeros, so adding integer counts keeps them integers."""

    lut: Any = 0
    bram18: Any = 0
    uram: Any = 0
    dsp: Any = 0

    @classmethod
    def from_finn(cls, estimate: Mapping) -> Resources:
        """The resources in one of FINN's estimates (``res_estimation``, ``node_res_estimation``,
        ``estimate_layer_resources.json``): keys LUT, BRAM_18K, URAM, DSP; a key it leaves out
        counts 0. The numbers are kept as FINN gives them."""
        return cls(*(estimate.get(key, 0) for key in FINN_KEYS))

    @classmethod
    def of(cls, amount: Any) -> Resources:
        """The LUT, BRAM18, URAM and DSP attributes of ``amount`` (such as a board's
        :class:`~exitflow.core.catalogue.DeviceResources`, whose flip-flops are not counted here)."""
        return cls(*(getattr(amount, name) for name in cls._fields))

    @classmethod
    def total(cls, parts: Iterable[Resources]) -> Resources:
        """The sum of ``parts`` (zero for none)."""
        out = cls()
        for part in parts:
            out = out + part
        return out

    def __add__(self, other: Iterable) -> Resources:  # type: ignore[override]
        a, b, c, d = other
        return Resources(self.lut + a, self.bram18 + b, self.uram + c, self.dsp + d)

    def __radd__(self, other: Any) -> Resources:
        if isinstance(other, int) and other == 0:  # sum(...) starts at 0
            return self
        return self.__add__(other)

    def __sub__(self, other: Iterable) -> Resources:
        a, b, c, d = other
        return Resources(self.lut - a, self.bram18 - b, self.uram - c, self.dsp - d)

    def __mul__(self, factor: float) -> Resources:  # type: ignore[override]
        return self.scaled(factor)

    __rmul__ = __mul__

    def scaled(self, factor: float) -> Resources:
        """Every resource times ``factor`` (a utilisation cap, say)."""
        return Resources(self.lut * factor, self.bram18 * factor, self.uram * factor, self.dsp * factor)

    def fits(self, budget: Iterable, slack: float = 1e-9) -> bool:
        """Whether every resource is at most the budget's (plus ``slack``, for rounding)."""
        return all(a <= b + slack for a, b in zip(self, budget, strict=True))

    def over(self, budget: Iterable, slack: float = 1e-9) -> tuple[str, ...]:
        """The names (:data:`LABELS`) of the resources exceeding the budget (plus ``slack``)."""
        return tuple(label for label, a, b in zip(LABELS, self, budget, strict=True) if a > b + slack)

    def as_dict(self) -> dict[str, Any]:
        """``{"lut": ..., "bram18": ..., "uram": ..., "dsp": ...}``, for JSON and reports."""
        return {"lut": self.lut, "bram18": self.bram18, "uram": self.uram, "dsp": self.dsp}

    def as_tuple(self) -> tuple:
        """``(lut, bram18, uram, dsp)`` as a plain tuple."""
        return (self.lut, self.bram18, self.uram, self.dsp)

    @classmethod
    def from_dict(cls, data: Mapping) -> Resources:
        """The inverse of :meth:`as_dict`; a missing key counts 0."""
        return cls(*(data.get(name, 0) for name in cls._fields))


NAMES: tuple[str, ...] = Resources._fields
"""The resources' names, the keys of :meth:`Resources.as_dict`."""

FINN_KEYS = Resources(lut="LUT", bram18="BRAM_18K", uram="URAM", dsp="DSP")
"""The key of each resource in FINN's estimates."""

LABELS = Resources(lut="LUT", bram18="BRAM18", uram="URAM", dsp="DSP")
"""How messages and plots name each resource."""

COLUMN = Resources(lut=0, bram18=1, uram=2, dsp=3)
"""Where each resource sits on the last axis of an array of resource vectors (``(..., 4)``)."""

"""What every multi-exit model offers the rest of exitflow, whichever class it is: the built-in
:class:`~exitflow.quant.network.MultiExitNet` and a user's own Brevitas model,
:class:`~exitflow.quant.custom.CustomMultiExitNet`. Export, build, sweep and training call these
members instead of asking which class they hold. Names are the user's: block names of a built-in
backbone, module names of a user's model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import nn


@runtime_checkable
class MultiExitModel(Protocol):
    input_shape: tuple[int, ...]  # of one sample, channels first
    num_classes: int
    # True: the stages cannot run on their own (a user's model runs whole, read by hooks), so they
    # are exported by cutting one export of the whole model at the exits' tensors; False: the
    # model's stage_modules(exits) gives every stage and head as modules that run on their own
    stages_cut_from_whole: ClassVar[bool]

    @property
    def exit_names(self) -> list[str]:
        """Every candidate exit in order; the last is the final exit."""
        ...

    def kept_exits(self, exits: list[str]) -> list[str]:
        """The exits of ``exits`` in the model's order, the final exit always added (last)."""
        ...

    def stage_blocks(self, kept: list[str]) -> list[list[str]]:
        """The design's ``blocks`` of each stage for the ``kept`` exits (as :meth:`kept_exits` gives)."""
        ...

    def stage_layers(self, kept: list[str]) -> list[list[tuple[str, nn.Module]]]:
        """The modules of each stage for the ``kept`` exits, each with the name a folding gives it."""
        ...

    def blocks_mismatch(self, stage_blocks: list[list[str]]) -> str | None:
        """Why a design's ``blocks`` of every stage do not describe this model; None if they do."""
        ...

    def head(self, name: str) -> nn.Module:
        """The head of the exit ``name`` (its weight layers are the head's folding keys)."""
        ...

    def exit_head(self, name: str) -> nn.Module:
        """The head of ``name`` as exported: it starts with the quantiser of the feature map it receives."""
        ...

    def frozen_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of what exits-only training keeps fixed: the backbone, the final exit."""
        ...

    def frozen_modules(self) -> list[nn.Module]:
        """The modules exits-only training keeps fixed (and in eval mode)."""
        ...

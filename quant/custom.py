"""A user's own Brevitas backbone with exitflow's exit heads attached by module name.

The user's model is not rewritten: forward hooks read the outputs of the named modules, and an
exit head (``heads.build_head``) is attached to each. The final exit is the user's own
classifier, a ``QuantLinear`` without bias and with a per-tensor weight scale, named by
``classifier``; it is read before anything that follows it (e.g. the ``TensorNorm`` of
``brevitas_examples.bnn_pynq``'s CNV): the backbone's forward stops at the classifier, which is
set to return a QuantTensor, so the confidence unit sees integer logits with one scale.

An exit may follow an activation quantiser (``QuantIdentity``, ``QuantReLU``, ``QuantHardTanh``)
or a max pool directly after one; every head starts by re-applying that quantiser (sharing its
parameters), which is idempotent on the quantised feature map it receives.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import nn

from exitflow.core.design import kept_exits
from exitflow.core.errors import ConfigError

from .heads import build_head
from .presets import Bits

CLASSIFIER_INPUT = "__classifier_input__"


def _is_quantiser(module: nn.Module) -> bool:
    from brevitas.nn import QuantHardTanh, QuantIdentity, QuantReLU

    return isinstance(module, (QuantIdentity, QuantReLU, QuantHardTanh))


def _plain(x) -> torch.Tensor:
    """The float values of a tensor or a Brevitas QuantTensor."""
    return x.value if hasattr(x, "value") else x


def _key(name: str) -> str:
    return name.replace(".", "__")


class _ClassifierReached(Exception):
    """Raised by the hook on the classifier: the backbone's forward stops there, as everything
    exitflow needs has been read and what follows (e.g. a TensorNorm) is not part of any exit."""


class CustomMultiExitNet(nn.Module):
    """``forward`` returns every exit's logits (QuantTensors) in the order of the named modules,
    the user's classifier last, like :class:`~exitflow.quant.network.MultiExitNet`."""

    def __init__(
        self,
        backbone: nn.Module,
        exits: list[str],
        classifier: str,
        input_shape: tuple[int, int, int],
        num_classes: int,
        bits: Bits,
        pool_to: int = 4,
        hidden: int = 0,
    ):
        super().__init__()
        from brevitas.nn import QuantIdentity, QuantLinear

        order = [name for name, _ in backbone.named_modules() if name]
        modules = dict(backbone.named_modules())
        for name in [*exits, classifier]:
            if name not in modules:
                raise ConfigError(f"model.exits: the backbone has no module named {name!r}; modules: {_preview(order)}")
        cls = modules[classifier]
        if not isinstance(cls, QuantLinear) or cls.bias is not None:
            raise ConfigError(
                f"model.classifier: {classifier!r} is a {type(cls).__name__}"
                f"{' with bias' if getattr(cls, 'bias', None) is not None else ''}; "
                "the final exit must be a QuantLinear without bias"
            )
        if cls.quant_weight().scale.numel() != 1:
            raise ConfigError(
                f"model.classifier: {classifier!r} has per-channel weight scales; "
                "the final exit needs one per-tensor scale"
            )
        ordered_exits = sorted(dict.fromkeys(exits), key=order.index)
        if any(order.index(e) >= order.index(classifier) for e in ordered_exits):
            raise ConfigError(f"model.exits: every exit must come before the classifier {classifier!r}")
        self.backbone = backbone
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.classifier_name = classifier
        self.early = ordered_exits
        self._taps: dict[str, object] = {}
        self._tapping = False
        self._quantiser_of = {e: self._find_quantiser(order, modules, e) for e in ordered_exits}
        self._quantiser_of[CLASSIFIER_INPUT] = self._last_quantiser_before(order, modules, classifier)
        _check_layers(order, modules, classifier)
        _check_stages(order, modules, ordered_exits, classifier)
        for name in ordered_exits:
            modules[name].register_forward_hook(self._tap(name))
        cls.register_forward_pre_hook(self._stop_at_classifier)
        cls.return_quant_tensor = True  # the final exit reads integer logits with their scale
        was_training = backbone.training
        backbone.eval()
        with torch.no_grad():
            self._run(torch.zeros(1, *input_shape))
        backbone.train(was_training)
        self.shapes = {e: tuple(self._taps[e].shape[1:]) for e in ordered_exits}
        self.heads = nn.ModuleDict()
        for e in ordered_exits:
            requant = QuantIdentity(act_quant=modules[self._quantiser_of[e]].act_quant, return_quant_tensor=True)
            self.heads[_key(e)] = nn.Sequential(requant, build_head(self.shapes[e], num_classes, bits, pool_to, hidden))
        final_requant = QuantIdentity(
            act_quant=modules[self._quantiser_of[CLASSIFIER_INPUT]].act_quant, return_quant_tensor=True
        )
        self.heads[_key(classifier)] = nn.Sequential(final_requant, cls)
        self._check_classifier_input(input_shape)
        self.train(was_training)

    def _check_classifier_input(self, input_shape) -> None:
        """The final head re-applies the last quantiser before the classifier to what the
        classifier reads; that must change nothing (else the head computes something else than
        the user's model): e.g. an average pool between them leaves values off the quantiser's grid."""
        was_training = self.backbone.training
        self.backbone.eval()
        requant = self.heads[_key(self.classifier_name)][0].eval()
        try:
            with torch.no_grad():
                read = self._run(torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(0)))
                value = _plain(read[CLASSIFIER_INPUT])
                again = _plain(requant(value))
        finally:
            self.backbone.train(was_training)
        if not torch.equal(value, again):
            quantiser = self._quantiser_of[CLASSIFIER_INPUT]
            raise ConfigError(
                f"model.classifier: {self.classifier_name!r} does not read the output of an activation quantiser "
                f"(something between {quantiser!r} and it, e.g. an average pool, changes the values); "
                f"put a QuantIdentity right before {self.classifier_name!r}"
            )

    # -- structure ---------------------------------------------------------------------------

    @staticmethod
    def _find_quantiser(order: list[str], modules: dict, name: str) -> str:
        module = modules[name]
        if _is_quantiser(module):
            return name
        if isinstance(module, nn.MaxPool2d):
            parent = name.rpartition(".")[0]
            siblings = [n for n in order[: order.index(name)] if n.rpartition(".")[0] == parent]
            if siblings and _is_quantiser(modules[siblings[-1]]):
                return siblings[-1]
        raise ConfigError(
            f"model.exits: {name!r} is a {type(module).__name__}; an exit must follow an activation quantiser "
            "(QuantIdentity, QuantReLU, QuantHardTanh) or a max pool right after one"
        )

    @staticmethod
    def _last_quantiser_before(order: list[str], modules: dict, name: str) -> str:
        before = [n for n in order[: order.index(name)] if _is_quantiser(modules[n])]
        if not before:
            raise ConfigError(f"model.classifier: no activation quantiser before {name!r}")
        return before[-1]

    def _tap(self, name: str) -> Callable:
        def hook(module, args, output):
            self._taps[name] = output

        return hook

    def _stop_at_classifier(self, module, args):
        if self._tapping:  # not when the final head itself calls the classifier
            self._taps[CLASSIFIER_INPUT] = args[0]
            raise _ClassifierReached

    def _run(self, x: torch.Tensor) -> dict:
        self._taps.clear()
        self._tapping = True
        try:
            self.backbone(x)
        except _ClassifierReached:
            pass
        finally:
            self._tapping = False
        missing = [n for n in [*self.early, CLASSIFIER_INPUT] if n not in self._taps]
        if missing:
            key, name = (
                ("model.classifier", self.classifier_name)
                if missing[0] == CLASSIFIER_INPUT
                else ("model.exits", missing[0])
            )
            raise ConfigError(
                f"{key}: module {name!r} was not called by the backbone's forward; name a module its forward runs"
            )
        return dict(self._taps)

    @property
    def exit_names(self) -> list[str]:
        return [*self.early, self.classifier_name]

    def exit_feature(self, taps: dict, name: str):
        return taps[CLASSIFIER_INPUT if name == self.classifier_name else name]

    def forward(self, x: torch.Tensor) -> list:
        taps = self._run(x)
        return [self.heads[_key(n)](self.exit_feature(taps, n)) for n in self.exit_names]

    def head(self, name: str) -> nn.Module:
        return self.heads[_key(name)]

    # -- the MultiExitModel protocol (quant/model.py) ------------------------------------------

    stages_cut_from_whole = True  # the backbone runs whole, read by hooks: one export, cut at the exits

    def kept_exits(self, exits: list[str]) -> list[str]:
        return kept_exits([e for e in self.exit_names[:-1] if e in exits], self.exit_names[-1])

    def stage_blocks(self, kept: list[str]) -> list[list[str]]:
        """A stage of the user's model is named by the exit it ends at (the classifier for the last)."""
        return [[e] for e in kept]

    def stage_layers(self, kept: list[str]) -> list[list[tuple[str, nn.Module]]]:
        """The backbone's modules after exit k-1 up to (not including) exit k, by module name."""
        order = [n for n, _ in self.backbone.named_modules() if n]
        modules = dict(self.backbone.named_modules())
        out, start = [], 0
        for e in kept:
            end = order.index(e)
            out.append([(name, modules[name]) for name in order[start:end]])
            start = end + 1
        return out

    def blocks_mismatch(self, stage_blocks: list[list[str]]) -> str | None:
        return None  # a stage is cut at the exit it ends with; the names before it are not used

    def exit_head(self, name: str) -> nn.Module:
        return self.head(name)  # already starts with the exit's quantiser

    # -- training ------------------------------------------------------------------------------

    def frozen_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of what exits-only training keeps fixed: the backbone, the final exit."""
        return ("backbone.", f"heads.{_key(self.classifier_name)}.")

    def frozen_modules(self) -> list[nn.Module]:
        return [self.backbone, self.heads[_key(self.classifier_name)]]


def _is_weight_layer(module: nn.Module) -> bool:
    from brevitas.nn import QuantConv2d, QuantLinear

    return isinstance(module, (QuantConv2d, QuantLinear))


def _inside_brevitas_layer(name: str, modules: dict) -> bool:
    """A submodule of a Brevitas layer (its quantisers' own parts), not a layer of the user's."""
    parts = name.split(".")
    return any(
        type(modules[".".join(parts[:i])]).__module__.startswith("brevitas.")
        for i in range(1, len(parts))
        if ".".join(parts[:i]) in modules
    )


def _check_layers(order: list[str], modules: dict, classifier: str) -> None:
    """Layers before the classifier that FINN cannot map to hardware, named as the user named them."""
    for name in order[: order.index(classifier)]:
        module = modules[name]
        if _inside_brevitas_layer(name, modules) or type(module).__module__.startswith("brevitas."):
            continue
        for plain, quant in ((nn.Conv2d, "QuantConv2d"), (nn.Linear, "QuantLinear"), (nn.Conv1d, "QuantConv1d")):
            if isinstance(module, plain):
                raise ConfigError(
                    f"model.factory: {name!r} is a torch {type(module).__name__}, not quantised: the hardware has only "
                    f"quantised weight layers; make it a brevitas.nn.{quant}"
                )


def _check_stages(order: list[str], modules: dict, exits: list[str], classifier: str) -> None:
    """Every stage (the input to the first exit, from one exit to the next, from the last exit to
    the classifier) holds at least one weight layer: a stage without one would be no hardware."""
    bounds = [None, *exits, classifier]
    for start, end in zip(bounds, bounds[1:], strict=False):
        first = 0 if start is None else order.index(start) + 1
        between = order[first : order.index(end)]
        if any(_is_weight_layer(modules[n]) for n in between):
            continue
        if start is None:
            where = f"before the first exit {end!r}"
        elif end == classifier:
            where = f"between the exit {start!r} and the classifier {classifier!r}"
        else:
            where = f"between the exits {start!r} and {end!r}"
        fix = f"drop the exit {start!r}" if start is not None else f"drop the exit {end!r}"
        raise ConfigError(
            f"model.exits: no weight layer (QuantConv2d or QuantLinear) {where}, so that stage would have no "
            f"hardware; {fix} or move it after a weight layer"
        )


def _preview(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def load_factory(spec: str) -> Callable[..., nn.Module]:
    """``"package.module:callable"`` -> the callable; a bad spec is one ConfigError line."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"model.factory: {spec!r} must be 'package.module:callable'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"model.factory: cannot import {module_name!r} ({err})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"model.factory: {module_name!r} has no callable {attr!r}")
    return factory

"""One place that lists every model: ``create_model(name)``, ``list_models()``, ``model_spec(name)``.

Builders register themselves with :func:`register_model`; architecture and weights stay apart
(``create_model(..., weights=...)`` resolves weights through :mod:`robustbench_bivol.weights`).
"""
from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import UsageError

Builder = Callable[..., nn.Module]

#: Operator families compared by the toolkit.
OPERATORS = ("static", "condconv", "dyconv", "involution", "bivolution")


@dataclass(frozen=True)
class ModelSpec:
    """What the toolkit must know about an architecture before any weights are loaded."""

    name: str
    builder: Builder
    input_size: int  # square side the model is meant for (32 CIFAR-style, 224 ImageNet-style)
    operator: str  # one of OPERATORS
    default_num_classes: int


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(*, input_size: int, operator: str, num_classes: int) -> Callable[[Builder], Builder]:
    """Decorator: list ``builder`` under its function name."""
    if operator not in OPERATORS:
        raise ValueError(f"operator must be one of {OPERATORS}, got {operator}")

    def decorator(builder: Builder) -> Builder:
        name = builder.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name} registered twice")
        _REGISTRY[name] = ModelSpec(name, builder, input_size, operator, num_classes)
        return builder

    return decorator


class UnknownModelError(UsageError):
    """A model name that is not registered."""


def model_spec(name: str) -> ModelSpec:
    """The registered spec of ``name``; an unknown name suggests the closest one."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UnknownModelError(
            f"unknown model '{name}'.{hint} `bivol-robust models` lists them all."
        ) from None


def list_models(operator: str | None = None) -> list[str]:
    """Registered model names, optionally only those of one operator family."""
    return sorted(n for n, s in _REGISTRY.items() if operator is None or s.operator == operator)


def create_model(name: str, num_classes: int | None = None, weights: str | None = None) -> nn.Module:
    """Build ``name``; with ``weights`` (bundled tag, file, URL, ``torchvision:ENUM``) load them.

    With weights, ``num_classes`` defaults to the checkpoint's; a conflicting value is an error.
    """
    spec = model_spec(name)
    if weights is None:
        return spec.builder(num_classes=num_classes or spec.default_num_classes)
    from ..weights import load_weights

    state_dict, meta = load_weights(weights, name)
    if num_classes is not None and num_classes != meta.num_classes:
        raise UsageError(f"weights '{weights}' predict {meta.num_classes} classes, not {num_classes}")
    model = spec.builder(num_classes=meta.num_classes)
    load_state_dict_strict(model, state_dict, source=weights)
    return model


def load_state_dict_strict(model: nn.Module, state_dict: dict, source: str) -> None:
    """Load all keys or fail with one line naming the missing and unexpected ones."""
    from ..errors import CheckpointError

    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong_shape = [k for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    if missing or unexpected or wrong_shape:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
        parts = [f"{label} {len(keys)}: {show(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)) if keys]
        raise CheckpointError(f"weights '{source}' do not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state_dict)


def set_temperature(model: nn.Module, temperature: float) -> int:
    """Set the softmax temperature of every module that has one (DyConv); returns how many."""
    count = 0
    for module in model.modules():
        if hasattr(module, "set_temperature") and module is not model:
            module.set_temperature(temperature)
            count += 1
    return count

"""Turn ``--model NAME[=WEIGHTS]`` into a ready :class:`ModelEntry`."""
from __future__ import annotations

from ..data import BUILTIN
from ..errors import UsageError
from ..models import create_model, list_models, load_state_dict_strict, model_spec
from ..weights import bundled_tags, load_weights
from .engine import ModelEntry

#: Bundled weights used when the built-in dataset is evaluated without explicit weights.
BUILTIN_TAG = "builtin"


def bundled_models_for(dataset: str) -> list[str]:
    """Models with bundled weights for the built-in dataset (the default of ``evaluate``)."""
    if dataset != BUILTIN:
        raise UsageError("no default models for a dataset on disk: name them with --model NAME=WEIGHTS.")
    names = [name for name in list_models() if BUILTIN_TAG in bundled_tags(name)]
    if not names:
        raise UsageError("this installation has no bundled weights; name a model and --weights.")
    # Static models first, so the baseline leads every table.
    return sorted(names, key=lambda n: (model_spec(n).operator != "static", n))


def load_entry(spec: str, default_weights: str | None, dataset: str = BUILTIN) -> ModelEntry:
    """``spec`` is ``NAME`` or ``NAME=WEIGHTS``; weights default to ``--weights``, then, on the
    built-in dataset only, to the bundled weights trained on it."""
    name, _, weights = spec.partition("=")
    model_spec(name)  # unknown names fail here, with a suggestion
    weights = weights or default_weights or _default_tag(name, dataset)
    state_dict, meta = load_weights(weights, name)
    module = create_model(name, num_classes=meta.num_classes)
    load_state_dict_strict(module, state_dict, source=weights)
    return ModelEntry(name=name, module=module, meta=meta, weights=weights)


def _default_tag(name: str, dataset: str) -> str:
    tags = bundled_tags(name)
    if dataset == BUILTIN and BUILTIN_TAG in tags:
        return BUILTIN_TAG
    # Elsewhere weights are never guessed: weights trained on other data would be scored silently.
    hint = f" (bundled: {', '.join(tags)})" if tags else ""
    raise UsageError(f"model {name} needs weights: use --model {name}=WEIGHTS or --weights{hint}.")

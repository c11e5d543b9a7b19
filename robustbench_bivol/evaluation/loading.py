"""Turn ``--model NAME[=WEIGHTS]`` or a Python ``nn.Module`` into a ready :class:`ModelEntry`."""
from __future__ import annotations

from typing import Any

from torch import nn

from ..data import BUILTIN
from ..data.torch_dataset import as_uint8, is_torch_dataset
from ..errors import UsageError
from ..models import create_model, list_models, load_state_dict_strict, model_spec
from ..models.external import is_external, load_external, preprocessing, state_digest
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


def native_size(dataset: Any) -> int:
    """The input size of a model whose own preprocessing does not say (a Python module, a factory's
    model): a torch dataset's own image size, 32 px on the built-in dataset, 224 px elsewhere."""
    if is_torch_dataset(dataset):
        return int(as_uint8(dataset[0][0]).shape[-1])
    return 32 if dataset == BUILTIN else 224


def load_entry(spec: str, default_weights: str | None, dataset: Any = BUILTIN, key: str | None = None) -> ModelEntry:
    """``spec`` is ``NAME`` or ``NAME=WEIGHTS``; weights default to ``--weights``, then, on the
    built-in dataset only, to the bundled weights trained on it. ``NAME`` may also be
    ``timm:NAME``, ``torchvision:NAME`` or ``package.module:factory`` (:mod:`..models.external`),
    whose weights default to the library's pretrained ones. ``key`` names the model in the results
    (default: ``NAME``)."""
    name, _, weights = spec.partition("=")
    if is_external(name):
        weights = weights or default_weights or ""
        module, meta = load_external(name, weights, default_size=native_size(dataset))
        return ModelEntry(name=key or name, module=module, meta=meta, weights=weights or "pretrained")
    model_spec(name)  # unknown names fail here, with a suggestion
    weights = weights or default_weights or _default_tag(name, dataset)
    state_dict, meta = load_weights(weights, name)
    module = create_model(name, num_classes=meta.num_classes)
    load_state_dict_strict(module, state_dict, source=weights)
    return ModelEntry(name=key or name, module=module, meta=meta, weights=weights)


def module_entry(key: str, module: nn.Module, *, input_size: int | None = None,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                 default_size: int = 224) -> ModelEntry:
    """A model built in Python. Its preprocessing comes from the arguments, else from a timm-style
    ``pretrained_cfg`` on the module, else ``default_size`` with ImageNet's mean and std; its
    weights are identified by a digest, so a run folder refuses to resume with other weights."""
    meta = preprocessing(module, key, dataset="python", input_size=input_size, mean=mean, std=std,
                         default_size=default_size)
    return ModelEntry(name=key, module=module, meta=meta,
                      weights=f"module {type(module).__qualname__} sha256:{state_digest(module)}")


def _default_tag(name: str, dataset: str) -> str:
    tags = bundled_tags(name)
    if dataset == BUILTIN and BUILTIN_TAG in tags:
        return BUILTIN_TAG
    # Elsewhere weights are never guessed: weights trained on other data would be scored silently.
    hint = f" (bundled: {', '.join(tags)})" if tags else ""
    raise UsageError(f"model {name} needs weights: use --model {name}=WEIGHTS or --weights{hint}.")

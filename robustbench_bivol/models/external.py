"""Models from outside the registry: ``timm:NAME``, ``torchvision:NAME`` and ``package.module:factory``.

Each becomes a module plus the :class:`CheckpointMeta` that says how to feed it (input size,
shorter side before the centre crop, mean and std): timm's ``pretrained_cfg``, the transforms of
a torchvision weights enum, the meta of a toolkit checkpoint, or, for a factory, the
``pretrained_cfg`` its model may carry (timm's convention) and else the dataset's own size
with ImageNet's mean and std. Weights are a local file (a plain state_dict or a toolkit checkpoint, always read
with ``weights_only=True``), an https URL with its sha256, or, when none are named, the
library's own pretrained weights (timm's default tag, torchvision's ``DEFAULT`` enum).
"""
from __future__ import annotations

import difflib
import hashlib
import importlib
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..checkpoint import CheckpointMeta, load_safely
from ..errors import CheckpointError, UsageError
from ..weights import IMAGENET_MEAN, IMAGENET_STD, torchvision_weights, weights_file
from .registry import UnknownModelError, load_state_dict_strict

DEFAULT_INPUT_SIZE = 224
TIMM_INSTALL = "pip install 'robustbench_bivol[timm]'"


def is_external(name: str) -> bool:
    """Registry names never hold a colon; ``timm:``, ``torchvision:`` and factories do."""
    return ":" in name


def load_external(name: str, weights: str | None,
                  default_size: int = DEFAULT_INPUT_SIZE) -> tuple[nn.Module, CheckpointMeta]:
    """Build ``name`` (``timm:NAME``, ``torchvision:NAME`` or ``package.module:factory``) with ``weights``;
    a factory's model without a ``pretrained_cfg`` gets ``default_size`` px inputs."""
    kind, _, target = name.partition(":")
    if not kind or not target:
        raise UsageError(f"model '{name}': give timm:NAME, torchvision:NAME or package.module:factory")
    if kind == "timm":
        return _timm(target, weights, name)
    if kind == "torchvision":
        return _torchvision(target, weights, name)
    return _factory(kind, target, weights, name, default_size)


# ----------------------------------------------------------------------------- timm

def _timm(arch: str, weights: str | None, name: str) -> tuple[nn.Module, CheckpointMeta]:
    try:
        import timm
    except ImportError:
        raise UsageError(f"model '{name}' needs timm, which is not installed: {TIMM_INSTALL}") from None
    if not timm.is_model(arch):
        raise UnknownModelError(f"timm has no model '{arch}'.{_suggest(arch, timm.list_models())} "
                                "`timm.list_models()` lists them all.")

    def build(**kwargs: Any) -> nn.Module:
        return _call(lambda: timm.create_model(arch, **kwargs), f"timm cannot create '{arch}'")

    if not weights:
        try:
            model = timm.create_model(arch, pretrained=True)  # downloads from the Hugging Face hub
        except Exception as exc:  # network, hub or tag errors: all mean the same to a user
            raise CheckpointError(f"cannot fetch timm's pretrained weights for '{arch}': {_first_line(exc)}") from None
        return model, preprocessing(model, name, dataset=str(model.pretrained_cfg.get("hf_hub_id") or "timm"))
    state_dict, meta = _read_weights(weights, name)
    model = build(pretrained=False)
    head = model.pretrained_cfg.get("classifier")
    classes = _head_rows(state_dict, head[0] if isinstance(head, (tuple, list)) else head)
    if classes is not None and classes != model.num_classes:
        model = build(pretrained=False, num_classes=classes)
    load_state_dict_strict(model, state_dict, source=weights)
    return model, meta or preprocessing(model, name, dataset=weights)


# ----------------------------------------------------------------------------- torchvision

def _torchvision(arch: str, weights: str | None, name: str) -> tuple[nn.Module, CheckpointMeta]:
    import torchvision

    known = torchvision.models.list_models()
    if arch not in known:
        raise UnknownModelError(f"torchvision has no model '{arch}'.{_suggest(arch, known)}")
    path = weights_file(weights) if weights else None
    if path is None and weights and ("/" in weights or weights.endswith((".pt", ".pth"))):
        raise CheckpointError(f"weights file not found: {weights}")
    if path is None:  # an enum name, or the DEFAULT weights
        state_dict, meta = torchvision_weights(weights or "DEFAULT", arch)
        meta.arch = name
        model = torchvision.models.get_model(arch, num_classes=meta.num_classes)
        load_state_dict_strict(model, state_dict, source=f"{name}={weights or 'DEFAULT'}")
        return model, meta
    state_dict, meta = _read_weights(weights, name)
    model = torchvision.models.get_model(arch)
    head = next((key for key, m in reversed(list(model.named_modules())) if isinstance(m, nn.Linear)), None)
    classes = _head_rows(state_dict, head)
    if classes is not None and classes != model.get_submodule(head).out_features:
        model = torchvision.models.get_model(arch, num_classes=classes)
    load_state_dict_strict(model, state_dict, source=weights)
    if meta is None:
        meta = preprocessing(model, name, dataset=weights, cfg=_torchvision_cfg(arch))
    return model, meta


def _torchvision_cfg(arch: str) -> dict[str, Any]:
    """The preprocessing of torchvision's DEFAULT weights for ``arch`` (no download), as a timm-style cfg."""
    import torchvision

    try:
        transforms = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
    except (ValueError, AttributeError):
        return {}
    size = int(transforms.crop_size[0])
    return {"input_size": (3, size, size), "crop_pct": size / int(transforms.resize_size[0]),
            "mean": tuple(transforms.mean), "std": tuple(transforms.std)}


# ----------------------------------------------------------------------------- package.module:factory

def _factory(module_path: str, attribute: str, weights: str | None, name: str,
             default_size: int) -> tuple[nn.Module, CheckpointMeta]:
    if os.getcwd() not in sys.path:  # `bivol-robust` is a script: its sys.path lacks the working directory
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_path)
    except Exception as exc:  # ImportError, or any error raised by the module's own code
        raise UsageError(f"model '{name}': cannot import {module_path}: {type(exc).__name__}: "
                         f"{_first_line(exc)}") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise UsageError(f"model '{name}': module {module_path} has no callable '{attribute}'")
    model = _call(factory, f"model '{name}': {module_path}.{attribute}() failed")
    if not isinstance(model, nn.Module):
        raise UsageError(f"model '{name}': {module_path}.{attribute}() returned {type(model).__name__}, "
                         "not a torch.nn.Module")
    meta = None
    if weights:
        state_dict, meta = _read_weights(weights, name)
        load_state_dict_strict(model, state_dict, source=weights)
    return model, meta or preprocessing(model, name, dataset=weights or "", default_size=default_size)


# ----------------------------------------------------------------------------- shared

def preprocessing(model: nn.Module, name: str, *, dataset: str = "", input_size: int | None = None,
                  mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                  cfg: dict[str, Any] | None = None, default_size: int = DEFAULT_INPUT_SIZE) -> CheckpointMeta:
    """How to feed ``model``: explicit arguments first, then ``cfg`` or the model's timm-style
    ``pretrained_cfg``, else ``default_size`` and ImageNet's mean and std. The class count is the
    width of the model's output, measured on one blank image."""
    cfg = cfg if cfg is not None else dict(getattr(model, "pretrained_cfg", None) or {})
    size = input_size or int(cfg.get("input_size", (3, default_size, default_size))[-1])
    crop = cfg.get("crop_pct") if input_size is None else None
    return CheckpointMeta(arch=name, num_classes=output_classes(model, size, name), input_size=size,
                          mean=tuple(float(v) for v in (mean or cfg.get("mean") or IMAGENET_MEAN)),
                          std=tuple(float(v) for v in (std or cfg.get("std") or IMAGENET_STD)),
                          dataset=dataset, resize=math.floor(size / crop) if crop else None)


def output_classes(model: nn.Module, input_size: int, name: str) -> int:
    """Width of ``model``'s output for one blank (1, 3, size, size) image."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = model(torch.zeros(1, 3, input_size, input_size))
    except Exception as exc:  # wrong input size, wrong channel count, ...
        raise UsageError(f"model '{name}' fails on a 1x3x{input_size}x{input_size} input ({_first_line(exc)}); "
                         "give its input size") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise UsageError(f"model '{name}' must return (batch, classes) logits, got "
                         f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    return int(out.shape[1])


def state_digest(model: nn.Module) -> str:
    """sha256 prefix of a module's parameters and buffers: identifies a Python-built model in a run's
    configuration, so that resuming a run folder with other weights is refused."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _read_weights(source: str, name: str) -> tuple[dict[str, torch.Tensor], CheckpointMeta | None]:
    """A plain state_dict (or ``{'state_dict': ...}``), or a toolkit checkpoint whose meta is returned."""
    path = weights_file(source)
    if path is None:
        raise CheckpointError(f"weights file not found: {source} (give a state_dict file or an https URL)")
    payload = load_safely(path)
    meta = None
    if isinstance(payload, dict) and "meta" in payload and "state_dict" in payload:
        meta = CheckpointMeta.from_dict(payload["meta"])
        if meta.arch != name:
            raise CheckpointError(f"weights '{source}' are for {meta.arch}, not {name}.")
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CheckpointError(f"{source} holds neither a state_dict nor a checkpoint with one")
    return payload, meta


def _head_rows(state_dict: dict[str, torch.Tensor], head: str | None) -> int | None:
    """Output classes of the state_dict's classifier ``head`` (its weight's first dimension)."""
    weight = state_dict.get(f"{head}.weight") if head else None
    return int(weight.shape[0]) if weight is not None else None


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _call(function: Callable[[], Any], what: str) -> Any:
    try:
        return function()
    except Exception as exc:  # user or library code: its first line is the useful part
        raise UsageError(f"{what}: {type(exc).__name__}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]

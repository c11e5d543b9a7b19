"""ImageNet-C style corruptions as batched, deterministic torch operations.

Public API: :func:`corrupt` plus the corruption names/groups and helpers. Importing the package
is light (names and validation only); the torch implementations, the JPEG helper and the
reference backend are loaded on first use.
"""
from __future__ import annotations

from typing import Any

from .registry import (ALL, BENCHMARK, EXTRA, GROUPS, SEVERITIES, UnknownCorruptionError,
                       group_of, select, validate, validate_severity)

_LAZY = {
    "corrupt": ("api", "corrupt"),
    "profile_for_size": ("profiles", "profile_for_size"),
    "resolve_profile": ("profiles", "resolve_profile"),
    "jpeg_round_trip": ("jpeg", "jpeg_round_trip"),
    "IMPLEMENTATIONS": ("ops", "IMPLEMENTATIONS"),
}

__all__ = ["corrupt", "GROUPS", "BENCHMARK", "EXTRA", "ALL", "SEVERITIES",
           "UnknownCorruptionError", "group_of", "validate", "validate_severity", "select",
           "profile_for_size", "resolve_profile", "jpeg_round_trip", "IMPLEMENTATIONS"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

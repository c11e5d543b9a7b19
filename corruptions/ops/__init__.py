"""Batched torch implementations of the 19 corruptions; importing this fills IMPLEMENTATIONS."""
from __future__ import annotations

from ..registry import ALL
from . import blur, digital, geometric, noise, weather  # noqa: F401  (each registers its ops)
from .base import IMPLEMENTATIONS, PROFILE_SIZES, TorchCorruption, register

_missing = [name for name in ALL if name not in IMPLEMENTATIONS]
assert not _missing, f"corruptions without a torch implementation: {_missing}"

__all__ = ["IMPLEMENTATIONS", "PROFILE_SIZES", "TorchCorruption", "register"]

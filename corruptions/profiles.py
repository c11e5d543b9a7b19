"""Parameter profiles: which generator's per-severity tables to use for a given image size.

Hendrycks' three generators tune their parameters to one image side each: ``cifar``
(make_cifar_c.py, 32 px), ``tinyimagenet`` (make_tinyimagenet_c.py, 64 px) and ``imagenet``
(make_imagenet_c.py, 224 px). :func:`profile_for_size` picks the profile whose side is nearest to
the image's *shorter* side on a logarithmic scale (corruption strength scales with zoom, not with
pixel differences), i.e. the thresholds are the geometric means of neighbouring sides:

    shorter side <  sqrt(32*64)  ~= 45.3 px  -> 'cifar'
    shorter side <  sqrt(64*224) ~= 119.7 px -> 'tinyimagenet'
    otherwise                                -> 'imagenet'
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from .registry import UnknownCorruptionError

#: profile -> image side its generator was written for.
PROFILE_SIZES: dict[str, int] = {"cifar": 32, "tinyimagenet": 64, "imagenet": 224}
PROFILES: tuple[str, ...] = tuple(PROFILE_SIZES)


def _sides(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    dims = tuple(int(s) for s in size)
    if len(dims) < 2:
        raise ValueError(f"size must be an int or (..., H, W), got {size!r}")
    return dims[-2], dims[-1]


def profile_for_size(height: int, width: int | None = None) -> str:
    """The profile nearest (in log scale) to the shorter side of an image of ``height x width``."""
    width = height if width is None else width
    side = min(int(height), int(width))
    if side <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    return min(PROFILES, key=lambda p: abs(math.log(side / PROFILE_SIZES[p])))


def resolve_profile(profile: str | None, size: int | Sequence[int]) -> str:
    """Validate ``profile``, or pick one from ``size`` (an int side, or a shape ending in H, W)."""
    if profile is None:
        return profile_for_size(*_sides(size))
    if profile not in PROFILE_SIZES:
        raise UnknownCorruptionError(
            f"unknown profile '{profile}'. Choose from: {', '.join(PROFILES)} (or None to pick by "
            "image size).")
    return profile

"""Float images back to 8-bit levels, the way the reference generators store them.

Conversion back to uint8 follows the generators: they return floats in [0, 255] that are stored
with ``np.uint8``, i.e. clipped then *truncated*. For float32 results a tiny epsilon (1e-3 of a level) is added
before flooring so values that are exact levels (k/255 stored in float32) do not drop one level
through float32 rounding; float64 results (the digital ops, which mirror the NumPy reference in
float64) are truncated exactly, like ``np.uint8``.

Its own module so that the ops (noise) and the entry point (:mod:`corruptions.api`) both
import it without importing each other.
"""
from __future__ import annotations

import torch

_EPS_LEVELS = 1e-3


def to_uint8(x: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """Float images in [0, 1] -> uint8 by clipping and truncating like ``np.uint8(x * 255)``.

    ``inplace=True`` reuses ``x`` as scratch (the api passes op outputs it owns). Clamping
    ``x * 255 + eps`` to [0, 255] gives the same levels as scaling ``clip(x, 0, 1)``, and the
    cast truncates the non-negative result, so no separate clip or floor pass is needed.
    """
    eps = 0.0 if x.dtype == torch.float64 else _EPS_LEVELS
    y = x.mul_(255) if inplace else x * 255
    if eps:
        y = y.add_(eps)
    return y.clamp_(0, 255).to(torch.uint8)

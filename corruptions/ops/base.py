"""The contract every batched torch corruption follows, and the table that collects them.

An implementation receives float32 images in [0, 1] of shape (B, 3, H, W) on any device, the
per-severity parameter ``c`` taken from its profile table (exactly the value Hendrycks' generator
indexes with ``[severity - 1]``), and the batch's random streams (:class:`corruptions.philox.Streams`,
one per image). It returns float32
images of the same shape in [0, 1] (values outside are clipped by the caller, which then
truncates to uint8 as the reference generators do with ``np.uint8``).

Randomness is drawn per image from its own counter-based stream, on the images' device, so the
output of one image never depends on the rest of the batch, and CPU and GPU runs draw the same
random integers.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..philox import Streams
from ..profiles import PROFILE_SIZES
from ..registry import validate

CorruptionFn = Callable[[torch.Tensor, Any, Streams], torch.Tensor]


@dataclass(frozen=True)
class TorchCorruption:
    """One corruption: its implementation and its per-severity parameters for every profile."""

    name: str
    fn: CorruptionFn
    params: dict[str, tuple[Any, ...]]  # profile -> 5 entries, severity 1..5
    #: optional uint8 -> uint8 implementation with the same output as ``to_uint8(fn(u / 255))``,
    #: used by :func:`corruptions.corrupt` for the 8-bit ops (pixelate, JPEG).
    fn_uint8: Callable[[torch.Tensor, Any, Streams], torch.Tensor] | None = None
    #: the op works image by image itself (JPEG): the api hands it the whole batch, since
    #: cache-sized chunks gain it nothing and joining them costs a copy of the batch.
    per_image: bool = False

    def param(self, profile: str, severity: int) -> Any:
        return self.params[profile][severity - 1]


IMPLEMENTATIONS: dict[str, TorchCorruption] = {}


def register(name: str, params: dict[str, Sequence[Any]], fn_uint8: CorruptionFn | None = None,
             per_image: bool = False) -> Callable[[CorruptionFn], CorruptionFn]:
    """Register ``fn`` as the torch implementation of ``name`` with its profile tables (and an
    optional uint8 -> uint8 fast path, see :attr:`TorchCorruption.fn_uint8` and ``per_image``)."""
    validate(name)
    missing = set(PROFILE_SIZES) - set(params)
    if missing or any(len(v) != 5 for v in params.values()):
        raise ValueError(f"{name}: need 5 parameters for each profile {sorted(PROFILE_SIZES)}")

    def decorator(fn: CorruptionFn) -> CorruptionFn:
        IMPLEMENTATIONS[name] = TorchCorruption(name, fn, {k: tuple(v) for k, v in params.items()},
                                                fn_uint8, per_image)
        return fn

    return decorator

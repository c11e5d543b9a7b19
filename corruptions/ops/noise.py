"""Noise corruptions: Gaussian, shot (Poisson), impulse (salt & pepper) and speckle.

Per-severity tables are exact copies of Hendrycks' generators (make_imagenet_c.py,
make_tinyimagenet_c.py, make_cifar_c.py). Every random number is drawn on the CPU from the
image's own generator, so an image's noise never depends on its batch or on the device.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .base import register


def per_image(generators: Sequence[torch.Generator], draw: Callable[[torch.Generator], torch.Tensor],
              device: torch.device) -> torch.Tensor:
    """Stack one CPU draw per image (``draw(generator)``) and move the batch to ``device``."""
    return torch.stack([draw(g) for g in generators]).to(device)


def per_image_into(generators: Sequence[torch.Generator], shape: tuple[int, ...], sampler: str,
                   device: torch.device) -> torch.Tensor:
    """``per_image`` for ``torch.rand`` / ``torch.randn`` (same numbers), drawn straight into one
    preallocated CPU batch instead of stacking copies."""
    out = torch.empty(len(generators), *shape)
    fn = torch.rand if sampler == "rand" else torch.randn
    for row, g in zip(out, generators):
        fn(shape, generator=g, out=row)
    return out.to(device)


@register("gaussian_noise", params={
    "imagenet": [.08, .12, 0.18, 0.26, 0.38],
    "tinyimagenet": [0.04, 0.08, .12, .15, .18],
    "cifar": [0.04, 0.06, .08, .09, .10],
})
def gaussian_noise(x: torch.Tensor, c: float, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Additive N(0, c^2) noise per element."""
    noise = per_image_into(generators, tuple(x.shape[1:]), "randn", x.device)
    return noise.mul_(c).add_(x)  # x + c * noise (addition commutes exactly)


@register("shot_noise", params={
    "imagenet": [60, 25, 12, 5, 3],
    "tinyimagenet": [250, 100, 50, 30, 15],
    "cifar": [500, 250, 100, 75, 50],
})
def shot_noise(x: torch.Tensor, c: float, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Poisson photon noise: ``Poisson(x * c) / c`` (c photons at full intensity).

    ``torch.poisson`` only accepts a CPU generator for CPU rates, so the rates visit the CPU.
    """
    rates = (x * c).cpu()
    counts = torch.stack([torch.poisson(r, generator=g) for r, g in zip(rates, generators)])
    return counts.to(x.device) / float(c)


def _impulse_uint8(u: torch.Tensor, c: float, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """``to_uint8(impulse_noise(u / 255))`` on the 8-bit levels: kept elements stay ``u``
    (``to_uint8(u / 255) == u``), salt becomes 255 and pepper 0; same draws, same masks."""
    draws = per_image_into(generators, (2, *u.shape[1:]), "rand", u.device)
    flipped = draws[:, 0] <= c
    salt = draws[:, 1] <= 0.5
    return u.masked_fill(flipped & salt, 255).masked_fill_(flipped & ~salt, 0)


@register("impulse_noise", fn_uint8=_impulse_uint8, params={
    "imagenet": [.03, .06, .09, 0.17, 0.27],
    "tinyimagenet": [.01, .02, .05, .08, .14],
    "cifar": [.01, .02, .03, .05, .07],
})
def impulse_noise(x: torch.Tensor, c: float, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """skimage ``random_noise(mode='s&p', amount=c)``: each element is flipped with
    probability c, independently per channel, to 1 (salt) or 0 (pepper) with equal odds."""
    u = per_image_into(generators, (2, *x.shape[1:]), "rand", x.device)
    flipped = u[:, 0] <= c
    salt = u[:, 1] <= 0.5
    return x.masked_fill(flipped & salt, 1.0).masked_fill_(flipped & ~salt, 0.0)


@register("speckle_noise", params={
    "imagenet": [.15, .2, 0.35, 0.45, 0.6],
    "tinyimagenet": [.15, .2, 0.25, 0.3, 0.35],
    "cifar": [.06, .1, .12, .16, .2],
})
def speckle_noise(x: torch.Tensor, c: float, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Multiplicative noise ``x + x * N(0, c^2)``: stronger in bright regions."""
    noise = per_image_into(generators, tuple(x.shape[1:]), "randn", x.device)
    return noise.mul_(c).mul_(x).add_(x)  # x + x * (c * noise), same roundings

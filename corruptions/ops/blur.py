"""Blur corruptions: defocus, glass, motion, zoom (benchmark) and Gaussian blur (extra).

Per-severity tables are copied from Hendrycks' generators (make_imagenet_c.py,
make_tinyimagenet_c.py, make_cifar_c.py); the math follows the installed ``imagecorruptions``
package, whose kernel-based motion blur replaces the generators' ImageMagick call.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..philox import Streams
from .base import register
from .kernels import clipped_zoom, disk_kernel, filter2d, gaussian_blur as _gaussian, motion_kernel


def _arange(start: float, stop: float, step: float) -> tuple[float, ...]:
    """The generators' ``np.arange`` zoom factors, float for float (same accumulation)."""
    return tuple(float(z) for z in np.arange(start, stop, step))


@register("defocus_blur", params={
    "imagenet": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
    "tinyimagenet": [(0.5, 0.6), (1, 0.1), (1.5, 0.1), (2.5, 0.01), (3, 0.1)],
    "cifar": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
})
def defocus_blur(x: torch.Tensor, c: tuple[float, float],
                 streams: Streams) -> torch.Tensor:
    """Anti-aliased disk of radius ``c[0]`` (cv2.filter2D, reflect-101 border)."""
    return filter2d(x, disk_kernel(c[0], c[1])).clamp_(0, 1)


@register("glass_blur", params={
    "imagenet": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
    "tinyimagenet": [(0.1, 1, 1), (0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 1), (0.9, 2, 2)],
    "cifar": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
})
def glass_blur(x: torch.Tensor, c: tuple[float, int, int],
               streams: Streams) -> torch.Tensor:
    """Blur, quantise to uint8, locally scramble pixels, blur again.

    The scramble is the reference's sequential loop run exactly (see :func:`_scramble_map`),
    not an approximation; only the order of the random draws differs.
    """
    sigma, delta, iterations = c
    b, _, h, w = x.shape
    # uint8 truncation of the reference; the epsilon keeps flat areas at their own level
    # where float rounding would otherwise push them one level down.
    q = torch.floor(_gaussian(x, sigma) * 255 + 1e-4).clamp(0, 255) / 255
    source = torch.arange(h * w, device=x.device).expand(b, -1)
    side = 2 * delta  # one uniform per pixel gives both shifts in [-delta, delta)
    grid = (max(h - side, 0), max(w - side, 0))
    for iteration in range(iterations):
        cell = streams.uniform(grid, iteration, x.device).mul_(side * side).floor_()
        dy = torch.floor(cell / side)  # small integers: float arithmetic is exact
        shifts = torch.stack([cell - dy * side, dy], dim=-1).sub_(delta).to(torch.int32)
        source = source.gather(1, _scramble_map(shifts, h, w, delta))
    q = q.flatten(2).gather(2, source.unsqueeze(1).expand(-1, x.shape[1], -1)).view_as(x)
    return _gaussian(q, sigma).clamp_(0, 1)


def _scramble_map(shifts: torch.Tensor, h: int, w: int, delta: int) -> torch.Tensor:
    """Source index of every pixel after one pass of the reference's pixel "swap" loop.

    The reference visits rows ``h - delta .. delta + 1`` and, inside, columns
    ``w - delta .. delta + 1`` in descending order, doing ``x[p], x[s] = x[s], x[p]`` with
    ``s = p + (dy, dx)``. On NumPy arrays the right-hand sides are views, so this is a copy
    ``x[p] = x[s]`` (the pixel at ``s`` is unchanged; verified on imagecorruptions). Each pixel
    is written once, at its own turn, so its final value is ``s``'s original value when ``s`` is
    visited later (or never), else the final value of ``s``: a forest of pointers towards
    earlier-visited pixels, resolved here by pointer jumping in O(log chain) batched gathers.
    ``shifts`` is (B, rows, cols, 2) of (dx, dy) in ``[-delta, delta)``, indexed by visit order.
    """
    b = shifts.shape[0]
    device = shifts.device
    ident = torch.arange(h * w, device=device).expand(b, -1)
    rows, cols = shifts.shape[1:3]
    if rows == 0 or cols == 0:
        return ident.clone()
    # visit rank r * cols + k is pixel (h - delta - r, w - delta - k); its source s = p + (dy, dx)
    # has rank (r - dy) * cols + (k - dx): visited earlier iff it lies in the visited window and
    # dy * cols + dx > 0 (|dx| < cols)
    dx, dy = shifts.to(torch.int32).unbind(-1)  # small integers: int32 arithmetic is cheaper
    r = torch.arange(rows, device=device, dtype=torch.int32).view(1, -1, 1)
    k = torch.arange(cols, device=device, dtype=torch.int32).view(1, 1, -1)
    s_r, s_k = r - dy, k - dx
    before = ((dy * cols + dx > 0) & (s_r >= 0) & (s_r < rows) & (s_k >= 0) & (s_k < cols))
    offset = dy * w + dx
    # in pixel order the visit grid is flipped along both axes; p = identity inside the window
    window = (slice(None), slice(delta + 1, delta + 1 + rows), slice(delta + 1, delta + 1 + cols))
    pointer = ident.clone()
    pointer.view(b, h, w)[window] += (offset * before).flip(1, 2)
    value = ident.clone()
    value.view(b, h, w)[window] += (offset * ~before).flip(1, 2)
    while True:
        jumped = pointer.gather(1, pointer)
        if torch.equal(jumped, pointer):
            break
        pointer = jumped
    return value.gather(1, pointer)


@register("motion_blur", params={
    "imagenet": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
    "tinyimagenet": [(10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)],
    "cifar": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
})
def motion_blur(x: torch.Tensor, c: tuple[int, float],
                streams: Streams) -> torch.Tensor:
    """One-sided Gaussian streak of ``2 * radius + 1`` taps at an angle in U(-45, 45) degrees."""
    return streak(x, c[0], c[1], [u * 90 - 45 for u in streams.uniform((), 0).tolist()]).clamp(0, 1)


def streak(x: torch.Tensor, radius: int, sigma: float, angles: Sequence[float]) -> torch.Tensor:
    """The reference's motion blur with one angle per image (edge-replicated borders)."""
    h, w = x.shape[-2:]
    return filter2d(x, motion_kernel(radius, sigma, angles, h, w), mode="nearest")


@register("zoom_blur", params={
    "imagenet": [_arange(1, 1.11, 0.01), _arange(1, 1.16, 0.01), _arange(1, 1.21, 0.02),
                 _arange(1, 1.26, 0.02), _arange(1, 1.31, 0.03)],
    "tinyimagenet": [_arange(1, 1.06, 0.01), _arange(1, 1.11, 0.01), _arange(1, 1.16, 0.01),
                     _arange(1, 1.21, 0.01), _arange(1, 1.26, 0.01)],
    "cifar": [_arange(1, 1.06, 0.01), _arange(1, 1.11, 0.01), _arange(1, 1.16, 0.01),
              _arange(1, 1.21, 0.01), _arange(1, 1.26, 0.01)],
})
def zoom_blur(x: torch.Tensor, c: Sequence[float],
              streams: Streams) -> torch.Tensor:
    """Average of the image and its centre zooms by each factor in ``c``."""
    out = x.clone()
    for zoom in c:
        out += clipped_zoom(x, zoom)
    return (out / (len(c) + 1)).clamp(0, 1)


@register("gaussian_blur", params={
    "imagenet": [1, 2, 3, 4, 6],
    "tinyimagenet": [.5, .75, 1, 1.25, 1.5],
    "cifar": [.4, .6, 0.7, .8, 1],
})
def gaussian_blur(x: torch.Tensor, c: float,
                  streams: Streams) -> torch.Tensor:
    """``skimage.filters.gaussian(sigma=c)``: truncate 4, nearest border."""
    return _gaussian(x, c).clamp(0, 1)

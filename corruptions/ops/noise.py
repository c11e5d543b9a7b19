"""Noise corruptions: Gaussian, shot (Poisson), impulse (salt & pepper) and speckle.

Per-severity tables are exact copies of Hendrycks' generators (make_imagenet_c.py,
make_tinyimagenet_c.py, make_cifar_c.py). Every random number comes from the image's own Philox
stream (:mod:`corruptions.philox`), so an image's noise never depends on its batch or device.
"""
from __future__ import annotations

import functools
import math
import torch

from ..levels import to_uint8
from ..philox import Streams
from .base import register
from .kernels import eight_bit_levels


@register("gaussian_noise", params={
    "imagenet": [.08, .12, 0.18, 0.26, 0.38],
    "tinyimagenet": [0.04, 0.08, .12, .15, .18],
    "cifar": [0.04, 0.06, .08, .09, .10],
})
def gaussian_noise(x: torch.Tensor, c: float, streams: Streams) -> torch.Tensor:
    """Additive N(0, c^2) noise per element."""
    noise = streams.normal(tuple(x.shape[1:]), 0, x.device)
    return noise.mul_(c).add_(x)  # x + c * noise (addition commutes exactly)


#: Shot noise draws 24-bit uniforms ``r`` (the Philox uniform is ``r * 2**-24``) and inverts the
#: Poisson CDF of the pixel's rate: the count is the number of CDF thresholds ``<= r``.
_UNIFORM_BITS = 24
#: The uniforms are split into 2**11 buckets per level; most buckets hold no CDF threshold, so
#: one table lookup gives the count, and only the few others need a binary search.
_BUCKET_BITS = 11


@functools.lru_cache(maxsize=16)
def _shot_tables(c: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """Inverse-CDF tables of ``Poisson(k / 255 * c)`` for the 256 levels k.

    Returns ``bucket`` (256 * 2**11,) int16: the output level of every uniform of the bucket,
    or -1 where a CDF threshold splits the bucket; ``sorted_thresholds`` (256 * K,) int64: level
    ``k``'s thresholds ``ceil(CDF * 2**24)`` offset by ``k << 25``, globally sorted, for the
    split buckets' search; K; and ``count_level`` (K,) uint8: ``to_uint8(count / c)``, the
    api's conversion of the float result. Tail mass beyond K - 1 is below 2**-40.
    """
    k = torch.arange(int(c + 14 * math.sqrt(c) + 30), dtype=torch.float64)
    rates = torch.arange(256, dtype=torch.float64).div_(255).mul_(c).unsqueeze(1)
    pmf = torch.exp(torch.xlogy(k, rates) - rates - torch.lgamma(k + 1))
    one = 1 << _UNIFORM_BITS
    thresholds = torch.ceil(pmf.cumsum(1) * one).to(torch.int64).clamp_(max=one)
    thresholds[:, -1] = one  # no uniform r < 2**24 reaches it: the count stays below K
    # the count at a bucket's first (last) uniform is the number of thresholds in the buckets
    # before it, rounding each threshold up (down) to a bucket: cumulative histograms
    shift = _UNIFORM_BITS - _BUCKET_BITS
    edges = torch.stack([-(-thresholds >> shift), thresholds >> shift])
    first, last = torch.zeros(2, 256, (1 << _BUCKET_BITS) + 1, dtype=torch.int32).scatter_add_(
        2, edges, torch.ones_like(edges, dtype=torch.int32)).cumsum_(2)[..., :-1]
    count_level = to_uint8(k.float() / c, inplace=True)  # float32 count / c, as the float path
    bucket = count_level.to(torch.int16).index_select(0, first.flatten())
    bucket = bucket.masked_fill_((first != last).flatten(), -1)
    offsets = torch.arange(256, dtype=torch.int64).unsqueeze(1) << (_UNIFORM_BITS + 1)
    return (bucket.to(device), (thresholds + offsets).flatten().to(device), k.numel(),
            count_level.to(device))


def _shot_uint8(u: torch.Tensor, c: float, streams: Streams) -> torch.Tensor:
    """``to_uint8(Poisson(u / 255 * c) / c)`` on uint8 levels, by inverse transform: one 24-bit
    uniform per element from the image's own stream, one bucket lookup, a binary search
    for the few elements whose bucket a CDF threshold splits."""
    bucket, sorted_thresholds, k, count_level = _shot_tables(float(c), u.device)
    r = streams.uniform(tuple(u.shape[1:]), 0, u.device)
    r = r.mul_(1 << _UNIFORM_BITS).to(torch.int32).flatten()  # exact: a multiple of 2**-24
    level = u.to(torch.int32).flatten()
    index = (level << _BUCKET_BITS).bitwise_or_(r >> (_UNIFORM_BITS - _BUCKET_BITS))
    out = bucket.index_select(0, index)
    split = out.lt(0).nonzero().squeeze(1)
    if split.numel():
        lv = level.index_select(0, split).to(torch.int64)
        key = (lv << (_UNIFORM_BITS + 1)) + r.index_select(0, split)
        counts = torch.searchsorted(sorted_thresholds, key, right=True) - lv * k
        out.index_copy_(0, split, count_level.index_select(0, counts).to(torch.int16))
    return out.to(torch.uint8).view_as(u)


@register("shot_noise", fn_uint8=_shot_uint8, params={
    "imagenet": [60, 25, 12, 5, 3],
    "tinyimagenet": [250, 100, 50, 30, 15],
    "cifar": [500, 250, 100, 75, 50],
})
def shot_noise(x: torch.Tensor, c: float, streams: Streams) -> torch.Tensor:
    """Poisson photon noise: ``Poisson(x * c) / c`` (c photons at full intensity).

    Both paths invert the Poisson CDF at the same uniform per element: images on the 8-bit grid
    (all the api passes) through the tables of :func:`_shot_uint8` (the result comes back on the
    8-bit grid), other inputs by walking the CDF of each element's own rate.
    """
    levels = eight_bit_levels(x)
    if levels is not None:
        return _shot_uint8(levels, c, streams).to(x.dtype) / 255
    return _poisson_inverse_cdf(x.double() * c, streams.uniform(tuple(x.shape[1:]), 0, x.device)).to(x.dtype) / c


def _poisson_inverse_cdf(rates: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """The smallest count k with ``CDF(k) > r`` for each rate (float64), adding one term of the
    pmf (in log space, as :func:`_shot_tables`) at a time until every CDF has passed its uniform."""
    cdf = torch.zeros_like(rates)
    counts = torch.zeros_like(rates)
    limit = float(rates.max()) + 14 * math.sqrt(float(rates.max())) + 30  # as the tables' K
    k = 0
    while True:
        cdf += torch.exp(torch.xlogy(k, rates) - rates - math.lgamma(k + 1))
        below = cdf <= r
        if k >= limit or not bool(below.any()):
            return counts
        counts += below
        k += 1


def _impulse_masks(shape: torch.Size, c: float, streams: Streams,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, salt) boolean masks of salt & pepper noise from one uniform ``r`` per element:
    ``r < c`` flips the element (probability c), to salt when ``r < c / 2`` (equal odds)."""
    r = streams.uniform(tuple(shape[1:]), 0, device)
    return r >= c, r < c / 2


def _impulse_uint8(u: torch.Tensor, c: float, streams: Streams) -> torch.Tensor:
    """``to_uint8(impulse_noise(u / 255))`` on the 8-bit levels: kept elements stay ``u``
    (``to_uint8(u / 255) == u``), salt becomes 255 and pepper 0; same draws, same masks."""
    kept, salt = _impulse_masks(u.shape, c, streams, u.device)
    return u.mul(kept).add_(salt.to(torch.uint8).mul_(255))


@register("impulse_noise", fn_uint8=_impulse_uint8, params={
    "imagenet": [.03, .06, .09, 0.17, 0.27],
    "tinyimagenet": [.01, .02, .05, .08, .14],
    "cifar": [.01, .02, .03, .05, .07],
})
def impulse_noise(x: torch.Tensor, c: float, streams: Streams) -> torch.Tensor:
    """skimage ``random_noise(mode='s&p', amount=c)``: each element is flipped with
    probability c, independently per channel, to 1 (salt) or 0 (pepper) with equal odds."""
    kept, salt = _impulse_masks(x.shape, c, streams, x.device)
    return x.mul(kept).add_(salt)


@register("speckle_noise", params={
    "imagenet": [.15, .2, 0.35, 0.45, 0.6],
    "tinyimagenet": [.15, .2, 0.25, 0.3, 0.35],
    "cifar": [.06, .1, .12, .16, .2],
})
def speckle_noise(x: torch.Tensor, c: float, streams: Streams) -> torch.Tensor:
    """Multiplicative noise ``x + x * N(0, c^2)``: stronger in bright regions."""
    noise = streams.normal(tuple(x.shape[1:]), 0, x.device)
    return noise.mul_(c).mul_(x).add_(x)  # x + x * (c * noise), same roundings

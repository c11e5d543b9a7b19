"""Digital corruptions: brightness, contrast, saturate, pixelate and JPEG compression.

Per-severity tables are exact copies of Hendrycks' generators (make_imagenet_c.py,
make_tinyimagenet_c.py, make_cifar_c.py). None of these corruptions is random.

* brightness / saturate go through HSV exactly like scikit-image's ``rgb2hsv`` / ``hsv2rgb``
  (same hue tie-breaking: blue over green over red when several channels share the maximum),
  computed in float64 like the NumPy reference. uint8 images (all the api passes) take a
  table-driven path with the same float64 operations per pixel, bit-exact to it and ~4x faster.
* contrast scales each channel around its per-image mean (float64 as in the reference).
* pixelate reproduces Pillow's fixed-point resampling (``Image.resize(..., Image.BOX)``) bit for
  bit: BOX down to ``int(side * c)`` then BOX back up, as all three generators do.
  (``imagecorruptions`` up-samples with NEAREST instead; the two differ only at rounding ties,
  well under 1% of pixels at 224 px, and none on the test images.) Bit-exactness is verified
  for square images (all three profiles). For strongly non-square images Pillow 13 sometimes
  runs the vertical pass first (rule not reverse-engineered here), so a few pixels may differ
  by one level there.
* jpeg_compression encodes each image as JPEG at quality ``c`` and decodes it (libjpeg-turbo,
  the same pixels as the generators' Pillow; see ``corruptions.jpeg``).

Pixelate and JPEG work on 8-bit images: the input is rounded to the nearest of 256 levels, which
is exact for images that came from uint8.

Precision: these ops return **float64** (an allowed widening of the float32 contract; the caller
clips and truncates any float dtype). Inputs on the 8-bit grid are snapped back to the exact
float64 value ``u / 255`` the NumPy generators start from, so the float64 arithmetic mirrors the
reference operation for operation and the final truncation to uint8 agrees with ``np.uint8``
(a float32 round trip would move values that land exactly on a level by one level).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from ..jpeg import jpeg_round_trip
from ..philox import Streams
from .base import register
from .kernels import eight_bit_levels

# ------------------------------------------------------------------------------------ HSV


def exact64(x: torch.Tensor) -> torch.Tensor:
    """float64 copy of ``x``; values within 1e-6 of a level k/255 become exactly k/255 (float64)."""
    # Fast path (inputs u / 255): when every element is within 1e-4 of a level in float32, it is
    # within 1e-4 + 2e-5 < 255e-6 levels of it in exact arithmetic, i.e. the 1e-6 test below
    # passes everywhere and the answer is exactly ``round(x * 255) / 255``.
    levels = eight_bit_levels(x) if x.dtype == torch.float32 else None
    if levels is not None:
        return levels.double().div_(255)
    xd = x.double()
    snapped = torch.round(xd * 255) / 255
    return torch.where((xd - snapped).abs() < 1e-6, snapped, xd)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """scikit-image ``rgb2hsv`` on channel dimension -3 (values in [0, 1])."""
    r, g, b = x.unbind(-3)
    v = torch.maximum(torch.maximum(r, g), b)
    delta = v - torch.minimum(torch.minimum(r, g), b)
    flat = delta == 0
    safe = torch.where(flat, torch.ones_like(delta), delta)
    s = torch.where(flat, torch.zeros_like(delta), delta / torch.where(v == 0, torch.ones_like(v), v))
    h = (g - b) / safe
    h = torch.where(g == v, 2.0 + (b - r) / safe, h)
    h = torch.where(b == v, 4.0 + (r - g) / safe, h)
    h = torch.remainder(h / 6.0, 1.0)
    h = torch.where(flat, torch.zeros_like(h), h)
    return torch.stack([h, s, v], dim=-3)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """scikit-image ``hsv2rgb`` on channel dimension -3."""
    h, s, v = x.unbind(-3)
    hi = torch.floor(h * 6)
    f = h * 6 - hi
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    hi = torch.remainder(hi, 6)
    sectors = ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))
    out = [torch.zeros_like(v) for _ in range(3)]
    for k, sector in enumerate(sectors):
        here = hi == k
        out = [torch.where(here, value, acc) for value, acc in zip(sector, out)]
    return torch.stack(out, dim=-3)


@functools.lru_cache(maxsize=4)
def _level_pairs(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 tables over the 8-bit levels: ``level[k] = k / 255`` and, for a pair ``(a, b)``
    at ``a * 256 + b``, ``diff = a / 255 - b / 255`` (rounded as NumPy subtracts)."""
    level = torch.arange(256, dtype=torch.float64, device=device) / 255
    return level, (level.view(-1, 1) - level.view(1, -1)).flatten()


@functools.lru_cache(maxsize=4)
def _saturation_of_pairs(device: torch.device) -> torch.Tensor:
    """rgb2hsv's S of every (max, min) level pair: ``delta / v``, 0 where ``delta == 0``."""
    level, diff = _level_pairs(device)
    v = level.view(-1, 1).expand(256, 256).flatten()
    return torch.where(diff == 0, 0.0, diff / v).to(torch.float64)


#: hsv2rgb's six hue sectors: which of (value, p, q-or-t) r, g and b (rows) receive per sector.
_SECTOR_SOURCES = torch.tensor([[0, 2, 1, 1, 2, 0], [2, 0, 0, 2, 1, 1], [1, 1, 2, 0, 0, 2]],
                               dtype=torch.uint8)
#: rgb2hsv's hue offset per case ``2 * (blue is max) + (green is max)``: red 0, green 2, blue 4.
_HUE_OFFSET = torch.tensor([0.0, 2.0, 4.0, 4.0], dtype=torch.float64)


def _hsv_uint8(u: torch.Tensor, value: torch.Tensor, saturation: torch.Tensor) -> torch.Tensor:
    """``to_uint8(hsv2rgb(hsv'))`` of uint8 images, ``hsv' = (h, saturation, value)`` of
    ``rgb2hsv(u / 255)``, bit-exact to the float64 path (:func:`rgb_to_hsv`, :func:`hsv_to_rgb`).

    ``value`` (256,) is the new V of each max level, ``saturation`` (65536,) the new S of each
    (max, min) pair; both float64. Per pixel only the hue needs arithmetic: the ordering of the
    channels is found on the uint8 levels, the float64 differences come from a table of pairs,
    and of hsv2rgb's outputs V and p depend on (max, min) alone, so they come from tables too;
    the float64 operations left are skimage's own, in its order.
    """
    diff = _level_pairs(u.device)[1]
    r, g, b = u.unbind(1)
    vmax = torch.maximum(torch.maximum(r, g), b)
    vmin = torch.minimum(torch.minimum(r, g), b)
    blue, green = b == vmax, g == vmax  # rgb2hsv lets blue override green override red
    first = _select(blue, r, _select(green, b, g)).to(torch.int32)
    second = _select(blue, g, _select(green, r, b)).to(torch.int32)
    pair = (vmax.to(torch.int32) << 8).bitwise_or_(vmin.to(torch.int32)).flatten()
    hue = diff.index_select(0, (first << 8).bitwise_or_(second).flatten()).view(vmax.shape)
    hue = hue.div_(diff.index_select(0, pair).view(vmax.shape))
    case = (blue.to(torch.int32) << 1).bitwise_or_(green.to(torch.int32)).flatten()
    hue = _HUE_OFFSET.to(u.device).index_select(0, case).view(vmax.shape).add_(hue).div_(6)
    hue = hue.add_(hue < 0).masked_fill_(vmax == vmin, 0)  # % 1 for hue in [-1/6, 1), as NumPy
    hue6 = hue.mul_(6)
    sector = torch.floor(hue6)
    f = hue6.sub_(sector)
    sector = sector.to(torch.uint8)
    sector = sector.masked_fill_(sector == 6, 0).to(torch.int32).flatten()  # hi % 6
    s = saturation.index_select(0, pair).view(vmax.shape)
    v = value.index_select(0, vmax.to(torch.int32).flatten()).view(vmax.shape)
    # q = v (1 - f s) in odd sectors, t = v (1 - (1 - f) s) in even ones: |even - f| is f or
    # exactly NumPy's 1 - f
    a = (sector.view(vmax.shape) & 1 ^ 1).to(torch.float64).sub_(f).abs_()
    mid = to_uint8_exact(a.mul_(s).neg_().add_(1).mul_(v))
    v_level = to_uint8_exact(value.clone()).index_select(0, vmax.to(torch.int32).flatten())
    p_level = to_uint8_exact(value.view(-1, 1).mul(1 - saturation.view(256, 256))).flatten()
    v_level, p_level = v_level.view(vmax.shape), p_level.index_select(0, pair).view(vmax.shape)
    out = []
    for source in _SECTOR_SOURCES.to(u.device):
        code = source.index_select(0, sector).view(vmax.shape)
        out.append(_select(code == 0, v_level, _select(code == 1, p_level, mid)))
    return torch.stack(out, 1)


def _select(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.where(mask, a, b)`` for uint8 by wrapping arithmetic, ``b + (a - b) * mask``:
    on the CPU ``where`` branches per element (about 60x slower on incoherent masks)."""
    return (a - b).mul_(mask).add_(b)


def _brightness_uint8(u: torch.Tensor, c: float, streams: Streams) -> torch.Tensor:
    level = _level_pairs(u.device)[0]
    return _hsv_uint8(u, (level + c).clamp_(0, 1), _saturation_of_pairs(u.device))


def _saturate_uint8(u: torch.Tensor, c: tuple[float, float],
                    streams: Streams) -> torch.Tensor:
    level = _level_pairs(u.device)[0]
    return _hsv_uint8(u, level, (_saturation_of_pairs(u.device) * c[0] + c[1]).clamp_(0, 1))


@register("brightness", fn_uint8=_brightness_uint8, params={
    "imagenet": [.1, .2, .3, .4, .5],
    "tinyimagenet": [.1, .2, .3, .4, .5],
    "cifar": [.05, .1, .15, .2, .3],
})
def brightness(x: torch.Tensor, c: float, streams: Streams) -> torch.Tensor:
    """Add ``c`` to the HSV value channel (clipped to [0, 1])."""
    h, s, v = rgb_to_hsv(exact64(x)).unbind(-3)
    return hsv_to_rgb(torch.stack([h, s, (v + c).clamp(0, 1)], dim=-3))


@register("saturate", fn_uint8=_saturate_uint8, params={
    "imagenet": [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)],
    "tinyimagenet": [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (30, 0.2)],
    "cifar": [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
})
def saturate(x: torch.Tensor, c: tuple[float, float], streams: Streams) -> torch.Tensor:
    """Scale and shift the HSV saturation channel: ``clip(s * c[0] + c[1], 0, 1)``."""
    h, s, v = rgb_to_hsv(exact64(x)).unbind(-3)
    return hsv_to_rgb(torch.stack([h, (s * c[0] + c[1]).clamp(0, 1), v], dim=-3))


def _contrast_uint8(u: torch.Tensor, c: float, streams: Streams) -> torch.Tensor:
    """``to_uint8(contrast(u / 255))`` through a per-(image, channel) table of the 256 levels:
    the per-element float64 arithmetic is the same, done once per level instead of per pixel."""
    means = u.double().div_(255).mean(dim=(-2, -1), keepdim=True)  # as exact64(u / 255).mean
    levels = torch.arange(256, dtype=torch.float64, device=u.device).div_(255)
    table = to_uint8_exact((levels - means) * c + means)  # (B, 3, 1, 256)
    b, ch = u.shape[:2]
    index = u.reshape(b, ch, -1).long()
    return table.view(b, ch, 256).gather(-1, index).view_as(u)


def to_uint8_exact(y: torch.Tensor) -> torch.Tensor:
    """The api's float64 -> uint8 step (clip, scale, truncate), as ``np.uint8``."""
    return y.clamp_(0, 1).mul_(255).floor_().to(torch.uint8)


@register("contrast", fn_uint8=_contrast_uint8, params={
    "imagenet": [0.4, .3, .2, .1, .05],
    "tinyimagenet": [.4, .3, .2, .1, .05],
    "cifar": [.75, .5, .4, .3, 0.15],
})
def contrast(x: torch.Tensor, c: float, streams: Streams) -> torch.Tensor:
    """Pull every channel towards its own per-image mean: ``(x - mean) * c + mean``."""
    xd = exact64(x)
    means = xd.mean(dim=(-2, -1), keepdim=True)
    return (xd - means) * c + means


# ------------------------------------------------------------------ Pillow's BOX resampling

_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit resampling


def _box(t: float) -> float:
    return 1.0 if -0.5 < t <= 0.5 else 0.0


@functools.lru_cache(maxsize=64)
def _box_weights(in_size: int, out_size: int) -> torch.Tensor:
    """Pillow's 8-bit fixed-point BOX coefficients as an (out_size, in_size) float64 matrix."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    ss = 1.0 / filterscale  # multiply (not divide) as Pillow does: ties at +-0.5 depend on it
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        ws = [_box((x - center + 0.5) * ss) for x in range(xmin, xmax)]
        total = sum(ws)
        for x, w in zip(range(xmin, xmax), ws):
            k = w / total if total else w
            weights[xx, x] = int(0.5 + k * (1 << _PRECISION_BITS))
    return weights


@functools.lru_cache(maxsize=64)
def _box_taps(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The non-zero entries of :func:`_box_weights` as taps: ``index`` (out_size, K) int64 into
    the input line, padded with ``in_size`` (a zero line the caller appends), and the weight of
    each output, ``weight`` (out_size,) int32: a BOX output averages its taps with one weight.
    Also whether the pass is a plain copy (one tap of weight ``1 << 22`` per output:
    nearest-pixel up-sampling)."""
    dense = _box_weights(in_size, out_size)
    nonzero = dense != 0
    weight = dense.amax(1)
    if not bool((~nonzero | (dense == weight.unsqueeze(1))).all()):
        raise AssertionError("BOX weights of one output differ")  # cannot happen for BOX
    k = max(1, int(nonzero.sum(1).max()))
    index = torch.full((out_size, k), in_size, dtype=torch.int64)
    for row in range(out_size):
        cols = nonzero[row].nonzero().flatten()
        index[row, :len(cols)] = cols
    copy = k == 1 and bool((weight == 1 << _PRECISION_BITS).all())
    return index, weight.to(torch.int32), copy


def _box_pass(lines: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """One fixed-point pass along dimension -2 of uint8 ``lines`` with Pillow's rounding.

    Each output is ``(sum of its K taps * weight + 2**21) >> 22``: the 8-bit taps are summed
    exactly in int16 (int32 past 128 taps), then scaled once in int32 (``weight ~ 2**22 / K``,
    so ``255 * K * weight < 2**31``). Row
    selections copy whole contiguous lines, which is why the width pass runs transposed; the
    copy that makes the lines contiguous also appends the zero line the padding taps read.
    """
    index, weight, copy = _box_taps(in_size, out_size)
    index = index.to(lines.device)
    if copy:
        return lines.contiguous().index_select(-2, index[:, 0])
    padded = lines.new_zeros(*lines.shape[:-2], in_size + 1, lines.shape[-1])
    padded[..., :in_size, :] = lines
    acc = padded.index_select(-2, index[:, 0]).to(torch.int16 if index.shape[1] <= 128 else torch.int32)
    for k in range(1, index.shape[1]):
        acc += padded.index_select(-2, index[:, k])
    acc = acc.to(torch.int32).mul_(weight.to(lines.device).unsqueeze(-1))
    acc = acc.add_(1 << (_PRECISION_BITS - 1)).bitwise_right_shift_(_PRECISION_BITS)
    return acc.clamp_(max=255).to(torch.uint8)


def pil_box_resize(levels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``PIL.Image.resize((width, height), Image.BOX)`` on 8-bit levels (integers in 0..255, any
    dtype; float input must hold whole numbers) of shape (..., H, W): horizontal pass first,
    each pass rounded to 8 bits. Returns the input's dtype."""
    out = levels if levels.dtype == torch.uint8 else levels.to(torch.uint8)
    if width != levels.shape[-1]:
        out = _box_pass(out.transpose(-1, -2), levels.shape[-1], width).transpose(-1, -2)
    if height != levels.shape[-2]:
        out = _box_pass(out, levels.shape[-2], height)
    return out.to(levels.dtype).contiguous()


def to_levels(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> float64 8-bit levels (nearest of 0..255)."""
    return torch.round(x.double().clamp(0, 1) * 255)


def _through_uint8(fn_uint8, x: torch.Tensor, c, streams: Streams) -> torch.Tensor:
    """The float path of an op defined on uint8 levels: quantise, apply, back to [0, 1]."""
    return fn_uint8(to_levels(x).to(torch.uint8), c, streams).double() / 255


def _pixelate_uint8(u: torch.Tensor, c: float, streams: Streams) -> torch.Tensor:
    height, width = u.shape[-2:]
    small = pil_box_resize(u, int(height * c), int(width * c))
    return pil_box_resize(small, height, width)


@register("pixelate", fn_uint8=_pixelate_uint8, params={
    "imagenet": [0.6, 0.5, 0.4, 0.3, 0.25],
    "tinyimagenet": [0.9, 0.8, 0.7, 0.6, 0.5],
    "cifar": [0.95, 0.9, 0.85, 0.75, 0.65],
})
def pixelate(x: torch.Tensor, c: float, streams: Streams) -> torch.Tensor:
    """BOX-downsample to ``int(side * c)`` per side and BOX-upsample back (Pillow, bit-exact)."""
    return _through_uint8(_pixelate_uint8, x, c, streams)


def _jpeg_uint8(u: torch.Tensor, c: int, streams: Streams) -> torch.Tensor:
    return jpeg_round_trip(u, quality=c)


@register("jpeg_compression", fn_uint8=_jpeg_uint8, per_image=True, params={
    "imagenet": [25, 18, 15, 10, 7],
    "tinyimagenet": [65, 58, 50, 40, 25],
    "cifar": [80, 65, 58, 50, 40],
})
def jpeg_compression(x: torch.Tensor, c: int, streams: Streams) -> torch.Tensor:
    """Encode each image as JPEG at quality ``c`` and decode it (as Pillow does)."""
    return _through_uint8(_jpeg_uint8, x, c, streams)


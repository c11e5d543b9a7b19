"""Weather corruptions: snow, frost, fog (benchmark) and spatter (extra).

Per-severity tables are copied from Hendrycks' generators; the math follows the installed
``imagecorruptions`` package (kernel-based motion blur for the snow streaks, frost textures read
from the package's own ``frost/`` folder at run time).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from ..philox import Streams
from .base import register
from .blur import streak
from .kernels import clipped_zoom, gaussian_blur as _gaussian_layer, next_power_of_2, plasma_fractal

#: ITU-R 601 luma, as cv2.COLOR_RGB2GRAY.
_LUMA = (0.299, 0.587, 0.114)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


@register("snow", params={
    "imagenet": [(0.1, 0.3, 3, 0.5, 10, 4, 0.8),
                 (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
                 (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
                 (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
                 (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)],
    "tinyimagenet": [(0.1, 0.2, 1, 0.6, 8, 3, 0.8),
                     (0.1, 0.2, 1, 0.5, 10, 4, 0.8),
                     (0.15, 0.3, 1.75, 0.55, 10, 4, 0.7),
                     (0.25, 0.3, 2.25, 0.6, 12, 6, 0.65),
                     (0.3, 0.3, 1.25, 0.65, 14, 12, 0.6)],
    "cifar": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95),
              (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
              (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
              (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
              (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
})
def snow(x: torch.Tensor, c: tuple[float, ...],
         streams: Streams) -> torch.Tensor:
    """Zoomed, thresholded Gaussian flakes streaked at U(-135, -45) degrees, over a greyed image.

    The flake layer is trimmed to the image before streaking (the generators' ``clipped_zoom``);
    imagecorruptions trims after, which only changes the outermost rows' edge replication.
    """
    loc, scale, zoom, threshold, radius, sigma, keep = c
    b, _, h, w = x.shape
    noise = streams.normal((1, h, w), 0, x.device)
    angles = [u * 90 - 135 for u in streams.uniform((), 1).tolist()]
    flakes = clipped_zoom(noise * scale + loc, zoom)
    flakes = torch.where(flakes < threshold, torch.zeros_like(flakes), flakes).clamp(0, 1)
    flakes = torch.round(streak(flakes, radius, sigma, angles) * 255) / 255
    x = keep * x + (1 - keep) * torch.maximum(x, _gray(x) * 1.5 + 0.5)
    return (x + flakes + flakes.flip(-2, -1)).clamp(0, 1)


#: The frost photographs shipped inside the installed imagecorruptions package (never copied).
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")


def _frost_dir() -> Path:
    import imagecorruptions

    return Path(imagecorruptions.__file__).parent / "frost"


@functools.lru_cache(maxsize=8)
def frost_textures(height: int, width: int) -> tuple[torch.Tensor, ...]:
    """The frost textures (RGB, float32 in [0, 1], (3, h, w)) prepared for ``height x width``.

    Small images follow the CIFAR / Tiny ImageNet generators: shrink by 0.2 (side <= 32) or 0.3
    (side <= 64) with cv2's default bilinear resize, and use the first five textures (their
    ``randint(5)``). Larger images follow imagecorruptions: scale so the texture covers the image
    (factor 1 when it already does), times 1.1, bicubic, all six textures.
    """
    side = max(height, width)
    small = {32: 0.2, 64: 0.3}
    out = []
    for name in FROST_FILES[:5] if side <= 64 else FROST_FILES:
        img = cv2.imread(str(_frost_dir() / name))
        if img is None:
            raise FileNotFoundError(f"frost texture {name} not found in {_frost_dir()}")
        if side <= 64:
            f = small[32] if side <= 32 else small[64]
            img = cv2.resize(img, (0, 0), fx=f, fy=f)
        else:
            fh, fw = img.shape[:2]
            factor = max(height / fh, width / fw, 1.0) * 1.1
            size = (int(np.ceil(fw * factor)), int(np.ceil(fh * factor)))
            img = cv2.resize(img, dsize=size, interpolation=cv2.INTER_CUBIC)
        rgb = torch.from_numpy(np.ascontiguousarray(img[..., ::-1])).permute(2, 0, 1)
        out.append(rgb.float() / 255)
    return tuple(out)


@register("frost", params={
    "imagenet": [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
    "tinyimagenet": [(1, 0.3), (0.9, 0.4), (0.8, 0.45), (0.75, 0.5), (0.7, 0.55)],
    "cifar": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
})
def frost(x: torch.Tensor, c: tuple[float, float],
          streams: Streams) -> torch.Tensor:
    """``c[0] * image + c[1] * frost``, the frost a random crop of a random texture."""
    h, w = x.shape[-2:]
    textures = frost_textures(h, w)
    crops = []
    for choice, top_word, left_word in zip(streams.integers(len(textures), 0).tolist(),
                                           streams.words(1, 1)[:, 0].tolist(), streams.words(1, 2)[:, 0].tolist()):
        tex = textures[choice]
        top, left = (top_word * (tex.shape[1] - h)) >> 32, (left_word * (tex.shape[2] - w)) >> 32
        crops.append(tex[:, top:top + h, left:left + w])
    layer = torch.stack(crops).to(device=x.device, dtype=x.dtype)
    return (c[0] * x + c[1] * layer).clamp(0, 1)


@register("fog", params={
    "imagenet": [(1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)],
    "tinyimagenet": [(.4, 3), (.7, 3), (1, 2.5), (1.5, 2), (2, 1.75)],
    "cifar": [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
})
def fog(x: torch.Tensor, c: tuple[float, float],
        streams: Streams) -> torch.Tensor:
    """Add a plasma-fractal haze, then rescale so the image's maximum is kept."""
    h, w = x.shape[-2:]
    haze = plasma_fractal(next_power_of_2(max(h, w)), c[1], streams, x.device)
    max_val = x.amax(dim=(1, 2, 3), keepdim=True)
    foggy = torch.add(x, haze[:, None, :h, :w].to(x.dtype), alpha=c[0])
    return foggy.mul_(max_val / (max_val + c[0])).clamp_(0, 1)


#: Spatter colours: pale turquoise water and mud brown, as the reference's 0..255 triples.
_WATER = (175 / 255, 238 / 255, 238 / 255)
_MUD = (63 / 255, 42 / 255, 20 / 255)


def _water_relief(liquid: np.ndarray) -> np.ndarray:
    """The reference's embossed distance-to-edge map of one uint8 liquid layer (float32).

    Canny edges, L2 distance transform truncated at 20, box blur, histogram equalisation, an
    emboss filter (saturating uint8) and a final box blur, all with OpenCV exactly as the
    reference; these integer image-processing steps have no batched torch equivalent, so they
    run per image on the CPU (about 0.1 ms per 224 px layer).
    """
    dist = 255 - cv2.Canny(liquid, 50, 150)
    dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
    _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
    dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
    emboss = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
    return cv2.blur(cv2.filter2D(dist, cv2.CV_8U, emboss), (3, 3)).astype(np.float32)


@register("spatter", params={
    "imagenet": [(0.65, 0.3, 4, 0.69, 0.6, 0),
                 (0.65, 0.3, 3, 0.68, 0.6, 0),
                 (0.65, 0.3, 2, 0.68, 0.5, 0),
                 (0.65, 0.3, 1, 0.65, 1.5, 1),
                 (0.67, 0.4, 1, 0.65, 1.5, 1)],
    "tinyimagenet": [(0.62, 0.1, 0.7, 0.7, 0.6, 0),
                     (0.65, 0.1, 0.8, 0.7, 0.6, 0),
                     (0.65, 0.3, 1, 0.69, 0.6, 0),
                     (0.65, 0.1, 0.7, 0.68, 0.6, 1),
                     (0.65, 0.1, 0.5, 0.67, 0.6, 1)],
    "cifar": [(0.62, 0.1, 0.7, 0.7, 0.5, 0),
              (0.65, 0.1, 0.8, 0.7, 0.5, 0),
              (0.65, 0.3, 1, 0.69, 0.5, 0),
              (0.65, 0.1, 0.7, 0.69, 0.6, 1),
              (0.65, 0.1, 0.5, 0.68, 0.6, 1)],
})
def spatter(x: torch.Tensor, c: tuple[float, ...],
            streams: Streams) -> torch.Tensor:
    """Water drops (embossed turquoise, ``c[5] == 0``) or mud (brown blots, ``c[5] == 1``).

    A liquid layer of Gaussian noise (``c[0]``, ``c[1]``) blurred by ``c[2]`` and cut below
    ``c[3]``; ``c[4]`` scales the water or blurs the mud mask. A layer with no water at all
    leaves the image unchanged (the reference divides by zero there).
    """
    loc, scale, sigma, threshold, strength, mud = c
    h, w = x.shape[-2:]
    noise = streams.normal((1, h, w), 0, x.device)
    liquid = _gaussian_layer(noise * scale + loc, sigma)
    liquid = torch.where(liquid < threshold, torch.zeros_like(liquid), liquid)
    if mud:
        m = _gaussian_layer((liquid > threshold).to(x.dtype), strength)
        m = torch.where(m < 0.8, torch.zeros_like(m), m)
        colour = torch.tensor(_MUD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * (1 - m) + colour * m).clamp(0, 1)
    level = torch.floor(liquid * 255).clamp(0, 255)  # the reference's astype(np.uint8)
    layers = level.to(torch.uint8).cpu().numpy()[:, 0]
    relief = torch.from_numpy(np.stack([_water_relief(layer) for layer in layers]))
    m = level * relief.to(x.device).unsqueeze(1)
    peak = m.amax(dim=(2, 3), keepdim=True)
    m = torch.where(peak > 0, m / peak.clamp_min(1e-12), torch.zeros_like(m)) * strength
    colour = torch.tensor(_WATER, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x + m.to(x.dtype) * colour).clamp(0, 1)

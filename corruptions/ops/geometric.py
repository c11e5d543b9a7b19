"""Geometric corruption: elastic_transform, as in Hendrycks' generators.

Each image gets a random affine jitter (three control points moved by up to ``c[2]`` pixels,
reflect-101 border as ``cv2.warpAffine``) followed by a smooth random displacement field
(uniform noise in [-1, 1] blurred with ``sigma = c[1]``, truncate 3, scaled by ``c[0]``),
sampled bilinearly with SciPy's 'reflect' border as ``map_coordinates(order=1)``.

The installed imagecorruptions package implements an older, different elastic transform (no
affine step, sigma = 1% of the side, alpha = 250 * [0.05 .. 0.12] on a field of amplitude
0.5% of the side); the ImageNet-C generator and the ``imagenet_c`` package both use the version
here, so the tables below are the generators'.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..philox import Streams
from .base import register
from .kernels import gaussian_blur, sample_bilinear


def _affine_from_points(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) affine maps taking three (x, y) points ``src`` onto ``dst``, as
    ``cv2.getAffineTransform``."""
    ones = torch.ones(*src.shape[:-1], 1, dtype=src.dtype, device=src.device)
    a = torch.cat([src, ones], dim=-1)  # (B, 3, 3): rows [x, y, 1]
    return torch.linalg.solve(a, dst).transpose(1, 2)


@register("elastic_transform", params={
    # "244 should have been 224" (generator comment): kept as published.
    "imagenet": [(244 * 2, 244 * 0.7, 244 * 0.1),
                 (244 * 2, 244 * 0.08, 244 * 0.2),
                 (244 * 0.05, 244 * 0.01, 244 * 0.02),
                 (244 * 0.07, 244 * 0.01, 244 * 0.02),
                 (244 * 0.12, 244 * 0.01, 244 * 0.02)],
    "tinyimagenet": [(64 * 0, 64 * 0, 64 * 0.08),
                     (64 * 0.05, 64 * 0.3, 64 * 0.06),
                     (64 * 0.1, 64 * 0.08, 64 * 0.06),
                     (64 * 0.1, 64 * 0.03, 64 * 0.03),
                     (64 * 0.16, 64 * 0.03, 64 * 0.02)],
    "cifar": [(32 * 0, 32 * 0, 32 * 0.08),
              (32 * 0.05, 32 * 0.2, 32 * 0.07),
              (32 * 0.08, 32 * 0.06, 32 * 0.06),
              (32 * 0.1, 32 * 0.04, 32 * 0.05),
              (32 * 0.1, 32 * 0.03, 32 * 0.03)],
})
def elastic_transform(x: torch.Tensor, c: tuple[float, float, float],
                      streams: Streams) -> torch.Tensor:
    """Random affine jitter, then a Gaussian-smoothed random displacement (both bilinear)."""
    alpha, sigma, jitter = c
    b, _, h, w = x.shape
    # per image: control-point jitter (3, 2), then the dx and dy noise fields
    pt_noise = streams.uniform((3, 2), 0).double() * 2 - 1
    fields = streams.uniform((2, h, w), 1, x.device) * 2 - 1
    centre = torch.tensor([h // 2, w // 2], dtype=torch.float64)
    side = min(h, w) // 3
    src = torch.stack([centre + side, centre + torch.tensor([side, -side]), centre - side])
    src = src.expand(b, 3, 2)
    # cv2 adds float32 jitter to float32 points
    dst = (src.float() + (pt_noise * jitter).float()).double()
    forward = _affine_from_points(src, dst)
    bottom = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(b, 1, 3)
    dev = x.device
    inverse = torch.linalg.inv(torch.cat([forward, bottom], dim=1))[:, :2].to(dev)  # dst -> src

    rows = torch.arange(h, dtype=torch.float64, device=dev).view(1, h, 1).expand(b, h, w)
    cols = torch.arange(w, dtype=torch.float64, device=dev).view(1, 1, w).expand(b, h, w)
    src_cols, src_rows = (m[:, 0, None, None] * cols + m[:, 1, None, None] * rows
                          + m[:, 2, None, None] for m in inverse.unbind(1))
    warped = sample_bilinear(x, src_rows, src_cols, "mirror")

    disp = gaussian_blur(fields, sigma, mode="reflect", truncate=3.0)
    disp = disp * alpha  # float32, as the reference casts it
    out = sample_bilinear(warped, rows + disp[:, 1], cols + disp[:, 0], "reflect")
    return out.clamp(0, 1)

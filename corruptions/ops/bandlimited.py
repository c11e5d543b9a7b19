"""Band-limited Gaussian noise: white noise kept in one ring of spatial frequencies.

Not an ImageNet-C corruption (no severity table, so it is not registered): ``bivol-robust
sweep`` calls it with a continuous strength. Bands are rings of the radial frequency
rho = sqrt(fy^2 + fx^2) / 0.5, in units of the Nyquist frequency (fy, fx in cycles per pixel):
low (0, 1/3], mid (1/3, 2/3], high (2/3, sqrt 2]. The mean (rho = 0) is in no band. Every
image's noise is scaled to the same L2 norm, ``c * sqrt(3 H W)`` (RMS ``c`` per element, as
``gaussian_noise`` at sigma c on average), so the bands differ in frequency only, not in energy.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from ..philox import Streams

#: Band edges (lower exclusive, upper inclusive) of rho, the radial frequency over Nyquist.
BANDS: dict[str, tuple[float, float]] = {"low": (0.0, 1 / 3), "mid": (1 / 3, 2 / 3), "high": (2 / 3, math.sqrt(2))}


@functools.lru_cache(maxsize=16)
def band_mask(height: int, width: int, band: str) -> torch.Tensor:
    """Boolean (H, W) mask of the band's frequencies in ``torch.fft.fft2`` order."""
    low, high = BANDS[band]
    fy = torch.fft.fftfreq(height, dtype=torch.float64).view(-1, 1)
    fx = torch.fft.fftfreq(width, dtype=torch.float64).view(1, -1)
    rho = torch.sqrt(fy ** 2 + fx ** 2) / 0.5
    return (rho > low) & (rho <= high)


def band_noise(x: torch.Tensor, c: float, streams: Streams, band: str) -> torch.Tensor:
    """``x`` plus white Gaussian noise filtered to ``band``, each image's noise of L2 norm
    ``c * sqrt(3 H W)``; the white noise comes from the image's own stream."""
    height, width = x.shape[-2:]
    white = streams.normal(tuple(x.shape[1:]), 0, x.device).double()
    noise = torch.fft.ifft2(torch.fft.fft2(white) * band_mask(height, width, band)).real
    norms = noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    noise = noise * (c * math.sqrt(noise[0].numel()) / norms)
    return x + noise.to(x.dtype)

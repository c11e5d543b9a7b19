"""Shared building blocks of the blur, weather and geometric corruptions, written once.

Each piece reproduces the NumPy/SciPy/OpenCV primitive the reference generators call, with the
same border semantics, so the batched torch corruptions agree with the reference:

* ``gaussian_blur``: ``scipy.ndimage.gaussian_filter`` (hence ``skimage.filters.gaussian``),
  radius ``int(truncate * sigma + 0.5)``, any of SciPy's ``nearest`` / ``reflect`` / ``mirror``.
* ``filter2d``: ``cv2.filter2D`` (correlation, default border ``BORDER_REFLECT_101``), with one
  kernel for the batch or one per image, through the FFT so long motion kernels stay cheap.
* ``disk_kernel`` / ``motion_kernel``: the defocus disk and the kernel-based motion blur of the
  reference.
* ``plasma_fractal``: the diamond-square height map behind fog, batched over images.
* ``clipped_zoom``: ``scipy.ndimage.zoom(order=1)`` of a centre crop.
* ``sample_bilinear``: ``scipy.ndimage.map_coordinates(order=1)`` with SciPy's border modes.
* ``eight_bit_levels``: recognise float images that came from uint8 (the api's ``u / 255``), for
  the ops with exact 8-bit fast paths.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..philox import Streams

#: SciPy border modes used by the reference: 'nearest' (aaa|abc|ccc), 'reflect' (cba|abc|cba,
#: half-sample symmetric) and 'mirror' (cb|abc|ba, OpenCV's BORDER_REFLECT_101).
BORDER_MODES = ("nearest", "reflect", "mirror")


def eight_bit_levels(x: torch.Tensor) -> torch.Tensor | None:
    """``round(x * 255)`` as uint8 if every element of float ``x`` lies within 1e-4 of a level
    ``k / 255``, k in 0..255 (as the api's ``u / 255`` does in float32), else ``None``."""
    scaled = x * 255
    levels = torch.round(scaled)
    on_grid = bool(scaled.sub_(levels).abs_().le_(1e-4).all())
    if on_grid and levels.numel() and 0 <= float(levels.min()) and float(levels.max()) <= 255:
        return levels.to(torch.uint8)
    return None


def border_index(index: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Map integer positions (possibly outside ``[0, size)``) to in-range ones for ``mode``.

    Works for any distance outside the image (periodic continuation of the reflections), which
    matters when a Gaussian is wider than the image, as with large elastic sigmas.
    """
    if mode == "nearest":
        return index.clamp(0, size - 1)
    if mode == "reflect":
        period = 2 * size
        index = torch.remainder(index, period)
        return torch.where(index >= size, period - 1 - index, index)
    if mode == "mirror":
        if size == 1:
            return torch.zeros_like(index)
        period = 2 * size - 2
        index = torch.remainder(index, period)
        return torch.where(index >= size, period - index, index)
    raise ValueError(f"unknown border mode '{mode}', choose from {BORDER_MODES}")


def pad2d(x: torch.Tensor, top: int, bottom: int, left: int, right: int, mode: str) -> torch.Tensor:
    """Pad the last two dimensions by index mapping, for any pad width and SciPy border mode."""
    h, w = x.shape[-2:]
    if (mode in ("nearest", "mirror") and x.dim() == 4 and x.is_floating_point()
            and max(top, bottom) < h and max(left, right) < w):
        # the same copies through torch's native padding (reflect = reflect-101 = 'mirror')
        return F.pad(x, (left, right, top, bottom), mode="replicate" if mode == "nearest" else "reflect")
    rows = border_index(torch.arange(-top, h + bottom, device=x.device), h, mode)
    cols = border_index(torch.arange(-left, w + right, device=x.device), w, mode)
    return x.index_select(-2, rows).index_select(-1, cols)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """SciPy's sampled, normalised Gaussian (float64), radius ``int(truncate * sigma + 0.5)``."""
    radius = int(truncate * float(sigma) + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / float(sigma)) ** 2)
    return k / k.sum()


#: Output lines per block of the banded filter matrix (see :func:`_filter1d`).
_FILTER_BLOCK = 32


def _filter1d(x: torch.Tensor, kernel: torch.Tensor, dim: int, mode: str) -> torch.Tensor:
    """Correlate dimension ``dim`` (-1 or -2) of ``x`` with an odd 1-D kernel under ``mode``.

    The filter and its border handling form one n x n matrix (taps beyond the line fold back
    through :func:`border_index`, so kernels wider than the image are exact too); a matrix
    product is also far faster than a depthwise convolution on CPU. The matrix is banded, so
    blocks of 32 output lines multiply only the input lines they read (2x faster at 224 px for
    the small sigmas); the skipped entries are zeros, so the sums are the same.
    """
    n = x.shape[dim]
    # Built on the CPU: taps that fold back onto one entry are summed in a fixed order there,
    # where CUDA's scatter_add_ adds them atomically in any order (wide elastic-transform blurs
    # differed from call to call on an H200).
    matrix = torch.zeros(n, n, dtype=x.dtype)
    r = (kernel.numel() - 1) // 2
    positions = torch.arange(n).view(-1, 1) + torch.arange(-r, r + 1).view(1, -1)
    weights = kernel.to(device="cpu", dtype=x.dtype).expand(n, -1).contiguous()
    matrix.scatter_add_(1, border_index(positions, n, mode), weights)
    blocks = _band_blocks(matrix)
    matrix = matrix.to(x.device)
    if x.device.type == "cpu" or x.dim() != 4:
        return _banded_product(x, matrix, blocks, dim)
    # cuBLAS picks its GEMM kernel, and with it the summation order, by the matrices' sizes, which
    # grow with the batch, and by their layout, which the previous pass leaves transposed or not
    # (on an H200 both changed pixels by one level, and spatter's thresholded layer by up to 68).
    # Each image goes alone and contiguous: the same products whatever batch it came in.
    return torch.cat([_banded_product(x[i:i + 1].contiguous(), matrix, blocks, dim)
                      for i in range(x.shape[0])])


def _banded_product(x: torch.Tensor, matrix: torch.Tensor, blocks: list[tuple[int, int, int, int]] | None,
                    dim: int) -> torch.Tensor:
    """``matrix`` applied along ``dim`` of ``x``, by blocks of output lines when ``blocks`` is given."""
    n = matrix.shape[0]
    if blocks is None:
        return (matrix @ x) if dim == -2 else (x @ matrix.T)
    if dim == -2:
        return torch.cat([matrix[lo:hi, a:z] @ x[..., a:z, :] for lo, hi, a, z in blocks], dim=-2)
    rows = x.reshape(-1, n)  # a column window of this 2-D view is a strided matrix: no copy
    return torch.cat([rows[:, a:z] @ matrix[lo:hi, a:z].T for lo, hi, a, z in blocks],
                     dim=-1).view(*x.shape[:-1], n)


def _band_blocks(matrix: torch.Tensor) -> list[tuple[int, int, int, int]] | None:
    """(lo, hi, first, end): blocks of output lines ``lo:hi`` and the input lines
    ``first:end`` holding their non-zero entries, or ``None`` when the band is too wide to gain."""
    n = matrix.shape[0]
    used = matrix != 0
    blocks = []
    for lo in range(0, n, _FILTER_BLOCK):
        hi = min(n, lo + _FILTER_BLOCK)
        cols = used[lo:hi].any(0).nonzero().flatten()
        a, z = (int(cols[0]), int(cols[-1]) + 1) if cols.numel() else (lo, lo + 1)
        blocks.append((lo, hi, a, z))
    if len(blocks) < 2 or max(z - a for _, _, a, z in blocks) > n // 2:
        return None
    return blocks


def gaussian_blur(x: torch.Tensor, sigma: float, mode: str = "nearest",
                  truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian of (N, C, H, W) over H and W, as ``gaussian_filter`` per channel.

    ``sigma == 0`` returns ``x`` unchanged, as SciPy skips the axis.
    """
    if float(sigma) <= 1e-15:
        return x
    kernel = gaussian_kernel1d(sigma, truncate).to(x.device)
    return _filter1d(_filter1d(x, kernel, -2, mode), kernel, -1, mode)


def _crop_to_support(kernel: torch.Tensor) -> list[tuple[torch.Tensor, tuple[int, int, int, int]]]:
    """For each of the odd-sized kernels (B, kh, kw): the smallest window holding its non-zero
    taps and its centre, and how far it reaches (top, bottom, left, right) from the centre: the
    padding a correlation needs. Motion kernels are one-sided lines, so this halves their
    padding. Found for the whole batch at once."""
    kh, kw = kernel.shape[-2:]
    taps = kernel != 0
    bounds = []
    for lines, centre in ((taps.any(-1), kh // 2), (taps.any(-2), kw // 2)):
        n = lines.shape[1]
        first = torch.where(lines.any(1), lines.int().argmax(1), n).clamp(max=centre)
        last = torch.where(lines.any(1), n - 1 - lines.flip(1).int().argmax(1), -1).clamp(min=centre)
        bounds.append(torch.stack([first, last], 1))
    out = []
    for i, ((r0, r1), (c0, c1)) in enumerate(torch.stack(bounds, 1).tolist()):
        out.append((kernel[i, r0:r1 + 1, c0:c1 + 1], (kh // 2 - r0, r1 - kh // 2, kw // 2 - c0, c1 - kw // 2)))
    return out


def fft_size(n: int) -> int:
    """The smallest length >= ``n`` of the form ``8 * 2**a * k``, k in {1, 3, 5, 9, 15}. FFT time
    depends on the factors, not only the length: at 224 px, 232 = 8 * 29 px and 244 = 4 * 61 px
    took 3-4x as long as 240 or 256 px, and odd lengths are slow in rfft."""
    return min(8 * k << max(0, math.ceil(math.log2(n / (8 * k))))
               for k in (1, 3, 5, 9, 15))


#: Largest image (H * W) that :func:`filter2d` sends to the CPU when it lives on a GPU.
_HOST_FILTER_PIXELS = 64 * 64


def filter2d(x: torch.Tensor, kernel: torch.Tensor, mode: str = "mirror") -> torch.Tensor:
    """``cv2.filter2D`` of every channel of (B, C, H, W): correlation with an odd-sized kernel.

    ``kernel`` is (kh, kw) for the whole batch or (B, kh, kw), one per image (random motion
    angles). Computed through the FFT of the padded image (in ``x``'s precision, at least
    float32) at a fast transform size, so the cost does not grow with the kernel size (motion
    kernels reach 81 x 81). Default border: OpenCV's BORDER_REFLECT_101.

    Images of at most ``_HOST_FILTER_PIXELS`` on a GPU are filtered on the CPU: one small
    transform per image is launch-bound there (snow at 32 px on an H200: 1.8k img/s, against
    7.6k on one CPU thread).
    """
    if x.device.type != "cpu" and x.shape[-2] * x.shape[-1] <= _HOST_FILTER_PIXELS:
        return filter2d(x.cpu(), kernel.cpu(), mode).to(x.device)
    dtype = torch.promote_types(x.dtype, torch.float32)
    kernel = kernel.to(device=x.device, dtype=dtype)
    if x.dim() != 4 or x.shape[0] == 1 or kernel.dim() == 2:
        # one kernel: its spectrum is computed once
        (kernel, pads), = _crop_to_support(kernel.reshape(-1, *kernel.shape[-2:]))
        spectra: dict[tuple[int, int], torch.Tensor] = {}
        if x.dim() != 4 or x.shape[0] == 1:
            return _filter2d_fft(x, kernel, pads, mode, dtype, spectra)
        # Batched FFTs round differently depending on how many transforms run together, so
        # every image is filtered on its own, as if it came alone: its output never depends on
        # the batch it came in.
        return torch.cat([_filter2d_fft(x[i:i + 1], kernel, pads, mode, dtype, spectra)
                          for i in range(x.shape[0])])
    # one kernel per image, each cropped to its own support (a batch's widest would change the
    # transform size)
    return torch.cat([_filter2d_fft(x[i:i + 1], k, pads, mode, dtype, {})
                      for i, (k, pads) in enumerate(_crop_to_support(kernel))])


def _filter2d_fft(x: torch.Tensor, kernel: torch.Tensor, pads: tuple[int, int, int, int], mode: str,
                  dtype: torch.dtype, spectra: dict[tuple[int, int], torch.Tensor]) -> torch.Tensor:
    """Correlate ``x`` with a kernel cropped by :func:`_crop_to_support` (``pads``: its reach);
    ``spectra`` caches the kernel's spectrum per transform size."""
    top, bottom, left, right = pads
    h, w = x.shape[-2:]
    size = (fft_size(h + top + bottom), fft_size(w + left + right))
    # The correlation of the first h x w outputs never wraps around the transform, so the
    # transform's extra rows and columns may hold anything: the border mode fills them too,
    # which spares a zero-filled copy.
    xp = pad2d(x, top, size[0] - h - top, left, size[1] - w - left, mode)
    if size not in spectra:
        spectra[size] = torch.fft.rfft2(kernel, s=size).conj()
    spectrum = torch.fft.rfft2(xp.to(dtype)).mul_(spectra[size])
    return torch.fft.irfft2(spectrum, s=size)[..., :h, :w].to(x.dtype)


def disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """The reference's anti-aliased defocus disk (float64).

    A binary disk on a grid of half-width ``max(8, radius)``, normalised, then smoothed like
    ``cv2.GaussianBlur(ksize=3 or 5, sigmaX=alias_blur)`` with OpenCV's default reflect-101 border.
    """
    if radius <= 8:
        half, ksize = 8, 3
    else:
        half, ksize = int(radius), 5
    grid = torch.arange(-half, half + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    disk = ((xx**2 + yy**2) <= radius**2).double()
    disk = disk / disk.sum()
    t = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    g = torch.exp(-(t**2) / (2 * alias_blur**2))
    g = g / g.sum()
    return _filter1d(_filter1d(disk, g, -2, "mirror"), g, -1, "mirror")


def motion_kernel(radius: int, sigma: float, angles_deg: Sequence[float], height: int,
                  width: int) -> torch.Tensor:
    """Correlation kernels equivalent to the reference's shift-and-add motion blur, one per angle.

    The reference adds ``width = 2 * radius + 1`` copies of the image, copy ``i`` weighted by a
    one-sided Gaussian ``exp(-i^2 / 2 sigma^2)`` (normalised) and shifted by ``i`` pixels along
    ``angle`` with edge replication; it stops (without renormalising) at the first shift as large
    as the image. With a replicate-padded input this is one correlation with the returned
    (2 * width - 1)-square kernel: (len(angles), K, K) float64.
    """
    taps = 2 * radius + 1
    i = torch.arange(taps, dtype=torch.float64)
    weights = torch.exp(-(i**2) / (2 * sigma**2))
    weights = weights / weights.sum()
    rads = [math.radians(a) for a in angles_deg]
    sin = torch.tensor([math.sin(r) for r in rads], dtype=torch.float64).unsqueeze(1)
    cos = torch.tensor([math.cos(r) for r in rads], dtype=torch.float64).unsqueeze(1)
    dy = -torch.ceil(i * sin - 0.5).to(torch.int64)  # (B, taps), as math.ceil per tap
    dx = -torch.ceil(i * cos - 0.5).to(torch.int64)
    inside = ((dy.abs() < height) & (dx.abs() < width)).cumprod(1).bool()
    image = torch.arange(len(rads)).unsqueeze(1).expand_as(dy)
    kernel = torch.zeros(len(rads), 2 * taps - 1, 2 * taps - 1, dtype=torch.float64)
    # a shift by (dy, dx) reads the source pixel at offset (-dy, -dx)
    kernel.index_put_((image[inside], taps - 1 - dy[inside], taps - 1 - dx[inside]),
                      weights.expand_as(dy)[inside], accumulate=True)
    return kernel


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 2 ** (n - 1).bit_length()


def plasma_fractal(mapsize: int, wibbledecay: float, streams: Streams,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Diamond-square height maps in [0, 1], one (mapsize, mapsize) map per image stream.

    Same recursion as the reference (float32, perturbations ``wibble * U(-wibble, wibble)``,
    ``wibble`` divided by ``wibbledecay`` per level, wrap-around neighbours), run for the whole
    batch at once; each image's uniforms come from its own stream.
    """
    if mapsize & (mapsize - 1):
        raise ValueError(f"mapsize must be a power of two, got {mapsize}")
    square = _wibble_squares(mapsize, float(wibbledecay)).to(device)
    noise = streams.uniform((square.numel(),), 0, device)
    noise = noise.mul_(2 * square).sub_(square)  # wibble * U(-wibble, wibble)
    # The grid of one level's corners (B, n, n) is kept contiguous; each level computes the
    # centres and the two sets of edge midpoints from it and interleaves the four into the
    # next level's corners (the reference writes strided slices of one map instead).
    corners = torch.zeros(len(streams), 1, 1, device=device)
    used = 0

    def wibbled_mean(acc: torch.Tensor) -> torch.Tensor:
        nonlocal used
        size = acc.shape[1] * acc.shape[2]
        perturbation = noise[:, used:used + size].view_as(acc)
        used += size
        return acc.mul_(0.25).add_(perturbation)

    while corners.shape[1] < mapsize:
        below = corners.roll(-1, 1)
        acc = corners + below
        centres = wibbled_mean(acc.add_(acc.roll(-1, 2)))
        top = wibbled_mean(centres + centres.roll(1, 1) + corners + corners.roll(-1, 2))
        left = wibbled_mean(centres + centres.roll(1, 2) + corners + below)
        b, n = corners.shape[:2]
        grid = torch.empty(b, n, 2, n, 2, device=device)
        grid[:, :, 0, :, 0], grid[:, :, 0, :, 1] = corners, top
        grid[:, :, 1, :, 0], grid[:, :, 1, :, 1] = left, centres
        corners = grid.view(b, 2 * n, 2 * n)
    m = corners.sub_(corners.amin(dim=(1, 2), keepdim=True))
    return m.div_(m.amax(dim=(1, 2), keepdim=True))


@functools.lru_cache(maxsize=32)
def _wibble_squares(mapsize: int, wibbledecay: float) -> torch.Tensor:
    """``wibble**2`` of every uniform :func:`plasma_fractal` draws, level by level (3 n**2 per
    level of n**2 squares; wibble starts at 100 and is divided by ``wibbledecay`` per level)."""
    sizes, wibble, n = [], [], 1
    while n < mapsize:
        sizes.append(3 * n * n)
        wibble.append(100.0 / wibbledecay ** len(wibble))
        n *= 2
    return torch.tensor(wibble).square().repeat_interleave(torch.tensor(sizes))


def clipped_zoom(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """Zoom into the centre of (..., H, W) by ``zoom`` and keep the central H x W.

    As the generators: crop ``ceil(side / zoom)`` pixels from ``(side - crop) // 2``, zoom it
    like ``scipy.ndimage.zoom(order=1)`` (``round(crop * zoom)`` samples, corners aligned, which
    is torch's bilinear ``align_corners=True``), trim the excess centrally. For the zoom-blur
    factors at most one extra pixel appears, so this equals imagecorruptions' top-left trim.
    """
    h, w = x.shape[-2:]
    ch, cw = int(math.ceil(h / zoom)), int(math.ceil(w / zoom))
    top, left = (h - ch) // 2, (w - cw) // 2
    oh, ow = int(round(ch * zoom)), int(round(cw * zoom))
    crop = x[..., top:top + ch, left:left + cw].reshape(-1, 1, ch, cw)
    out = F.interpolate(crop, size=(oh, ow), mode="bilinear", align_corners=True)
    th, tw = (oh - h) // 2, (ow - w) // 2
    return out[..., th:th + h, tw:tw + w].reshape(x.shape)


def sample_bilinear(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                    mode: str) -> torch.Tensor:
    """Bilinear samples of (B, C, H, W) at per-image coordinates ``rows``/``cols`` (B, H', W').

    ``map_coordinates(order=1)`` semantics (linear interpolation of the signal extended by the
    SciPy border ``mode``) through ``grid_sample``: 'nearest' is its 'border' padding, 'mirror'
    (reflect-101) its reflection about the outer pixel centres (``align_corners=True``), and
    SciPy's half-sample 'reflect' its reflection about the outer pixel edges
    (``align_corners=False``), which interpolates the edge-duplicated extension identically.
    """
    if mode not in BORDER_MODES:
        raise ValueError(f"unknown border mode '{mode}', choose from {BORDER_MODES}")
    h, w = x.shape[-2:]
    if mode == "mirror":
        gx, gy = cols * (2 / max(w - 1, 1)) - 1, rows * (2 / max(h - 1, 1)) - 1
    else:
        gx, gy = (2 * cols + 1) / w - 1, (2 * rows + 1) / h - 1
    grid = torch.stack([gx, gy], dim=-1).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear",
                         padding_mode="border" if mode == "nearest" else "reflection",
                         align_corners=mode == "mirror")

"""A procedurally generated 10-class image dataset that needs no download and no files.

Each image shows one shape (the class) with random colour, scale, rotation and position on a
gradient background with faint texture and two small distractor shapes. The object's colour keeps
a fixed distance from the background's and its rotation stays small (a square must not turn into
a diamond): with full rotation, strong texture and more clutter, ResNet-20 and the dynamic
operators sat at chance for epochs, which made the bundled weights a lottery. Every image is rendered from its own random stream, seeded by
(seed, split, index), so image ``i`` is the same whatever else is generated, and the train and
test splits never share a stream. Rendering is vectorised over a batch of images with signed
distance functions and 2x supersampling (anti-aliased edges, like a photographed object).
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import UsageError


class UnknownSplitError(UsageError, ValueError):
    """A split name the built-in dataset does not have (a usage error, and a ValueError for API callers)."""

CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "cross", "ring",
    "star", "hexagon", "ellipse", "diamond", "crescent",
)
SPLIT_SIZES: dict[str, int] = {"train": 20000, "test": 1000}
_SUPERSAMPLE = 2
_N_CLUTTER = 2
_N_WAVES = 3


def _sdf_of_kind(kind: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Signed distance (negative inside, unit-sized shape) of class ``kind`` at local (u, v)."""
    au, av = u.abs(), v.abs()
    if kind == 0:  # circle
        return torch.sqrt(u * u + v * v) - 0.9
    if kind == 1:  # square
        return torch.maximum(au, av) - 0.75
    if kind == 2:  # triangle
        return torch.maximum(au * 0.866 + v * 0.5, -v) - 0.45
    if kind == 3:  # cross
        return torch.minimum(torch.maximum(au - 0.28, av - 0.95), torch.maximum(au - 0.95, av - 0.28))
    if kind == 4:  # ring
        return (torch.sqrt(u * u + v * v) - 0.68).abs() - 0.24
    if kind == 5:  # star
        return torch.sqrt(u * u + v * v) - (0.62 + 0.33 * torch.cos(5 * torch.atan2(v, u)))
    if kind == 6:  # hexagon
        dirs = [(u * math.cos(a) + v * math.sin(a)).abs() for a in (0.0, math.pi / 3, 2 * math.pi / 3)]
        return torch.maximum(torch.maximum(dirs[0], dirs[1]), dirs[2]) - 0.8
    if kind == 7:  # ellipse
        return torch.sqrt(u * u + (v / 0.45) ** 2) - 0.95
    if kind == 8:  # diamond
        return au + av - 0.95
    # crescent
    return torch.maximum(torch.sqrt(u * u + v * v) - 0.9, 0.72 - torch.sqrt((u - 0.45) ** 2 + v * v))


def _shape_sdf(kind: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDF of each image's own shape: (B,) kinds at (B,H,W) coordinates, one pass per kind."""
    out = torch.empty_like(u)
    for k in kind.unique().tolist():
        rows = (kind == k).nonzero().squeeze(1)
        out[rows] = _sdf_of_kind(int(k), u[rows], v[rows])
    return out


def _stream_seed(seed: int, split: str, index: int) -> int:
    key = f"builtin|{seed}|{split}|{index}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def _draw_parameters(seed: int, split: str, indices: np.ndarray) -> dict[str, np.ndarray]:
    """All random choices of each image, drawn from that image's own stream."""
    rows = []
    for index in indices:
        rng = np.random.default_rng(_stream_seed(seed, split, int(index)))
        label = int(index) % len(CLASSES)  # exact class balance in every prefix of 10
        rows.append(np.concatenate([
            [label],
            rng.uniform(0.38, 0.52, 1),                  # object scale (fraction of the side)
            rng.uniform(-0.2, 0.2, 2),                   # object centre offset
            rng.uniform(-0.35, 0.35, 1),                 # rotation (small: a square must not become a diamond)
            rng.uniform(0.35, 0.65, 3),                  # object colour offset from the background's
            rng.uniform(0, 1, 6),                        # background gradient colours
            rng.uniform(2, 9, _N_WAVES),                 # texture frequencies
            rng.uniform(0, 2 * math.pi, 2 * _N_WAVES),   # texture orientations and phases
            rng.uniform(0.0, 0.08, _N_WAVES),            # texture amplitudes
            rng.integers(0, len(CLASSES), _N_CLUTTER),   # clutter shapes
            rng.uniform(0.05, 0.1, _N_CLUTTER),          # clutter scales
            rng.uniform(-0.5, 0.5, 2 * _N_CLUTTER),      # clutter positions
            rng.uniform(0, 2 * math.pi, _N_CLUTTER),     # clutter rotations
            rng.uniform(0, 1, 3 * _N_CLUTTER),           # clutter colours
            rng.uniform(0, 0.08, 1),                     # sensor noise level
            rng.integers(0, 2**31, 1),                   # sensor noise seed
        ]))
    table = np.stack(rows)
    names = [("label", 1), ("scale", 1), ("centre", 2), ("angle", 1), ("colour", 3),
             ("background", 6), ("freq", _N_WAVES), ("wave", 2 * _N_WAVES), ("amp", _N_WAVES),
             ("c_kind", _N_CLUTTER), ("c_scale", _N_CLUTTER), ("c_pos", 2 * _N_CLUTTER),
             ("c_angle", _N_CLUTTER), ("c_colour", 3 * _N_CLUTTER), ("noise", 1), ("noise_seed", 1)]
    out, col = {}, 0
    for name, width in names:
        out[name] = table[:, col:col + width]
        col += width
    return out


def _paint(canvas: torch.Tensor, sdf: torch.Tensor, colour: torch.Tensor, pixel: float) -> torch.Tensor:
    """Alpha-blend a shape given by its SDF onto (B,3,H,W) canvas with a one-pixel soft edge."""
    alpha = (0.5 - sdf / pixel).clamp(0, 1).unsqueeze(1)
    return canvas * (1 - alpha) + colour.view(-1, 3, 1, 1) * alpha


def _local(x: torch.Tensor, y: torch.Tensor, centre: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor):
    cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    dx, dy = x - centre[:, 0].view(-1, 1, 1), y - centre[:, 1].view(-1, 1, 1)
    s = scale.view(-1, 1, 1)
    return (cos * dx + sin * dy) / s, (-sin * dx + cos * dy) / s


def render(indices: np.ndarray | list[int], split: str = "test", size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Render images ``indices`` of ``split``: uint8 (N,3,size,size) and int64 labels (N,)."""
    if split not in SPLIT_SIZES:
        raise UnknownSplitError(f"unknown split '{split}' (choose from {', '.join(SPLIT_SIZES)})")
    idx = np.asarray(indices, dtype=np.int64)
    p = {k: torch.from_numpy(v).float() for k, v in _draw_parameters(seed, split, idx).items()}
    n, res = len(idx), size * _SUPERSAMPLE
    coords = (torch.arange(res, dtype=torch.float32) + 0.5) / res * 2 - 1  # [-1, 1]
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    x, y = x.expand(n, res, res), y.expand(n, res, res)
    pixel = 2.0 / res

    # Background: a two-colour gradient modulated by oriented sinusoidal textures.
    bg = p["background"].view(n, 2, 3, 1, 1)
    t = ((x + y) * 0.25 + 0.5).unsqueeze(1)
    canvas = bg[:, 0] * (1 - t) + bg[:, 1] * t
    for w in range(_N_WAVES):
        theta, phase = p["wave"][:, 2 * w].view(-1, 1, 1), p["wave"][:, 2 * w + 1].view(-1, 1, 1)
        freq, amp = p["freq"][:, w].view(-1, 1, 1), p["amp"][:, w].view(-1, 1, 1)
        wave = torch.sin(freq * math.pi * (x * torch.cos(theta) + y * torch.sin(theta)) + phase)
        canvas = canvas + (amp * wave).unsqueeze(1) * (1 if w % 2 == 0 else -1)

    # Clutter: small distractor shapes of any class, drawn under the object.
    for k in range(_N_CLUTTER):
        u, v = _local(x, y, p["c_pos"][:, 2 * k:2 * k + 2], p["c_angle"][:, k], p["c_scale"][:, k])
        sdf = _shape_sdf(p["c_kind"][:, k].long(), u, v) * p["c_scale"][:, k].view(-1, 1, 1)
        canvas = _paint(canvas, sdf, p["c_colour"][:, 3 * k:3 * k + 3], pixel)

    # The object: its shape is the label.
    u, v = _local(x, y, p["centre"], p["angle"][:, 0], p["scale"][:, 0])
    sdf = _shape_sdf(p["label"][:, 0].long(), u, v) * p["scale"].view(-1, 1, 1)
    colour = (bg.mean(1).flatten(1) + p["colour"]) % 1.0  # every channel 0.35-0.65 off the background
    canvas = _paint(canvas, sdf, colour, pixel)

    image = F.avg_pool2d(canvas, _SUPERSAMPLE)
    noise = torch.stack([
        torch.randn(3, size, size, generator=torch.Generator().manual_seed(int(s)))
        for s in p["noise_seed"][:, 0].long().tolist()
    ])
    image = image + noise * p["noise"].view(-1, 1, 1, 1)
    images = (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    return images, p["label"][:, 0].long()


class BuiltinShapes(Dataset):
    """The built-in dataset as a map-style dataset of (uint8 CHW image, label).

    The whole split is rendered once on construction (1 000 images at 32 px take about a
    second), so indexing is free and loaders need no workers.
    """

    classes = list(CLASSES)

    def __init__(self, split: str = "test", size: int = 32, seed: int = 0, length: int | None = None,
                 chunk: int = 1000) -> None:
        total = SPLIT_SIZES.get(split)
        if total is None:
            raise UnknownSplitError(f"unknown split '{split}' (choose from {', '.join(SPLIT_SIZES)})")
        self.split, self.size, self.seed = split, size, seed
        self.name = f"builtin:{split}:seed{seed}:{size}px"
        count = total if length is None else length
        parts = [render(np.arange(start, min(start + chunk, count)), split, size, seed)
                 for start in range(0, count, chunk)]
        self.images = torch.cat([im for im, _ in parts])
        self.labels = torch.cat([lab for _, lab in parts])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

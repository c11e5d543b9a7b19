"""Render corrupted copies of a dataset to disk, in the layouts of the published benchmarks.

* ``imagenet-c``: ``<out>/<corruption>/<severity>/<class>/<file>.JPEG`` at JPEG quality 85,
  the format of the released ImageNet-C.
* ``cifar-c``: ``<out>/<corruption>.npy`` uint8 (5N, H, W, 3), severities 1..5 stacked, and
  ``<out>/labels.npy`` (5N,), the format of the released CIFAR-10-C (no JPEG step).

Each finished file is written atomically, so an interrupted render resumes by skipping them.
Images come out exactly as the evaluation engine would corrupt them (same seeds), so
evaluating the rendered folder measures the same thing, up to the JPEG step.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

import corruptions

from .errors import UsageError
from .io import atomic_write_bytes
from .plotstyle import font_file

LAYOUTS = ("imagenet-c", "cifar-c")
JPEG_QUALITY = 85


def _file_stem(dataset: Any, index: int) -> str:
    samples = getattr(dataset, "samples", None)
    return Path(samples[index][0]).stem if samples else f"{index:06d}"


def _jpeg_bytes(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def render_dataset(dataset: Any, out: str | Path, *, corruption_names: Sequence[str], severities: Sequence[int],
                   layout: str, indices: np.ndarray, seed: int = 0, profile: str | None = None,
                   batch_size: int = 256, progress: bool = True) -> int:
    """Write every (corruption, severity) copy of ``dataset[indices]``; returns files written."""
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout '{layout}' (choose from {', '.join(LAYOUTS)})")
    if layout == "cifar-c" and list(severities) != list(corruptions.SEVERITIES):
        raise UsageError("the cifar-c layout stacks all five severities; drop --severities")
    total = len(indices) * len(corruption_names) * len(severities)
    with tqdm(total=total, unit="img", disable=not progress, desc="render", dynamic_ncols=True) as bar:
        render = _render_cifar_c if layout == "cifar-c" else _render_imagenet_c
        return render(dataset, Path(out), corruption_names, severities, indices, seed, profile, batch_size, bar)


def _load(dataset: Any, indices: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    items = [dataset[int(i)] for i in indices]
    return torch.stack([image for image, _ in items]), np.asarray([label for _, label in items], dtype=np.int64)


def _render_imagenet_c(dataset: Any, out: Path, corruption_names: Sequence[str], severities: Sequence[int],
                       indices: np.ndarray, seed: int, profile: str | None, batch_size: int, bar: tqdm) -> int:
    written = 0
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        clean, labels = _load(dataset, chunk)
        for name in corruption_names:
            for severity in severities:
                files = [out / name / str(severity) / dataset.classes[label] / f"{_file_stem(dataset, int(i))}.JPEG"
                         for i, label in zip(chunk, labels)]
                if not all(f.exists() for f in files):
                    images = corruptions.corrupt(clean, name, severity, seed=seed, indices=chunk.tolist(),
                                                 profile=profile)
                    for image, path in zip(images, files):
                        if not path.exists():
                            atomic_write_bytes(path, _jpeg_bytes(image))
                            written += 1
                bar.update(len(chunk))
    return written


def _render_cifar_c(dataset: Any, out: Path, corruption_names: Sequence[str], severities: Sequence[int],
                    indices: np.ndarray, seed: int, profile: str | None, batch_size: int, bar: tqdm) -> int:
    written = 0
    clean, labels = _load(dataset, indices)
    for name in corruption_names:
        target = out / f"{name}.npy"
        if not target.exists():
            stacked = torch.cat([_corrupt_in_batches(clean, indices, name, s, seed, profile, batch_size)
                                 for s in severities])
            atomic_write_bytes(target, _npy_bytes(stacked.permute(0, 2, 3, 1).contiguous().numpy()))
            written += 1
        bar.update(len(indices) * len(severities))
    if not (out / "labels.npy").exists():
        atomic_write_bytes(out / "labels.npy", _npy_bytes(np.tile(labels, len(severities))))
        written += 1
    return written


def _corrupt_in_batches(clean: torch.Tensor, indices: np.ndarray, name: str, severity: int, seed: int,
                        profile: str | None, batch_size: int) -> torch.Tensor:
    return torch.cat([
        corruptions.corrupt(clean[s:s + batch_size], name, severity, seed=seed,
                            indices=indices[s:s + batch_size].tolist(), profile=profile)
        for s in range(0, len(indices), batch_size)
    ])


def corruption_grid(image: torch.Tensor, corruption_names: Sequence[str], seed: int = 0,
                    profile: str | None = None) -> torch.Tensor:
    """A uint8 (3, H', W') grid: one row per corruption, the clean image then severities 1..5, with
    the corruption named left of each row and the severity above each column (an unlabelled grid
    of 19 x 6 look-alike tiles cannot be read)."""
    from torchvision.utils import make_grid

    tiles = []
    for name in corruption_names:
        tiles.append(image)
        for severity in corruptions.SEVERITIES:
            tiles.append(corruptions.corrupt(image, name, severity, seed=seed, indices=[0], profile=profile))
    grid = make_grid(torch.stack(tiles), nrow=1 + len(corruptions.SEVERITIES), padding=GRID_PADDING, pad_value=255)
    return _labelled(grid, image.shape[-1], list(corruption_names))


GRID_PADDING = 2


def _labelled(grid: torch.Tensor, tile: int, rows: list[str]) -> torch.Tensor:
    """``grid`` on a white canvas with ``rows`` written on the left and clean / severity 1..5 on top."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.truetype(font_file(), size=max(10, min(16, tile // 8)))  # the plots' font
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    step = tile + GRID_PADDING

    def width(text: str) -> int:
        return int(draw.textlength(text, font=font))

    long_names = all(width(f"severity {s}") <= tile for s in corruptions.SEVERITIES)
    columns = ["clean"] + [f"severity {s}" if long_names else f"s{s}" for s in corruptions.SEVERITIES]
    height = int(font.getbbox("Ag")[3]) + 2 * GRID_PADDING
    left = max(width(name) for name in rows) + 3 * GRID_PADDING
    canvas = Image.new("RGB", (left + grid.shape[2], height + grid.shape[1]), "white")
    canvas.paste(Image.fromarray(grid.permute(1, 2, 0).numpy()), (left, height))
    pen = ImageDraw.Draw(canvas)
    for j, text in enumerate(columns):
        pen.text((left + GRID_PADDING + j * step + tile / 2, height / 2), text, fill="black", font=font, anchor="mm")
    for i, text in enumerate(rows):
        pen.text((left - GRID_PADDING, height + GRID_PADDING + i * step + tile / 2), text, fill="black", font=font,
                 anchor="rm")
    return torch.from_numpy(np.array(canvas)).permute(2, 0, 1).contiguous()

"""Fourier-basis sensitivity (Yin et al., "A Fourier Perspective on Model Robustness in Computer
Vision", NeurIPS 2019): the error of each model when images are perturbed along one 2-D Fourier
basis image, for every frequency of the input size.

Each frequency is one cell of the evaluation engine, so a Fourier run is stored, resumed, shown
and sharded over torchrun ranks exactly like ``evaluate``; only where the images come from
differs (:class:`FourierSource`). Definitions (also in the README):

- frequencies (i, j) are signed cycles per image, vertical and horizontal, i in
  ``[-(H // 2), (H - 1) // 2]``, j likewise; (0, 0) is the image mean.
- U(i, j)[m, n] = cos(t) - sin(t), t = 2 pi (i m / H + j n / W), scaled to unit L2 norm: the real
  part of the inverse DFT of a spectrum that is (1 + 1j) / 2 at (i, j) and (1 - 1j) / 2 at
  (-i, -j), as in the authors' released code, with (i, j) the pair's representative in the
  half-plane j > 0 (:func:`representative`); U(i, j) = U(-i, -j), so only the half-plane is
  evaluated (:func:`half_plane`).
- x' = clip(x + r * eps * U(i, j), 0, 1) per channel, on images in [0, 1], with a random sign r
  per image, channel and frequency: the perturbation of each channel has L2 norm eps.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .data import BUILTIN, balanced_subset, dataset_labels, is_prerendered
from .errors import UsageError
from .evaluation.engine import CorruptOnTheFly, EvalPlan, Shard
from .evaluation.run import (Models, check_engine_options, collect, load_models, open_for_models, pick_device,
                             run_folder, run_on_ranks, static_baseline)
from .evaluation.store import CLEAN, Cell
from .frequency_grid import half_plane, representative
from .io import atomic_write_text

#: Yin et al. (2019) perturb CIFAR-10 with Fourier basis noise of L2 norm 4 (images in [0, 1]).
DEFAULT_EPS = 4.0
SIGN_STREAM = "fourier"  # the corruption key of the per-image sign streams (corruptions.philox)
_PREFIX = "fourier_"


@functools.lru_cache(maxsize=64)
def fourier_basis(height: int, width: int, i: int, j: int) -> torch.Tensor:
    """U(i, j) = U(-i, -j): float32 (H, W) with unit L2 norm, the phase taken at the pair's
    representative (see the module docstring)."""
    i, j = representative(i, j, height, width)
    m = torch.arange(height, dtype=torch.float64).view(-1, 1)
    n = torch.arange(width, dtype=torch.float64).view(1, -1)
    t = 2 * math.pi * (i * m / height + j * n / width)
    u = torch.cos(t) - torch.sin(t)
    return (u / u.norm()).float()


def random_signs(seed: int, indices: np.ndarray, height: int, width: int) -> torch.Tensor:
    """int8 (N, 3, H, W): the sign r of each image, channel and frequency (i mod H, j mod W),
    drawn from the image's own stream, so it depends on (seed, index, frequency, channel) only."""
    from corruptions.philox import Streams

    words = Streams.for_images(seed, indices, SIGN_STREAM, 0).words(3 * height * width, 0)
    signs = (words >> 31).view(len(indices), 3, height, width)  # the top bit of each word
    return signs.mul_(2).sub_(1).to(torch.int8)


def perturb(images: torch.Tensor, i: int, j: int, eps: float, signs: torch.Tensor) -> torch.Tensor:
    """``clip(x + r * eps * U(i, j), 0, 1)`` of uint8 (B, 3, H, W) images with signs (B, 3), as
    float32 on the 0..255 scale that the models' preprocessing expects; not rounded to 8 bits,
    so each channel moves by exactly eps along U before clipping, as in the paper."""
    height, width = images.shape[-2:]
    basis = fourier_basis(height, width, i, j).to(images.device)
    scale = signs.to(images.device, torch.float32).mul_(255.0 * eps).view(-1, 3, 1, 1)
    return images.float().addcmul_(scale, basis).clamp_(0, 255)


def cell_for(i: int, j: int, eps_index: int) -> Cell:
    return (f"{_PREFIX}{i}_{j}", eps_index)


def frequency_of(cell: Cell) -> tuple[int, int]:
    i, j = cell[0][len(_PREFIX):].split("_")
    return int(i), int(j)


@dataclass
class FourierPlan(EvalPlan):
    """An evaluation whose cells are (frequency, eps) pairs, plus the clean cell."""

    eps: list[float] = field(default_factory=lambda: [DEFAULT_EPS])
    size: tuple[int, int] = (32, 32)
    stride: int = 1

    @property
    def cells(self) -> list[Cell]:
        basis = [cell_for(i, j, k) for k in range(len(self.eps)) for i, j in half_plane(*self.size, self.stride)]
        return [(CLEAN, 0), *basis]


@dataclass
class _SignedShard(Shard):
    signs: torch.Tensor | None = None


class FourierSource(CorruptOnTheFly):
    """Clean images decoded once per shard, with their random signs; each cell adds its basis image."""

    def __init__(self, dataset: Any, size: tuple[int, int], seed: int, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.size, self.seed = size, seed

    def shards(self, parts: Sequence[np.ndarray], device: torch.device) -> Iterator[Shard]:
        for shard in super().shards(parts, device):
            yield _SignedShard(shard.indices, shard.labels, shard.images, shard.skipped,
                               random_signs(self.seed, shard.indices, *self.size))

    def cell_batch(self, shard: Shard, start: int, stop: int, cell: Cell, plan: EvalPlan,
                   device: torch.device) -> tuple[torch.Tensor, np.ndarray | None]:
        images = shard.images[start:stop].to(device)
        if cell[0] == CLEAN:
            return images, None
        i, j = frequency_of(cell)
        height, width = self.size
        signs = shard.signs[start:stop, :, i % height, j % width]
        return perturb(images, i, j, plan.eps[cell[1]], signs), None


@dataclass
class FourierResults:
    """A Fourier run's tidy table, one row per (model, i, j, eps) with n and error (a fraction);
    the rows with eps 0 (i = j = 0) are the clean images. ``write_reports`` writes fourier.csv
    and the heat maps."""

    table: pd.DataFrame
    size: tuple[int, int]
    stride: int
    baseline: str  # the model the difference maps subtract
    run_dir: Path | None = None

    def write_reports(self, folder: str | Path) -> None:
        from .fourier_plots import plot_heatmaps

        folder = Path(folder)
        atomic_write_text(folder / "fourier.csv", self.table.to_csv(index=False, float_format="%.6g"))
        plot_heatmaps(self.table, self.size, self.stride, self.baseline, folder)


def fourier_heatmap(models: Models = None, dataset: Any = BUILTIN, *, weights: str | None = None,
                    eps: float | list[float] = DEFAULT_EPS, stride: int = 1, limit: int | None = None,
                    split: str = "test", seed: int = 0, baseline: str | None = None, input_size: int | None = None,
                    mean: tuple[float, float, float] | None = None, std: tuple[float, float, float] | None = None,
                    batch_size: int = 128,
                    workers: int = 0, shard_size: int | None = None, device: str = "auto", amp: bool = False,
                    on_bad_image: str = "fail", out: str | Path | bool | None = None,
                    progress: bool = True) -> FourierResults | None:
    """Error of each model under every Fourier basis perturbation of the input size (see the
    module docstring); returns :class:`FourierResults` (None on ranks > 0 under torchrun).

    ``models`` (names or ``torch.nn.Module`` objects, with ``input_size``, ``mean`` and ``std``),
    ``dataset``, ``out`` and the other options are those of :func:`robustbench_bivol.evaluate`;
    ``eps`` is one L2 norm per channel or several; ``stride``
    evaluates every stride-th frequency along each axis; ``baseline`` is the model the difference
    maps subtract (default: the static model, else the first).
    """
    dataset = str(dataset) if isinstance(dataset, Path) else dataset
    eps_list = [float(e) for e in (eps if isinstance(eps, (list, tuple)) else [eps])]
    if not eps_list or min(eps_list) <= 0:
        raise UsageError(f"--eps must be > 0, got {eps}")
    if stride < 1:
        raise UsageError(f"--stride must be >= 1, got {stride}")
    check_engine_options(batch_size, workers, shard_size, on_bad_image)
    device = pick_device(device)
    entries = load_models(models, weights, dataset, baseline=baseline, input_size=input_size, mean=mean, std=std)
    keys = [entry.name for entry in entries]
    data = open_for_models(dataset, entries, split=split, seed=seed)
    if is_prerendered(data):
        raise UsageError("fourier perturbs clean images: give a clean dataset, not a pre-rendered one")
    size = (entries[0].meta.input_size,) * 2
    plan = FourierPlan(dataset_name=data.name, indices=balanced_subset(dataset_labels(data), limit),
                       corruption_names=[], severities=[], seed=seed, eps=eps_list, size=size, stride=stride,
                       extra_config={"kind": "fourier", "eps": eps_list, "stride": stride, "size": list(size),
                                     "basis": "yin2019: cos - sin, unit L2 norm per channel"},
                       **({} if shard_size is None else {"shard_size": shard_size}))
    run_dir = run_folder(out, dataset, keys, limit, kind="fourier")
    source = FourierSource(data, size, seed, on_bad_image=on_bad_image, workers=workers)
    store = run_on_ranks(plan, entries, source, run_dir, device, batch_size=batch_size, amp=amp, progress=progress)
    if store is None:  # rank 0 alone holds the results
        return None
    counts, _, _ = collect(store, plan.cells, len(plan.shards), keys, plan.indices)
    results = FourierResults(_tidy(counts, eps_list), size, stride, baseline or static_baseline(entries) or keys[0],
                             run_dir)
    if run_dir:
        results.write_reports(run_dir)
    return results


def _tidy(counts: pd.DataFrame, eps: list[float]) -> pd.DataFrame:
    rows = []
    for row in counts.itertuples(index=False):
        clean = row.corruption == CLEAN
        i, j = (0, 0) if clean else frequency_of((row.corruption, row.severity))
        rows.append({"model": row.model, "i": i, "j": j, "eps": 0.0 if clean else eps[row.severity],
                     "n": row.n, "error": row.error})
    return pd.DataFrame(rows, columns=["model", "i", "j", "eps", "n", "error"])

"""``bivol-robust sweep``: accuracy against a continuous corruption parameter.

The five severities of a corruption are five points of a continuous parameter; a sweep evaluates
a grid of it, e.g. Gaussian noise sigma from 0 to 0.5. Each op of :mod:`corruptions.ops` is called
with the custom parameter ``c``. Every image keeps its own random stream, seeded by (seed, sample
index, corruption) like :func:`corruptions.corrupt` (with severity key 0), and the same stream for
every parameter value: the noise pattern is fixed and only its strength changes along the curve
(common random numbers), so curves are smooth and models are compared on identical inputs.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .errors import UsageError
from .io import atomic_write_text

#: Corruptions whose op takes one scalar parameter, with its meaning and the clean value.
SWEEPABLE: dict[str, tuple[str, float | None]] = {
    "gaussian_noise": ("sigma", 0.0),
    "shot_noise": ("photons at full intensity", None),  # clean is the limit of infinitely many photons
    "impulse_noise": ("amount (flip probability)", 0.0),
    "speckle_noise": ("sigma", 0.0),
}
SWEEP_SEVERITY_KEY = 0


def parameter_grid(corruption: str, maximum: float, steps: int, minimum: float | None = None) -> np.ndarray:
    if corruption not in SWEEPABLE:
        raise UsageError(f"--corruption {corruption} cannot be swept (choose from {', '.join(SWEEPABLE)})")
    if steps < 2:
        raise UsageError("--steps must be at least 2")
    if minimum is None:
        minimum = 1.0 if corruption == "shot_noise" else 0.0
    if corruption == "shot_noise" and minimum <= 0:
        raise UsageError("shot_noise counts photons: --min must be > 0")
    if minimum < 0 or maximum <= minimum:
        raise UsageError(f"need 0 <= --min < --max, got {minimum} and {maximum}")
    if corruption == "impulse_noise" and maximum > 1:
        raise UsageError("impulse_noise amount is a probability: --max must be <= 1")
    return np.linspace(minimum, maximum, steps)


def sweep_images(images: torch.Tensor, indices: Sequence[int], corruption: str, c: float, seed: int = 0) -> torch.Tensor:
    """uint8 (B,3,H,W) images corrupted with the op of ``corruption`` at parameter ``c``."""
    from corruptions.api import to_uint8
    from corruptions.ops import IMPLEMENTATIONS
    from corruptions.seeding import torch_generator

    if SWEEPABLE[corruption][1] is not None and c == SWEEPABLE[corruption][1]:
        return images
    generators = [torch_generator(seed, int(i), corruption, SWEEP_SEVERITY_KEY) for i in indices]
    with torch.no_grad():
        y = IMPLEMENTATIONS[corruption].fn(images.to(torch.float32) / 255, float(c), generators)
    return to_uint8(y)


def run_sweep(entries: Sequence[Any], dataset: Any, indices: np.ndarray, corruption: str, params: np.ndarray, *,
              seed: int = 0, batch_size: int = 128, device: str = "cpu", workers: int = 0,
              on_bad_image: str = "fail", progress: bool = True) -> tuple[pd.DataFrame, int]:
    """Counts per (model, parameter); returns the table and the number of skipped images."""
    from .evaluation.engine import CorruptOnTheFly

    device_ = torch.device(device)
    for entry in entries:
        entry.prepare(device_)
    source = CorruptOnTheFly(dataset, on_bad_image=on_bad_image, workers=workers)
    correct = {(e.name, i): 0 for e in entries for i in range(len(params))}
    n, skipped = 0, 0
    chunk = max(batch_size, 512)
    with tqdm(total=len(indices) * len(params), unit="img", disable=not progress, desc="sweep",
              dynamic_ncols=True) as bar:
        for first in range(0, len(indices), chunk):
            shard = source.load(indices[first:first + chunk])
            skipped += len(shard.skipped)
            n += len(shard.indices)
            bar.update(len(shard.skipped) * len(params))
            for start in range(0, len(shard.indices), batch_size):
                clean = shard.images[start:start + batch_size]
                labels = shard.labels[start:start + batch_size].to(device_)
                batch_indices = shard.indices[start:start + batch_size]
                for i, c in enumerate(params):
                    images = sweep_images(clean, batch_indices, corruption, float(c), seed).to(device_)
                    for entry in entries:
                        correct[(entry.name, i)] += int((entry.predict(images) == labels).sum())
                    bar.update(len(clean))
    rows = [{"model": e.name, "parameter": float(c), "n": n, "correct": correct[(e.name, i)],
             "accuracy": correct[(e.name, i)] / n if n else float("nan")}
            for e in entries for i, c in enumerate(params)]
    return pd.DataFrame(rows, columns=["model", "parameter", "n", "correct", "accuracy"]), skipped


def plot_sweep(table: pd.DataFrame, corruption: str, out: Path) -> None:
    """Accuracy against the parameter, one line per model: sweep.png and sweep.svg."""
    from .reports import _figure, _save

    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    for model, rows in table.groupby("model", sort=False):
        ax.plot(rows["parameter"], 100.0 * rows["accuracy"], marker="o", markersize=3, label=model)
    if corruption == "shot_noise":
        ax.set_xscale("log")
    ax.set_xlabel(f"{corruption}: {SWEEPABLE[corruption][0]}")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{corruption} sweep (n = {int(table['n'].iloc[0]) if len(table) else 0})", fontsize="small")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, out, "sweep")


def sweep_command(*, models: tuple[str, ...], default_weights: str | None, dataset: str, split: str,
                  limit: int | None, corruption: str, maximum: float, minimum: float | None, steps: int, seed: int,
                  batch_size: int, workers: int, device: str, out: str | None, progress: bool,
                  on_bad_image: str = "fail") -> Path:
    from .data import balanced_subset, dataset_labels, is_prerendered
    from .evaluation.run import load_models, open_for_models, pick_device

    params = parameter_grid(corruption, maximum, steps, minimum)
    device = pick_device(device)
    entries = load_models(models, default_weights, dataset)
    data = open_for_models(dataset, entries, split=split, seed=seed)
    if is_prerendered(data):
        raise UsageError("sweep corrupts clean images: give a clean dataset, not a pre-rendered one")
    indices = balanced_subset(dataset_labels(data), limit)
    table, skipped = run_sweep(entries, data, indices, corruption, params, seed=seed, batch_size=batch_size,
                               device=device, workers=workers, on_bad_image=on_bad_image, progress=progress)
    names = "+".join(e.name for e in entries)
    target = Path(out) if out else Path("runs") / re.sub(r"[^A-Za-z0-9_.-]+", "_", f"sweep-{corruption}-{names}")[:120]
    target.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target / "sweep.csv", table.to_csv(index=False, float_format="%.6g"))
    plot_sweep(table, corruption, target)
    if skipped:
        tqdm.write(f"skipped {skipped} unreadable image(s)")
    return target

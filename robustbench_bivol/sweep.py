"""``bivol-robust sweep``: accuracy against a continuous corruption parameter.

The five severities of a corruption are five points of a continuous parameter; a sweep evaluates
a grid of it, e.g. Gaussian noise sigma from 0 to 0.5. Each op of :mod:`corruptions.ops` is called
with the custom parameter ``c``. Every image keeps its own random stream, seeded by (seed, sample
index, corruption) like :func:`corruptions.corrupt` (with severity key 0), and the same stream for
every parameter value: the noise pattern is fixed and only its strength changes along the curve
(common random numbers), so curves are smooth and models are compared on identical inputs.

Besides the noise ops, three band-limited Gaussian noises (:mod:`corruptions.ops.bandlimited`)
sweep their RMS in a low, middle and high frequency band at matched energy; ``band_noise`` names
all three, so one run plots each model's accuracy against noise energy per band.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .errors import UsageError
from .io import atomic_write_text
from .metrics import wilson_interval
from .plotstyle import figure, legend, save, styled

#: Corruptions whose op takes one scalar parameter, with its meaning and the clean value.
SWEEPABLE: dict[str, tuple[str, float | None]] = {
    "gaussian_noise": ("sigma", 0.0),
    "shot_noise": ("photons at full intensity", None),  # clean is the limit of infinitely many photons
    "impulse_noise": ("amount (flip probability)", 0.0),
    "speckle_noise": ("sigma", 0.0),
    **{f"band_noise_{band}": (f"{band}-band RMS (L2 norm / sqrt(3HW))", 0.0) for band in ("low", "mid", "high")},
}
#: Names that stand for several sweepable corruptions.
SWEEP_GROUPS: dict[str, tuple[str, ...]] = {"band_noise": ("band_noise_low", "band_noise_mid", "band_noise_high")}
SWEEP_SEVERITY_KEY = 0


def sweep_corruptions(spec: str) -> list[str]:
    """``"band_noise"`` or comma-separated names as a list of sweepable corruptions."""
    names = [name for item in spec.split(",") if item.strip()
             for name in SWEEP_GROUPS.get(item.strip(), (item.strip(),))]
    bad = [name for name in names if name not in SWEEPABLE]
    if bad or not names:
        raise UsageError(f"--corruption {bad[0] if bad else spec!r} cannot be swept "
                         f"(choose from {', '.join([*SWEEPABLE, *SWEEP_GROUPS])})")
    return list(dict.fromkeys(names))


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


def _op(corruption: str) -> Callable[[torch.Tensor, float, Any], torch.Tensor]:
    from corruptions.ops import IMPLEMENTATIONS
    from corruptions.ops.bandlimited import band_noise

    if corruption.startswith("band_noise_"):
        return functools.partial(band_noise, band=corruption.removeprefix("band_noise_"))
    return IMPLEMENTATIONS[corruption].fn


def sweep_images(images: torch.Tensor, indices: Sequence[int], corruption: str, c: float, seed: int = 0) -> torch.Tensor:
    """uint8 (B,3,H,W) images corrupted with the op of ``corruption`` at parameter ``c``."""
    from corruptions.api import to_uint8
    from corruptions.philox import Streams

    if SWEEPABLE[corruption][1] is not None and c == SWEEPABLE[corruption][1]:
        return images
    streams = Streams.for_images(seed, indices, corruption, SWEEP_SEVERITY_KEY)
    with torch.no_grad():
        y = _op(corruption)(images.to(torch.float32) / 255, float(c), streams)
    return to_uint8(y)


def run_sweep(entries: Sequence[Any], dataset: Any, indices: np.ndarray, grids: dict[str, np.ndarray], *,
              seed: int = 0, batch_size: int = 128, device: str = "cpu", workers: int = 0,
              on_bad_image: str = "fail", progress: bool = True) -> tuple[pd.DataFrame, int]:
    """Counts per (corruption, model, parameter) for the parameter grid of each corruption;
    returns the table and the number of skipped images."""
    from .evaluation.engine import CorruptOnTheFly

    device_ = torch.device(device)
    for entry in entries:
        entry.prepare(device_)
    source = CorruptOnTheFly(dataset, on_bad_image=on_bad_image, workers=workers)
    points = [(corruption, float(c)) for corruption, params in grids.items() for c in params]
    correct = {(e.name, point): 0 for e in entries for point in points}
    n, skipped = 0, 0
    chunk = max(batch_size, 512)
    with tqdm(total=len(indices) * len(points), unit="img", disable=not progress, desc="sweep",
              dynamic_ncols=True) as bar:
        for first in range(0, len(indices), chunk):
            shard = source.load(indices[first:first + chunk])
            skipped += len(shard.skipped)
            n += len(shard.indices)
            bar.update(len(shard.skipped) * len(points))
            for start in range(0, len(shard.indices), batch_size):
                clean = shard.images[start:start + batch_size]
                labels = shard.labels[start:start + batch_size].to(device_)
                batch_indices = shard.indices[start:start + batch_size]
                for corruption, c in points:
                    images = sweep_images(clean, batch_indices, corruption, c, seed).to(device_)
                    for entry in entries:
                        correct[(entry.name, (corruption, c))] += int((entry.predict(images) == labels).sum())
                    bar.update(len(clean))
    rows = [{"corruption": corruption, "model": e.name, "parameter": c, "n": n,
             "correct": correct[(e.name, (corruption, c))]}
            for corruption, c in points for e in entries]
    table = pd.DataFrame(rows, columns=["corruption", "model", "parameter", "n", "correct"])
    table["accuracy"] = table["correct"] / table["n"].where(table["n"] > 0)
    table["accuracy_low"], table["accuracy_high"] = wilson_interval(table["correct"], table["n"])
    return table, skipped


@styled
def plot_sweep(table: pd.DataFrame, out: Path) -> None:
    """Accuracy against the parameter, one panel per corruption and one line per model with its
    95% Wilson band, on a shared accuracy axis: sweep.png and sweep.svg."""
    corruptions = list(dict.fromkeys(table["corruption"]))
    fig = figure(1.0 + 4.5 * len(corruptions), 4.0)
    axes = fig.subplots(1, len(corruptions), sharey=True, squeeze=False)[0]
    for ax, corruption in zip(axes, corruptions):
        for model, rows in table[table["corruption"] == corruption].groupby("model", sort=False):
            line, = ax.plot(rows["parameter"], 100.0 * rows["accuracy"], marker="o", markersize=3, label=model)
            ax.fill_between(rows["parameter"], 100.0 * rows["accuracy_low"], 100.0 * rows["accuracy_high"],
                            color=line.get_color(), alpha=0.15, linewidth=0)
        if corruption == "shot_noise":
            ax.set_xscale("log")
        ax.set_xlabel(f"{corruption}: {SWEEPABLE[corruption][0]}")
        ax.set_title(f"{corruption} sweep (n = {int(table['n'].iloc[0]) if len(table) else 0})")
    axes[0].set_ylabel("top-1 accuracy (%)")
    legend(axes[-1])
    save(fig, out, "sweep")


def sweep_command(*, models: tuple[str, ...], default_weights: str | None, dataset: str, split: str,
                  limit: int | None, corruption: str, maximum: float, minimum: float | None, steps: int, seed: int,
                  batch_size: int, workers: int, device: str, out: str | None, progress: bool,
                  on_bad_image: str = "fail") -> Path:
    from .data import balanced_subset, dataset_labels, is_prerendered
    from .evaluation.run import load_models, open_for_models, pick_device

    grids = {name: parameter_grid(name, maximum, steps, minimum) for name in sweep_corruptions(corruption)}
    device = pick_device(device)
    entries = load_models(models, default_weights, dataset)
    data = open_for_models(dataset, entries, split=split, seed=seed)
    if is_prerendered(data):
        raise UsageError("sweep corrupts clean images: give a clean dataset, not a pre-rendered one")
    indices = balanced_subset(dataset_labels(data), limit)
    table, skipped = run_sweep(entries, data, indices, grids, seed=seed, batch_size=batch_size,
                               device=device, workers=workers, on_bad_image=on_bad_image, progress=progress)
    names = "+".join(e.name for e in entries)
    target = Path(out) if out else Path("runs") / re.sub(r"[^A-Za-z0-9_.-]+", "_", f"sweep-{corruption}-{names}")[:120]
    target.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target / "sweep.csv", table.to_csv(index=False, float_format="%.6g"))
    plot_sweep(table, target)
    if skipped:
        tqdm.write(f"skipped {skipped} unreadable image(s)")
    return target

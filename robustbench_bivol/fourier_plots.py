"""Fourier heat maps: the error under each basis perturbation over the frequency plane, low
frequencies in the centre as in Yin et al. (2019).

The measured half-plane is mirrored to the full plane (U(i, j) = U(-i, -j)). Every model's map
shares one colour scale, from the lowest to the highest error of any map, so colours compare
across models; the difference maps (model minus baseline) share one symmetric scale.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .frequency_grid import conjugate, frequencies
from .plotstyle import figure, save, styled

PANEL = 2.6  # inches per heat map
Panel = tuple[np.ndarray, list[int], list[int], str]  # grid, its row and column frequencies, title


def error_grid(rows: pd.DataFrame, size: tuple[int, int], stride: int) -> tuple[np.ndarray, list[int], list[int]]:
    """The errors of one model and eps as a full-plane matrix [i, j] over the strided frequencies
    (NaN where not measured), with the frequencies of its rows and columns."""
    height, width = size
    fi = [f for f in frequencies(height) if f % stride == 0]
    fj = [f for f in frequencies(width) if f % stride == 0]
    row_of, col_of = {f: k for k, f in enumerate(fi)}, {f: k for k, f in enumerate(fj)}
    grid = np.full((len(fi), len(fj)), np.nan)
    for i, j, error in zip(rows["i"], rows["j"], rows["error"]):
        for a, b in ((i, j), conjugate(i, j, height, width)):
            grid[row_of[a], col_of[b]] = error
    return grid, fi, fj


def _panel(ax: Any, grid: np.ndarray, fi: list[int], fj: list[int], title: str, **style: Any) -> Any:
    step_i = fi[1] - fi[0] if len(fi) > 1 else 1
    step_j = fj[1] - fj[0] if len(fj) > 1 else 1
    extent = (fj[0] - step_j / 2, fj[-1] + step_j / 2, fi[0] - step_i / 2, fi[-1] + step_i / 2)
    image = ax.imshow(grid, origin="lower", extent=extent, interpolation="nearest", **style)
    ax.set_title(title)
    ax.set_xlabel("horizontal frequency j")
    ax.set_ylabel("vertical frequency i")
    ax.grid(False)  # the style's grid lines would cross the map
    return image


def _file_stem(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", model)


def _save_grid(folder: Path, stem: str, panels: list[list[Panel]], style: dict[str, Any], label: str) -> None:
    """One figure of heat maps (rows x columns of panels) with one colour bar."""
    fig = figure(PANEL * len(panels[0]) + 0.8, PANEL * len(panels))
    axes = fig.subplots(len(panels), len(panels[0]), squeeze=False)
    for row, ax_row in zip(panels, axes):
        for (grid, fi, fj, title), ax in zip(row, ax_row):
            image = _panel(ax, grid, fi, fj, title, **style)
    fig.colorbar(image, ax=axes, shrink=0.8, label=label)
    save(fig, folder, stem)


@styled
def plot_heatmaps(table: pd.DataFrame, size: tuple[int, int], stride: int, baseline: str, folder: Path) -> None:
    """fourier.{png,svg} (every model, one row per eps), fourier-<model>.{png,svg} (one model),
    and fourier-diff.{png,svg} (each other model minus ``baseline``)."""
    perturbed = table[table["eps"] > 0]
    if perturbed.empty:
        return
    models = list(dict.fromkeys(perturbed["model"]))
    eps_values = sorted(perturbed["eps"].unique())
    clean = table[table["eps"] == 0].set_index("model")["error"].to_dict()
    errors: dict[tuple[str, float], Panel] = {}
    for model in models:
        for eps in eps_values:
            grid, fi, fj = error_grid(perturbed[(perturbed["model"] == model) & (perturbed["eps"] == eps)],
                                      size, stride)
            clean_part = f", clean {100 * clean[model]:.1f}%" if model in clean else ""
            errors[(model, eps)] = (grid, fi, fj, f"{model}\neps {eps:g}{clean_part}")
    style = {"cmap": "viridis", "vmin": min(float(np.nanmin(p[0])) for p in errors.values()),
             "vmax": max(float(np.nanmax(p[0])) for p in errors.values())}
    _save_grid(folder, "fourier", [[errors[(m, e)] for m in models] for e in eps_values], style, "top-1 error")
    for model in models:
        _save_grid(folder, f"fourier-{_file_stem(model)}", [[errors[(model, e)]] for e in eps_values], style,
                   "top-1 error")
    others = [m for m in models if m != baseline]
    if not others:
        return
    diffs = {(m, e): (errors[(m, e)][0] - errors[(baseline, e)][0], *errors[(m, e)][1:3],
                      f"{m} - {baseline}\neps {e:g}") for m in others for e in eps_values}
    span = max(float(np.nanmax(np.abs(p[0]))) for p in diffs.values()) or 1e-3
    _save_grid(folder, "fourier-diff", [[diffs[(m, e)] for m in others] for e in eps_values],
               {"cmap": "RdBu_r", "vmin": -span, "vmax": span}, f"error difference from {baseline}")

"""One figure style for every plot the toolkit writes, so figures read alike side by side.

The style is applied per figure through :func:`styled` (a matplotlib ``rc_context`` around the
function that draws), never to matplotlib's global settings: a notebook importing the package
keeps its own style. Figures live on the Agg canvas, outside pyplot (no GUI backend, no state).
"""
from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from cycler import cycler

from .io import atomic_write_bytes

#: Okabe-Ito colours: distinguishable with the common colour-vision deficiencies and in grey.
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
FORMATS = ("png", "svg")
DPI = 120

STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",  # shipped with matplotlib: the same glyphs on every machine
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "axes.prop_cycle": cycler(color=COLOURS),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.grid.axis": "y",
    "axes.axisbelow": True,
    "grid.color": "#DDDDDD",
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.5,
    "lines.markersize": 4,
    "errorbar.capsize": 2,
    "image.cmap": "viridis",
    "svg.fonttype": "none",  # text stays text in SVG: searchable and sharp in report.html
    "svg.hashsalt": "robustbench_bivol",  # stable element ids: a rerun writes the same SVG
}

F = TypeVar("F", bound=Callable[..., Any])


def font_file() -> str:
    """The style's font as a file, for figures drawn without matplotlib (the ``show`` grid)."""
    from matplotlib import font_manager

    return font_manager.findfont(font_manager.FontProperties(family=STYLE["font.family"]), fallback_to_default=True)


def styled(draw: F) -> F:
    """Run ``draw`` (a function that builds and saves figures) under :data:`STYLE`."""
    import matplotlib

    @functools.wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def figure(width: float, height: float) -> Any:
    """A Figure on the Agg canvas with constrained layout (no label overlapping a title)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Any, folder: Path, stem: str) -> None:
    """Write ``folder/stem.png`` and ``.svg`` atomically."""
    for fmt in FORMATS:
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=DPI, bbox_inches="tight", metadata=_metadata(fmt))
        atomic_write_bytes(Path(folder) / f"{stem}.{fmt}", buffer.getvalue())


def _metadata(fmt: str) -> dict[str, Any]:
    """No creation date in the files: a rerun of the same figures writes the same bytes."""
    return {"Date": None} if fmt == "svg" else {}


def interval_bars(ax: Any, values: Any, low: Any, high: Any, groups: Sequence[str], models: Sequence[str],
                  ylabel: str) -> None:
    """Bars grouped by row of ``values`` (one group per x tick), one colour per column (model),
    each with its 95% interval ``[low, high]`` (same shape; NaN where none is known: no
    interval is drawn, and the legend says so)."""
    values, low, high = (np.asarray(a, dtype=float) for a in (values, low, high))
    columns = values.shape[1]
    x = np.arange(values.shape[0])
    width = 0.8 / max(columns, 1)
    for i, label in enumerate(models):
        centre = x + (i - (columns - 1) / 2) * width
        ax.bar(centre, values[:, i], width, label=label)
        known = np.isfinite(low[:, i]) & np.isfinite(high[:, i])
        if known.any():
            ax.errorbar(centre[known], values[known, i],
                        yerr=[values[known, i] - low[known, i], high[known, i] - values[known, i]],
                        fmt="none", ecolor="#333333", elinewidth=0.8)
    ax.set_xticks(x, list(groups), rotation=45, ha="right")
    ax.set_ylabel(ylabel)
    caption = "error bars: 95% intervals" if np.isfinite(low).any() else "no intervals (per-image results absent)"
    legend(ax, caption)


def legend(ax: Any, title: str | None = None) -> None:
    """``ax``'s legend above the whole figure, where it hides no data."""
    handles, labels = ax.get_legend_handles_labels()
    ax.figure.legend(handles, labels, title=title, loc="outside upper center", ncols=min(len(labels), 5))

"""Training curves: train loss and test accuracy against epoch, one line per run, to show that
every model was trained until its training loss plateaued (the CIFAR-10 study's criterion).

Reads the ``log.csv`` that ``bivol-robust train`` writes into its folder (epoch, lr, train_loss,
train_acc, test_acc, seconds); a CSV file in that format is read as it is.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .errors import UsageError
from .plotstyle import figure, legend, save, styled

LOG = "log.csv"
COLUMNS = ("epoch", "train_loss", "test_acc")


def read_log(path: str | Path) -> tuple[str, pd.DataFrame]:
    """``(label, log)`` of a training folder (label: the folder's name) or of a log CSV (its stem)."""
    path = Path(path)
    target = path / LOG if path.is_dir() else path
    if not target.is_file():
        raise UsageError(f"no training log at {target} (give a `bivol-robust train` folder or its log.csv)")
    log = pd.read_csv(target)
    missing = [c for c in COLUMNS if c not in log.columns]
    if missing or log.empty:
        raise UsageError(f"{target} is not a training log: {'no rows' if log.empty else 'no ' + ', '.join(missing)}")
    return (path.name if path.is_dir() else path.stem), log


@styled
def plot_curves(runs: Sequence[str | Path], out: str | Path) -> list[Path]:
    """Write ``out`` as PNG and SVG (same stem): train loss (log scale, where a plateau shows as a
    flat line) and test accuracy against epoch, one colour per run; returns the files."""
    from matplotlib.ticker import FormatStrFormatter

    logs = [read_log(run) for run in runs]
    labels = [label for label, _ in logs]
    if len(set(labels)) != len(labels):
        raise UsageError(f"two runs have the same name ({', '.join(labels)}): their lines could not be told apart")
    fig = figure(9.0, 3.6)
    loss, accuracy = fig.subplots(1, 2)
    for label, log in logs:
        loss.plot(log["epoch"], log["train_loss"], marker="o", label=label)
        accuracy.plot(log["epoch"], 100.0 * log["test_acc"], marker="o", label=label)
    loss.set_yscale("log")
    for axis in (loss.yaxis.set_major_formatter, loss.yaxis.set_minor_formatter):
        axis(FormatStrFormatter("%.2g"))  # numbers on the minor ticks too: a loss spans under a decade
    loss.set(xlabel="epoch", ylabel="training loss (log scale)", title="training loss")
    accuracy.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    legend(loss)
    out = Path(out)
    save(fig, out.parent, out.stem)
    return [out.parent / f"{out.stem}.{fmt}" for fmt in ("png", "svg")]

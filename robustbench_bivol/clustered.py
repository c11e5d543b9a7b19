"""Tests and intervals against the baseline that treat the image, not the cell, as the unit.

An image's 75 corrupted copies (15 corruptions x 5 severities) share its difficulty, so its
75 (model, baseline) pairs are not independent: pooling them as if they were (as a McNemar test
over all cells does) makes p-values absurdly small. Here every headline difference model -
baseline is written as a function of per-image column means, and both the bootstrap (resample
images with replacement) and the sign-flip test (swap model and baseline on whole images) act on
whole images, so the correlation inside an image is kept.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from corruptions.registry import BENCHMARK, GROUPS

from . import metrics as M

BOOTSTRAP_REPLICATES = 2000
SIGN_FLIPS = 10000
SEED = 0
_CHUNK = 200  # replicates drawn at once: a (chunk x images) matrix, 16 MB at 10 000 images

#: Headline metrics, in table order, with the metric labels of :mod:`metrics`.
HEADLINE = ("clean", "mean", "noise", "mce")


def headline_label(key: str, baseline: str) -> str:
    return {"clean": M.LABEL_CLEAN, "mean": M.LABEL_MEAN_ERROR, "noise": M.label_group("noise"),
            "mce": M.label_mce_baseline(baseline)}[key]


@dataclass(frozen=True)
class Paired:
    """A difference model - baseline that is a function of the means of per-image columns."""

    columns: np.ndarray  # (images, m)
    difference: Callable[[np.ndarray], np.ndarray]  # column means (..., m) -> difference (...)
    linear: bool  # a single column holding the per-image difference itself (a sign-flip test applies)

    def estimate(self) -> float:
        return float(self.difference(self.columns.mean(axis=0)))


def _wrong_sum(per_sample: M.PerSample, model: str, weights: dict[tuple[str, int], float]) -> np.ndarray | None:
    """Per image, sum over cells of weight x wrong; None if a cell has no per-sample result."""
    total: np.ndarray | None = None
    for cell, weight in weights.items():
        correct = per_sample.get((model, *cell))
        if correct is None or (total is not None and len(correct) != len(total)):
            return None
        term = weight * (~np.asarray(correct, dtype=bool))
        total = term if total is None else total + term
    return total


def _linear(per_sample: M.PerSample, model: str, baseline: str,
            weights: dict[tuple[str, int], float]) -> Paired | None:
    mine, base = _wrong_sum(per_sample, model, weights), _wrong_sum(per_sample, baseline, weights)
    if mine is None or base is None or len(mine) != len(base):
        return None
    return Paired((mine - base)[:, None], lambda means: means[..., 0], linear=True)


def _mce(tidy: pd.DataFrame, per_sample: M.PerSample, model: str, baseline: str) -> Paired | None:
    """mCE_model / mCE_baseline - 1 = mean_c (sum_s A_cs / sum_s B_cs) - 1 with per-image columns
    a_c = the model's wrong count over c's severities, b_c = the baseline's; the baseline's own
    mCE is exactly 100 whatever the resample."""
    try:
        ce = M.baseline_ce(tidy, model, baseline)
    except M.IncompleteResultsError:
        return None
    cells = M.cell_errors(tidy, model)
    names = [c for c, v in ce.items() if not np.isnan(v)]
    columns = []
    for who in (model, baseline):
        for c in names:
            column = _wrong_sum(per_sample, who, {(c, s): 1.0 for s in M.severities_of(cells, c)})
            if column is None or (columns and len(column) != len(columns[0])):
                return None
            columns.append(column)
    if not names:
        return None
    k = len(names)

    def difference(means: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.mean(means[..., :k] / means[..., k:], axis=-1) - 1.0

    return Paired(np.column_stack(columns), difference, linear=False)


def paired_statistics(tidy: pd.DataFrame, per_sample: M.PerSample, model: str, baseline: str) -> dict[str, Paired]:
    """The headline differences model - baseline that the per-sample results allow, keyed as
    :data:`HEADLINE`. Means use the model's cells, read on the baseline too, so both sides
    average the same cells."""
    cells = M.cell_errors(tidy, model)
    weights = {"clean": {(M.CLEAN, 0): 1.0} if (M.CLEAN, 0) in cells else {},
               "mean": M.unnormalised_weights(cells, BENCHMARK),
               "noise": M.unnormalised_weights(cells, GROUPS["noise"])}
    out = {key: _linear(per_sample, model, baseline, w) for key, w in weights.items() if w}
    out["mce"] = _mce(tidy, per_sample, model, baseline)
    return {key: out[key] for key in HEADLINE if out.get(key) is not None}


# ----------------------------------------------------------------------------- resampling

def bootstrap_means(columns: np.ndarray, replicates: int = BOOTSTRAP_REPLICATES, seed: int = SEED) -> np.ndarray:
    """Column means over ``replicates`` resamples of the rows (images) with replacement,
    shape (replicates, columns). The resamples depend only on (rows, replicates, seed), so two
    calls on columns of the same images draw the same images (their means agree up to the float
    rounding of the matrix product, which BLAS may order differently for another column count)."""
    n = len(columns)
    rng = np.random.default_rng(seed)
    out = np.empty((replicates, columns.shape[1]))
    for start in range(0, replicates, _CHUNK):
        rows = min(_CHUNK, replicates - start)
        picks = rng.integers(0, n, size=(rows, n)) + n * np.arange(rows)[:, None]
        counts = np.bincount(picks.ravel(), minlength=rows * n).reshape(rows, n)
        out[start:start + rows] = counts @ columns / n
    return out


def bootstrap_differences(stats: dict, replicates: int = BOOTSTRAP_REPLICATES, seed: int = SEED) -> dict:
    """Each statistic's difference on the same ``replicates`` image resamples: {key: (replicates,)}.
    All statistics must cover the same images; one resampling serves them all."""
    keys = list(stats)
    widths = np.cumsum([0] + [stats[k].columns.shape[1] for k in keys])
    means = bootstrap_means(np.column_stack([stats[k].columns for k in keys]), replicates, seed)
    return {k: stats[k].difference(means[:, widths[i]:widths[i + 1]]) for i, k in enumerate(keys)}


def percentile_interval(replicates: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval of bootstrap replicates (NaN replicates, from a resample whose
    baseline made no error, are left out)."""
    low, high = np.nanpercentile(replicates, [2.5, 97.5])
    return float(low), float(high)


def sign_flip_p(differences: np.ndarray, flips: int = SIGN_FLIPS, seed: int = SEED) -> np.ndarray:
    """Two-sided Monte Carlo p-value of H0 'model and baseline are exchangeable on each image',
    per column of per-image differences (images, k): the sum of the differences is compared with
    its sums under random sign flips of whole images; p = (1 + #{|T*| >= |T|}) / (1 + flips),
    so it never reaches 0 and its resolution is 1 / (1 + flips)."""
    d = np.asarray(differences, dtype=float)
    observed = np.abs(d.sum(axis=0))
    tolerance = 1e-9 * np.abs(d).sum(axis=0)  # floating-point ties count as ties
    rng = np.random.default_rng(seed)
    exceed = np.zeros(d.shape[1])
    for start in range(0, flips, _CHUNK):
        rows = min(_CHUNK, flips - start)
        signs = 2.0 * rng.integers(0, 2, size=(rows, len(d))) - 1.0
        exceed += (np.abs(signs @ d) >= observed - tolerance).sum(axis=0)
    return (1.0 + exceed) / (1.0 + flips)


# ----------------------------------------------------------------------------- one run

def versus_baseline(tidy: pd.DataFrame, per_sample: M.PerSample, baseline: str, *,
                    replicates: int = BOOTSTRAP_REPLICATES, flips: int = SIGN_FLIPS,
                    seed: int = SEED) -> dict[str, dict[str, dict]]:
    """{model: {headline key: {'difference', 'ci', 'p'}}} for every model but the baseline;
    differences and intervals are fractions (mCE: ratio - 1), 'p' is None where no sign-flip
    test applies (the mCE ratio). Empty without per-sample results."""
    stats = {(model, key): paired
             for model in M.models_of(tidy) if model != baseline
             for key, paired in paired_statistics(tidy, per_sample, model, baseline).items()}
    if not stats or len({p.columns.shape[0] for p in stats.values()}) != 1:
        return {}
    boot = bootstrap_differences(stats, replicates, seed)
    linear = [k for k, p in stats.items() if p.linear]
    p_values = dict(zip(linear, sign_flip_p(np.column_stack([stats[k].columns[:, 0] for k in linear]), flips, seed)))
    out: dict[str, dict[str, dict]] = {}
    for (model, key), paired in stats.items():
        out.setdefault(model, {})[key] = {"difference": paired.estimate(), "ci": percentile_interval(boot[(model, key)]),
                                          "p": _float_or_none(p_values.get((model, key)))}
    return out


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)


def method_note(replicates: int = BOOTSTRAP_REPLICATES, flips: int = SIGN_FLIPS, seed: int = SEED) -> str:
    return (f"clustered by image: 95% percentile interval of a paired bootstrap over images ({replicates} "
            f"resamples, seed {seed}); two-sided sign-flip permutation test on per-image differences "
            f"({flips} flips, seed {seed}, p >= 1/{flips + 1})")

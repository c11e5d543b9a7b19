"""Robustness metrics computed from the tidy results table; pure functions, no I/O.

The tidy table has one row per (model, corruption, severity) with columns ``n``, ``correct`` and
``error`` (a fraction); the clean cell is ``('clean', 0)``. ``per_sample`` maps
``(model, corruption, severity)`` to a boolean array of per-image correctness, aligned by sample
index, so two models (or two cells) can be compared image by image.

Conventions, chosen to avoid the pitfalls of public evaluation scripts:

* mCE averages the 15 benchmark corruptions only; the 4 extra corruptions are reported apart.
* A per-corruption error is the mean over the severities present; group means and the mean
  corruption error average those per-corruption errors, so each corruption weighs the same, as
  in mCE.
* Functions return fractions; the ``LABEL_*`` names are the exact (percent) labels of the reports.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd
from scipy import stats

from corruptions.registry import BENCHMARK, EXTRA, GROUPS, SEVERITIES

from .errors import BivolError

CLEAN = "clean"
Z95 = float(stats.norm.ppf(0.975))
PerSample = dict[tuple[str, str, int], np.ndarray]

#: AlexNet top-1 errors on ImageNet-C averaged over the 5 severities, and on clean ImageNet, from
#: Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
#: Perturbations", ICLR 2019 (the normalisers of their mCE; also hard-coded in hendrycks/robustness).
#: Per-severity AlexNet errors were not published, so sum_s E(AlexNet, c, s) is taken as 5 x mean.
ALEXNET_ERRORS: dict[str, float] = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640,
    "defocus_blur": 0.819880, "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360,
    "snow": 0.866816, "frost": 0.826572, "fog": 0.819324,
    "brightness": 0.564592, "contrast": 0.853204, "elastic_transform": 0.646056,
    "pixelate": 0.717840, "jpeg_compression": 0.606500,
    CLEAN: 0.4348,
}

LABEL_CLEAN = "clean error (%)"
LABEL_MEAN_ERROR = "mean corruption error (unnormalised, %)"
LABEL_CE_ALEXNET = "CE (AlexNet-normalised, %)"
LABEL_MCE_ALEXNET = "mCE (AlexNet-normalised, %)"
LABEL_REL_CE_ALEXNET = "relative CE (AlexNet-normalised, %)"
LABEL_REL_MCE_ALEXNET = "relative mCE (AlexNet-normalised, %)"


def label_ce_baseline(baseline: str) -> str:
    return f"CE (normalised by {baseline}, %)"


def label_mce_baseline(baseline: str) -> str:
    return f"mCE (normalised by {baseline}, %)"


def label_group(group: str) -> str:
    return f"{group} error (unnormalised, %)"


class IncompleteResultsError(BivolError):
    """A metric needs result cells that the run does not have."""


# ----------------------------------------------------------------------------- cells and CIs

def wilson_interval(successes: np.ndarray | int, n: np.ndarray | int, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a binomial proportion; unlike the Wald interval it stays inside
    [0, 1] and keeps its coverage for error rates near 0 or 1 and small cells."""
    k = np.asarray(successes, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1.0 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z / denom * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def with_cell_ci(tidy: pd.DataFrame) -> pd.DataFrame:
    """The tidy table plus the 95% Wilson interval of each cell's error (``ci_low``, ``ci_high``)."""
    out = tidy.copy()
    low, high = wilson_interval(out["n"] - out["correct"], out["n"])
    out["ci_low"], out["ci_high"] = low, high
    return out


def models_of(tidy: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(tidy["model"]))


def cell_errors(tidy: pd.DataFrame, model: str) -> dict[tuple[str, int], float]:
    rows = tidy[tidy["model"] == model]
    return {(c, int(s)): float(e) for c, s, e in zip(rows["corruption"], rows["severity"], rows["error"])}


def clean_error(tidy: pd.DataFrame, model: str) -> float:
    return cell_errors(tidy, model).get((CLEAN, 0), math.nan)


def corruption_errors(tidy: pd.DataFrame, model: str) -> dict[str, float]:
    """Mean error over the severities present, per corruption (clean excluded), registry order."""
    cells = cell_errors(tidy, model)
    out: dict[str, float] = {}
    for name in BENCHMARK + EXTRA:
        values = [e for (c, _), e in cells.items() if c == name]
        if values:
            out[name] = float(np.mean(values))
    return out


def severities_of(cells: Iterable[tuple[str, int]], corruption: str) -> list[int]:
    return sorted(s for c, s in cells if c == corruption)


# ----------------------------------------------------------------------------- unnormalised means

def mean_corruption_error(tidy: pd.DataFrame, model: str) -> float:
    """Mean of the per-corruption errors over the benchmark corruptions present (NaN if none)."""
    per = corruption_errors(tidy, model)
    values = [per[c] for c in BENCHMARK if c in per]
    return float(np.mean(values)) if values else math.nan


def group_means(tidy: pd.DataFrame, model: str) -> dict[str, float]:
    """Mean per-corruption error of each group present: noise, blur, weather, digital, and
    'extra' (the 4 held-out corruptions, reported apart and never part of mCE)."""
    per = corruption_errors(tidy, model)
    out: dict[str, float] = {}
    for group, names in {**GROUPS, "extra": EXTRA}.items():
        values = [per[c] for c in names if c in per]
        if values:
            out[group] = float(np.mean(values))
    return out


def unnormalised_weights(cells: Iterable[tuple[str, int]], names: Iterable[str]) -> dict[tuple[str, int], float]:
    """Weight of each cell in a mean of per-corruption means over ``names`` (those present)."""
    cells = list(cells)
    present = [c for c in names if severities_of(cells, c)]
    weights: dict[tuple[str, int], float] = {}
    for c in present:
        sev = severities_of(cells, c)
        for s in sev:
            weights[(c, s)] = 1.0 / (len(present) * len(sev))
    return weights


# ----------------------------------------------------------------------------- AlexNet-normalised

def _missing_message(model: str, missing: list[tuple[str, int]], what: str) -> str:
    by_corruption: dict[str, list[int]] = {}
    for c, s in missing:
        by_corruption.setdefault(c, []).append(s)
    cells = ", ".join(f"{c} (all severities)" if len(sev) == len(SEVERITIES) and c != CLEAN
                      else f"{c} s{','.join(map(str, sev))}" for c, sev in by_corruption.items())
    return f"{what} for model '{model}' is missing {len(missing)} (corruption, severity) cell(s): {cells}"


def _require_alexnet_cells(tidy: pd.DataFrame, model: str, relative: bool) -> dict[tuple[str, int], float]:
    cells = cell_errors(tidy, model)
    needed = ([(CLEAN, 0)] if relative else []) + [(c, s) for c in BENCHMARK for s in SEVERITIES]
    missing = [cell for cell in needed if cell not in cells]
    if missing:
        what = LABEL_REL_MCE_ALEXNET if relative else LABEL_MCE_ALEXNET
        raise IncompleteResultsError(_missing_message(model, missing, what))
    return cells


def _alexnet_ce_of(cells: dict[tuple[str, int], float], corruption: str, relative: bool) -> float:
    total = sum(cells[(corruption, s)] for s in SEVERITIES)
    if relative:
        return (total - 5 * cells[(CLEAN, 0)]) / (5 * (ALEXNET_ERRORS[corruption] - ALEXNET_ERRORS[CLEAN]))
    return total / (5 * ALEXNET_ERRORS[corruption])


def alexnet_ce(tidy: pd.DataFrame, model: str, *, relative: bool = False) -> dict[str, float]:
    """CE_c = sum_s E(f,c,s) / sum_s E(AlexNet,c,s) for each benchmark corruption with all 5
    severities (others are left out: a partial sum is not comparable with AlexNet's 5-severity sum).

    Relative CE_c = (sum_s E(f,c,s) - 5 E_clean(f)) / (5 (E_AlexNet,c - E_AlexNet,clean)): the
    published severity means suffice because the AlexNet term is a sum over the 5 severities.
    """
    cells = cell_errors(tidy, model)
    if relative and (CLEAN, 0) not in cells:
        return {}
    return {c: _alexnet_ce_of(cells, c, relative) for c in BENCHMARK
            if all((c, s) in cells for s in SEVERITIES)}


def alexnet_mce(tidy: pd.DataFrame, model: str, *, relative: bool = False) -> float:
    """Mean of the 15 AlexNet-normalised CEs; refuses (IncompleteResultsError) any missing cell,
    since dropping a corruption silently changes what mCE means."""
    cells = _require_alexnet_cells(tidy, model, relative)
    return float(np.mean([_alexnet_ce_of(cells, c, relative) for c in BENCHMARK]))


def _alexnet_weights(relative: bool) -> dict[tuple[str, int], float]:
    """mCE is linear in the cell errors; these are its coefficients (used for the CI)."""
    weights: dict[tuple[str, int], float] = {}
    for c in BENCHMARK:
        scale = 5 * (ALEXNET_ERRORS[c] - ALEXNET_ERRORS[CLEAN]) if relative else 5 * ALEXNET_ERRORS[c]
        for s in SEVERITIES:
            weights[(c, s)] = 1.0 / (len(BENCHMARK) * scale)
        if relative:
            weights[(CLEAN, 0)] = weights.get((CLEAN, 0), 0.0) - 5.0 / (len(BENCHMARK) * scale)
    return weights


# ----------------------------------------------------------------------------- baseline-normalised

def _baseline_cells(tidy: pd.DataFrame, model: str, baseline: str) -> tuple[dict, dict, list[str]]:
    mine, base = cell_errors(tidy, model), cell_errors(tidy, baseline)
    names = [c for c in BENCHMARK if severities_of(mine, c)]
    missing = [(c, s) for c in names for s in severities_of(mine, c) if (c, s) not in base]
    if missing:
        raise IncompleteResultsError(_missing_message(model, missing, f"{label_mce_baseline(baseline)} (baseline cells)"))
    return mine, base, names


def baseline_ce(tidy: pd.DataFrame, model: str, baseline: str) -> dict[str, float]:
    """CE_c = sum_s E(f,c,s) / sum_s E(baseline,c,s) over the severities the model has, for the
    benchmark corruptions present; refused if the baseline lacks any of the model's cells.
    A baseline with zero error on a corruption gives NaN (the ratio is undefined)."""
    mine, base, names = _baseline_cells(tidy, model, baseline)
    out: dict[str, float] = {}
    for c in names:
        sev = severities_of(mine, c)
        denominator = sum(base[(c, s)] for s in sev)
        out[c] = sum(mine[(c, s)] for s in sev) / denominator if denominator > 0 else math.nan
    return out


def baseline_mce(tidy: pd.DataFrame, model: str, baseline: str) -> tuple[float, list[str]]:
    """Mean baseline-normalised CE and the corruptions it averages (those defined for both)."""
    ce = {c: v for c, v in baseline_ce(tidy, model, baseline).items() if not math.isnan(v)}
    return (float(np.mean(list(ce.values()))) if ce else math.nan), list(ce)


# ----------------------------------------------------------------------------- CIs over images

def _normal_ci(estimate: float, parts: list[np.ndarray]) -> tuple[float, float]:
    """95% normal-approximation CI of a statistic whose linearisation is sum_k mean(parts[k]).

    Each part holds per-image influence terms of one cell. When every cell covers the same
    images (the usual case: one image set, corrupted per cell) the terms are summed per image
    first, which keeps the pairing across cells and models; this is the delta method, equivalent
    to a paired bootstrap for large n but exact to compute in O(cells x images). Cells of unequal
    size are treated as independent.
    """
    if math.isnan(estimate) or not parts:
        return math.nan, math.nan
    if len({len(p) for p in parts}) == 1:
        per_image = np.sum(parts, axis=0)
        variance = per_image.var(ddof=1) / len(per_image) if len(per_image) > 1 else 0.0
    else:
        variance = sum(p.var(ddof=1) / len(p) for p in parts if len(p) > 1)
    half = Z95 * math.sqrt(variance)
    return estimate - half, estimate + half


def _wrong(per_sample: PerSample, model: str, cell: tuple[str, int]) -> np.ndarray | None:
    correct = per_sample.get((model, *cell))
    return None if correct is None else (~np.asarray(correct, dtype=bool)).astype(float)


def _linear_ci(per_sample: PerSample, model: str, estimate: float,
               weights: dict[tuple[str, int], float]) -> tuple[float, float]:
    parts = []
    for cell, weight in weights.items():
        wrong = _wrong(per_sample, model, cell)
        if wrong is None:
            return math.nan, math.nan
        parts.append(weight * wrong)
    return _normal_ci(estimate, parts)


def mean_corruption_error_ci(tidy: pd.DataFrame, per_sample: PerSample, model: str) -> tuple[float, float]:
    cells = cell_errors(tidy, model)
    return _linear_ci(per_sample, model, mean_corruption_error(tidy, model), unnormalised_weights(cells, BENCHMARK))


def group_mean_ci(tidy: pd.DataFrame, per_sample: PerSample, model: str, group: str) -> tuple[float, float]:
    """CI of a group's mean per-corruption error (see :func:`group_means`); NaN if the group is absent."""
    cells = cell_errors(tidy, model)
    names = EXTRA if group == "extra" else GROUPS[group]
    estimate = group_means(tidy, model).get(group, math.nan)
    return _linear_ci(per_sample, model, estimate, unnormalised_weights(cells, names))


def alexnet_mce_ci(tidy: pd.DataFrame, per_sample: PerSample, model: str, *,
                   relative: bool = False) -> tuple[float, float]:
    return _linear_ci(per_sample, model, alexnet_mce(tidy, model, relative=relative), _alexnet_weights(relative))


def baseline_mce_ci(tidy: pd.DataFrame, per_sample: PerSample, model: str, baseline: str) -> tuple[float, float]:
    """Delta-method CI of mean_c A_c / B_c, paired over images: the model and the baseline see
    the same images, so their errors are correlated and an unpaired interval would be too wide."""
    mine, base, _ = _baseline_cells(tidy, model, baseline)
    ce = baseline_ce(tidy, model, baseline)
    names = [c for c, v in ce.items() if not math.isnan(v)]
    estimate, _ = baseline_mce(tidy, model, baseline)
    parts = []
    for c in names:
        sev = severities_of(mine, c)
        denominator = sum(base[(c, s)] for s in sev) * len(names)
        for s in sev:
            a, b = _wrong(per_sample, model, (c, s)), _wrong(per_sample, baseline, (c, s))
            if a is None or b is None or len(a) != len(b):
                return math.nan, math.nan
            parts.append((a - ce[c] * b) / denominator)
    return _normal_ci(estimate, parts)

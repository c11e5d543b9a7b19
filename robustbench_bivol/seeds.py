"""Several training seeds per architecture: spread across seeds and differences from the baseline
whose interval includes the seed variance.

Each run folder holds one seed of every architecture, baseline included, all evaluated on the
same images; seed i of a model is paired with seed i of the baseline (the same run). A single
image resampling is applied to every seed, since the images are shared (crossed with seeds).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from . import clustered as C
from . import metrics as M
from .errors import UsageError

INTERVAL_IMAGES = "image bootstrap (one seed)"
INTERVAL_SEEDS = "t, seed + image variance"


def headline_values(tidy: pd.DataFrame, model: str, baseline: str) -> dict[str, float]:
    """The headline metrics of one model in one run (fractions; mCE as a ratio)."""
    try:
        mce = M.baseline_mce(tidy, model, baseline)[0]
    except M.IncompleteResultsError:
        mce = math.nan
    values = {"clean": M.clean_error(tidy, model), "mean": M.mean_corruption_error(tidy, model),
              "noise": M.group_means(tidy, model).get("noise", math.nan), "mce": mce}
    return {k: v for k, v in values.items() if not math.isnan(v)}


def seed_interval(per_seed: np.ndarray, image_replicates: np.ndarray, n_images: int) -> tuple[tuple[float, float], str]:
    """95% interval of the seed-mean difference and the method used.

    One seed: the percentile interval of the image bootstrap. Several: mean ± t_nu sqrt(u + v) with
    u = s^2 / S (s: sd of the S per-seed differences, the seed variance) and v = the variance of
    the seed-mean difference over image resamples (the image variance); nu by Welch-Satterthwaite,
    taking n_images - 1 degrees of freedom for v. Under a crossed seed x image model this counts
    the seed-image interaction twice, so it errs on the wide side.
    """
    replicates = image_replicates.mean(axis=1)
    if len(per_seed) == 1:
        return C.percentile_interval(replicates), INTERVAL_IMAGES
    u = float(np.var(per_seed, ddof=1)) / len(per_seed)
    v = float(np.nanvar(replicates, ddof=1))
    centre = float(np.mean(per_seed))
    if u + v == 0:
        return (centre, centre), INTERVAL_SEEDS
    nu = (u + v) ** 2 / (u**2 / (len(per_seed) - 1) + v**2 / max(n_images - 1, 1))
    half = float(stats.t.ppf(0.975, nu)) * math.sqrt(u + v)
    return (centre - half, centre + half), INTERVAL_SEEDS


def method_note(replicates: int = C.BOOTSTRAP_REPLICATES, seed: int = C.SEED) -> str:
    return (f"seed i of each model is paired with seed i of the baseline (the same run); one seed: 95% "
            f"percentile interval of a paired bootstrap over images ({replicates} resamples, seed {seed}); "
            f"S >= 2 seeds: d ± t_nu sqrt(s^2/S + v), d = mean of the S per-seed differences, s = their sd, "
            f"v = variance of the seed-mean difference over the same {replicates} image resamples applied "
            f"to every seed, nu by Welch-Satterthwaite (n images - 1 degrees of freedom for v)")


def _check_same_models(runs: list[dict[str, Any]]) -> list[str]:
    models = list(dict.fromkeys(runs[0]["tidy"]["model"]))
    for run in runs[1:]:
        other = list(dict.fromkeys(run["tidy"]["model"]))
        if set(other) != set(models):
            raise UsageError(f"--seeds needs every run to evaluate the same models: {runs[0]['path']} has "
                             f"{', '.join(models)}; {run['path']} has {', '.join(other)} "
                             "(evaluate each seed's weights of every architecture into one run folder)")
    for run in runs:
        if not run["per_sample"]:
            raise UsageError(f"--seeds needs per-sample results: {run['path']} has no run.json + cells/ "
                             "(give the run folder that evaluate wrote)")
    return models


def seed_summary(runs: list[dict[str, Any]], baseline: str, *, replicates: int = C.BOOTSTRAP_REPLICATES,
                 seed: int = C.SEED) -> dict[str, dict[str, dict]]:
    """{architecture: {headline key: {n seeds, per seed, mean, sd, and, except for the baseline,
    difference, per-seed differences, ci, interval}}}; fractions. ``runs`` are loaded by
    ``compare``, one seed each."""
    models = _check_same_models(runs)
    if baseline not in models:
        raise UsageError(f"--baseline {baseline} is not among the compared models ({', '.join(models)})")
    models = [baseline] + [m for m in models if m != baseline]
    paired = {(s, model, key): p
              for s, run in enumerate(runs) for model in models if model != baseline
              for key, p in C.paired_statistics(run["tidy"], run["per_sample"], model, baseline).items()}
    sizes = {p.columns.shape[0] for p in paired.values()}
    if len(sizes) > 1:
        raise UsageError(f"the runs kept different numbers of images ({sorted(sizes)}); --seeds pairs seeds "
                         "image by image, so every run must cover the same images")
    boot = C.bootstrap_differences(paired, replicates, seed) if paired else {}
    out: dict[str, dict[str, dict]] = {}
    for model in models:
        values = [headline_values(run["tidy"], model, baseline) for run in runs]
        for key in C.HEADLINE:
            if not all(key in v for v in values):
                continue
            per_seed = np.array([v[key] for v in values])
            entry: dict[str, Any] = {"n seeds": len(runs), "per seed": per_seed.tolist(), "mean": float(per_seed.mean()),
                                     "sd": float(per_seed.std(ddof=1)) if len(runs) > 1 else None}
            keys = [(s, model, key) for s in range(len(runs))]
            if model != baseline and all(k in paired for k in keys):
                differences = np.array([paired[k].estimate() for k in keys])
                ci, method = seed_interval(differences, np.column_stack([boot[k] for k in keys]), next(iter(sizes)))
                entry.update({"difference": float(differences.mean()), "per-seed differences": differences.tolist(),
                              "ci": ci, "interval": method})
            out.setdefault(model, {})[key] = entry
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def seed_table(summary: dict[str, dict[str, dict]], baseline: str) -> pd.DataFrame:
    """One row per (architecture, metric): seeds, mean ± sd across seeds (%), the difference from
    the baseline in percentage points with its 95% interval, and how that interval was made."""
    rows = []
    for model, metrics in summary.items():
        for key, e in metrics.items():
            spread = _pct(e["mean"]) + ("" if e["sd"] is None else f" ± {_pct(e['sd'])}")
            has = "difference" in e
            rows.append({"architecture": model, "metric": C.headline_label(key, baseline),
                         "seeds": e["n seeds"], "mean ± sd across seeds (%)": spread,
                         f"Δ vs {baseline} (pp) [95% CI]": (f"{_pct(e['difference'])} [{_pct(e['ci'][0])}, "
                                                            f"{_pct(e['ci'][1])}]") if has else "-",
                         "interval": e["interval"] if has else "-"})
    return pd.DataFrame(rows).set_index(["architecture", "metric"])

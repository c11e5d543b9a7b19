"""Write a run's reports (CSV, Markdown, JSON, plots) from the tidy table and per-sample results.

Every file is written atomically. Results may cover any subset of corruptions and severities:
each report is written when it makes sense for the cells present, and a metric that cannot be
computed (e.g. AlexNet mCE without all 75 cells) is left out with a note in ``summary.json``
instead of failing the run after hours of evaluation.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from corruptions.registry import BENCHMARK, EXTRA, GROUPS

from . import clustered as C
from . import metrics as M
from .errors import UsageError
from .io import atomic_write_json, atomic_write_text
from .plotstyle import figure, interval_bars, legend, save, styled

GROUP_NAMES = (*GROUPS, "extra")
MEAN_ROW = "mean"


def _pct(value: float) -> float | None:
    """Percent, rounded for reading; None (JSON null) for undefined values."""
    return None if value is None or math.isnan(value) else round(100.0 * value, 4)


def _pct_pair(pair: tuple[float, float]) -> list[float | None]:
    return [_pct(pair[0]), _pct(pair[1])]


def markdown_table(frame: pd.DataFrame, title: str | None = None) -> str:
    """A GitHub-flavoured Markdown table (no optional 'tabulate' dependency)."""
    if not isinstance(frame.index, pd.RangeIndex):
        frame = frame.reset_index()
    header = [str(c) for c in frame.columns]
    lines = ([f"# {title}", ""] if title else []) + ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in frame.itertuples(index=False):
        cells = ["" if pd.isna(v) else (f"{v:.2f}" if isinstance(v, float) else str(v)) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write_table(run_dir: Path, stem: str, frame: pd.DataFrame, title: str) -> None:
    atomic_write_text(run_dir / f"{stem}.csv", frame.to_csv(float_format="%.4f"))
    atomic_write_text(run_dir / f"{stem}.md", markdown_table(frame, title))


# ----------------------------------------------------------------------------- tables

def results_table(tidy: pd.DataFrame) -> pd.DataFrame:
    """The tidy table with errors and their 95% Wilson interval in percent."""
    table = M.with_cell_ci(tidy)
    for column in ("error", "ci_low", "ci_high"):
        table[f"{column} (%)"] = 100.0 * table.pop(column)
    return table


def corruption_error_table(tidy: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    """Rows: clean, benchmark corruptions, extra corruptions, group means, mean; columns: models."""
    per_model = {m: M.corruption_errors(tidy, m) for m in models}
    present = [c for c in BENCHMARK + EXTRA if any(c in per for per in per_model.values())]
    rows: dict[str, dict[str, float]] = {M.CLEAN: {m: M.clean_error(tidy, m) for m in models}}
    rows.update({c: {m: per_model[m].get(c, math.nan) for m in models} for c in present})
    groups = {m: M.group_means(tidy, m) for m in models}
    for group in GROUP_NAMES:
        if any(group in g for g in groups.values()):
            rows[f"{group} (group mean)"] = {m: groups[m].get(group, math.nan) for m in models}
    if any(c in BENCHMARK for c in present):
        rows[f"{MEAN_ROW} (benchmark corruptions)"] = {m: M.mean_corruption_error(tidy, m) for m in models}
    frame = 100.0 * pd.DataFrame.from_dict(rows, orient="index", columns=models)
    frame.index.name = "corruption"
    return frame


def ce_table(tidy: pd.DataFrame, models: list[str], baseline: str | None,
             alexnet_normalisation: bool) -> pd.DataFrame:
    """Rows (measure, corruption) with per-corruption CE and an 'mCE' row per measure; columns:
    models. Values the metric refuses (incomplete cells) are left empty."""
    records: list[dict[str, Any]] = []

    def add(measure: str, per_model: dict[str, dict[str, float]], mce: dict[str, float]) -> None:
        for c in BENCHMARK:
            if any(c in per for per in per_model.values()):
                records.append({"measure": measure, "corruption": c,
                                **{m: 100.0 * per_model[m].get(c, math.nan) for m in models}})
        records.append({"measure": measure, "corruption": "mCE", **{m: 100.0 * mce[m] for m in models}})

    if alexnet_normalisation:
        for relative, label in ((False, M.LABEL_CE_ALEXNET), (True, M.LABEL_REL_CE_ALEXNET)):
            per = {m: M.alexnet_ce(tidy, m, relative=relative) for m in models}
            if any(per.values()):
                add(label, per, {m: _or_nan(M.alexnet_mce, tidy, m, relative=relative) for m in models})
    if baseline is not None:
        per = {m: _or_empty(M.baseline_ce, tidy, m, baseline) for m in models}
        if any(per.values()):
            add(M.label_ce_baseline(baseline), per,
                {m: _or_nan(lambda t, x: M.baseline_mce(t, x, baseline)[0], tidy, m) for m in models})
    frame = pd.DataFrame(records, columns=["measure", "corruption", *models])
    return frame.set_index(["measure", "corruption"])


def _or_nan(function: Any, *args: Any, **kwargs: Any) -> float:
    try:
        return function(*args, **kwargs)
    except M.IncompleteResultsError:
        return math.nan


def _or_empty(function: Any, *args: Any) -> dict[str, float]:
    try:
        return function(*args)
    except M.IncompleteResultsError:
        return {}


# ----------------------------------------------------------------------------- summary

def _model_summary(tidy: pd.DataFrame, per_sample: M.PerSample, model: str, baseline: str | None,
                   alexnet_normalisation: bool, notes: list[str]) -> dict[str, Any]:
    rows = tidy[tidy["model"] == model]
    clean = rows[rows["corruption"] == M.CLEAN]
    entry: dict[str, Any] = {"n images": int(rows["n"].max()) if len(rows) else 0,
                             M.LABEL_CLEAN: _pct(M.clean_error(tidy, model))}
    if len(clean):
        low, high = M.wilson_interval(int(clean["n"].iloc[0] - clean["correct"].iloc[0]), int(clean["n"].iloc[0]))
        entry[f"{M.LABEL_CLEAN} 95% CI (Wilson)"] = _pct_pair((float(low), float(high)))
    per = M.corruption_errors(tidy, model)
    entry[M.LABEL_MEAN_ERROR] = _pct(M.mean_corruption_error(tidy, model))
    entry[f"{M.LABEL_MEAN_ERROR} 95% CI"] = _pct_pair(M.mean_corruption_error_ci(tidy, per_sample, model))
    entry["benchmark corruptions in mean"] = [c for c in BENCHMARK if c in per]
    groups = M.group_means(tidy, model)
    entry["group means (unnormalised, %)"] = {g: _pct(v) for g, v in groups.items()}
    entry["group means (unnormalised, %) 95% CI"] = {
        g: _pct_pair(M.group_mean_ci(tidy, per_sample, model, g)) for g in groups}
    if alexnet_normalisation:
        for relative, label in ((False, M.LABEL_MCE_ALEXNET), (True, M.LABEL_REL_MCE_ALEXNET)):
            try:
                entry[label] = _pct(M.alexnet_mce(tidy, model, relative=relative))
                entry[f"{label} 95% CI"] = _pct_pair(M.alexnet_mce_ci(tidy, per_sample, model, relative=relative))
            except M.IncompleteResultsError as exc:
                entry[label] = None
                notes.append(str(exc))
                break  # the relative variant needs the same cells and more: one note is enough
    if baseline is not None:
        label = M.label_mce_baseline(baseline)
        try:
            value, names = M.baseline_mce(tidy, model, baseline)
            entry[label] = _pct(value)
            entry[f"{label} 95% CI"] = _pct_pair(M.baseline_mce_ci(tidy, per_sample, model, baseline))
            entry[f"corruptions in {label}"] = names
        except M.IncompleteResultsError as exc:
            entry[label] = None
            notes.append(str(exc))
    return entry


def clustered_key(baseline: str) -> str:
    """The summary.json key of a model's image-clustered comparison with the baseline."""
    return f"vs {baseline}, clustered by image"


def _clustered_entry(results: dict[str, dict], baseline: str) -> dict[str, dict]:
    """Differences in percentage points (mCE: points of mCE), their interval and sign-flip p."""
    return {C.headline_label(key, baseline): {"difference (pp)": _pct(r["difference"]),
                                              "95% CI (image bootstrap)": _pct_pair(r["ci"]),
                                              "p (image sign-flip)": r["p"]}
            for key, r in results.items()}


def build_summary(tidy: pd.DataFrame, per_sample: M.PerSample, baseline: str | None,
                  alexnet_normalisation: bool, command: str, *, replicates: int = C.BOOTSTRAP_REPLICATES,
                  flips: int = C.SIGN_FLIPS, seed: int = C.SEED) -> dict[str, Any]:
    models = M.models_of(tidy)
    if baseline is not None and baseline not in models:
        raise UsageError(f"baseline '{baseline}' has no results; models: {', '.join(models) or 'none'}")
    notes: list[str] = []
    summary: dict[str, Any] = {
        "command": command,
        "baseline": baseline,
        "alexnet_normalisation": alexnet_normalisation,
        "units": "top-1 error and CE in percent; CIs are 95%",
        "ci_method": ("cells: Wilson score interval; means and mCE: normal approximation of the "
                      "per-image linearised statistic (delta method), paired across cells and models"),
        "models": {m: _model_summary(tidy, per_sample, m, baseline, alexnet_normalisation, notes) for m in models},
    }
    if baseline is not None:
        summary["clustered_method"] = C.method_note(replicates, flips, seed)
        for model, results in C.versus_baseline(tidy, per_sample, baseline, replicates=replicates,
                                                flips=flips, seed=seed).items():
            summary["models"][model][clustered_key(baseline)] = _clustered_entry(results, baseline)
    summary["notes"] = notes
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A compact terminal table: model, clean error, mean corruption error, one mCE, noise group,
    each as value ± half the width of its 95% interval, so a reader sees which gaps are noise."""
    models = summary.get("models", {})
    baseline = summary.get("baseline")
    candidates = [M.LABEL_MCE_ALEXNET] if summary.get("alexnet_normalisation") else []
    candidates += [M.label_mce_baseline(baseline)] if baseline else []
    mce_label = next((l for l in candidates if any(e.get(l) is not None for e in models.values())), None)
    header = ["model", M.LABEL_CLEAN, M.LABEL_MEAN_ERROR] + ([mce_label] if mce_label else []) + [M.label_group("noise")]
    table = [header]
    for name, entry in models.items():
        values = [(entry.get(M.LABEL_CLEAN), entry.get(f"{M.LABEL_CLEAN} 95% CI (Wilson)")),
                  (entry.get(M.LABEL_MEAN_ERROR), entry.get(f"{M.LABEL_MEAN_ERROR} 95% CI"))]
        values += [(entry.get(mce_label), entry.get(f"{mce_label} 95% CI"))] if mce_label else []
        values += [(entry.get("group means (unnormalised, %)", {}).get("noise"),
                    entry.get("group means (unnormalised, %) 95% CI", {}).get("noise"))]
        table.append([name] + [_plus_minus(value, ci) for value, ci in values])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    sizes = sorted({e.get("n images") for e in models.values() if e.get("n images")})
    if sizes:
        lines.append(f"± half the width of the 95% interval (clean: Wilson; means and mCE: paired delta method); "
                     f"{'/'.join(map(str, sizes))} images per cell")
    notes = summary.get("notes", [])
    if notes:
        more = f" (and {len(notes) - 1} more note(s) in summary.json)" if len(notes) > 1 else ""
        lines.append(f"note: {notes[0]}{more}")
    return "\n".join(lines)


def _plus_minus(value: float | None, ci: list[float | None] | None) -> str:
    if value is None:
        return "-"
    if not ci or ci[0] is None or ci[1] is None:
        return f"{value:.2f}"
    return f"{value:.2f} ± {(ci[1] - ci[0]) / 2:.2f}"


def _with_ci(value: float | None, ci: list[float | None] | None) -> str:
    if value is None:
        return "-"
    if not ci or ci[0] is None:
        return f"{value:.2f}"
    return f"{value:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def _p_value(p: float | None) -> str:
    return "-" if p is None else f"{p:.2g}"


def study_table(summary: dict[str, Any]) -> pd.DataFrame:
    """One row per model with what a robustness comparison reports: seeds, size and cost, clean
    accuracy, unnormalised mean corruption error, baseline-normalised mCE and the noise group's
    mean error, each with its 95% interval, and the differences from the baseline in mean
    corruption error and noise error with their image-clustered interval and p-value."""
    from .models import list_models
    from .models.profile import models_table

    baseline = summary.get("baseline")
    mce_label = M.label_mce_baseline(baseline) if baseline else None
    known = set(list_models())
    rows = []
    for name, entry in summary.get("models", {}).items():
        profile = models_table([name])[0] if name in known else {}  # params and FLOPs at its input size
        clean = entry.get(M.LABEL_CLEAN)
        clean_ci = entry.get(f"{M.LABEL_CLEAN} 95% CI (Wilson)")
        row = {
            "model": name,
            "seeds": 1,  # a run holds one set of weights per model; see `compare --seeds` for several
            "params (M)": f"{profile['params_m']:.3f}" if profile else "-",
            "GFLOPs": f"{profile['gflops']:.3f}" if profile else "-",
            "clean accuracy (%)": _with_ci(None if clean is None else 100 - clean,
                                           None if not clean_ci else [100 - clean_ci[1], 100 - clean_ci[0]]),
            "mean corruption error (%)": _with_ci(entry.get(M.LABEL_MEAN_ERROR), entry.get(f"{M.LABEL_MEAN_ERROR} 95% CI")),
        }
        if mce_label:
            row[f"mCE vs {baseline} (%)"] = _with_ci(entry.get(mce_label), entry.get(f"{mce_label} 95% CI"))
        row["noise error (%)"] = _with_ci(entry.get("group means (unnormalised, %)", {}).get("noise"),
                                          entry.get("group means (unnormalised, %) 95% CI", {}).get("noise"))
        if baseline:
            tests = entry.get(clustered_key(baseline), {})
            for label, short in ((M.LABEL_MEAN_ERROR, "mean corruption error"), (M.label_group("noise"), "noise error")):
                result = tests.get(label, {})
                row[f"Δ {short} vs {baseline} (pp) [95% CI, image bootstrap]"] = _with_ci(
                    result.get("difference (pp)"), result.get("95% CI (image bootstrap)"))
                row[f"p (image-clustered, {short})"] = _p_value(result.get("p (image sign-flip)"))
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


# ----------------------------------------------------------------------------- plots

def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _interval(pair: list[float | None] | None) -> tuple[float, float]:
    """A summary.json interval (percent, null when unknown) as two floats (NaN when unknown)."""
    return (math.nan, math.nan) if not pair else (_nan(pair[0]), _nan(pair[1]))


@styled
def _plot_severity(tidy: pd.DataFrame, models: list[str], plots: Path) -> None:
    names = [c for c in BENCHMARK + EXTRA if c in set(tidy["corruption"])]
    if not names:
        return
    cols = min(5, len(names))
    rows = math.ceil(len(names) / cols)
    fig = figure(3.0 * cols, 2.6 * rows)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    for ax, name in zip(axes.flat, names):
        for model in models:
            cells = tidy[(tidy["model"] == model) & (tidy["corruption"].isin([name, M.CLEAN]))].sort_values("severity")
            ax.plot(cells["severity"], 100.0 * cells["error"], marker="o", label=model)
        ax.set_title(name)
        ax.set_xlabel("severity (0 = clean)")
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("top-1 error (%)")
    legend(axes.flat[0])
    save(fig, plots, "error_vs_severity")


def _corruption_ci(tidy: pd.DataFrame, per_sample: M.PerSample, model: str, corruption: str, measure: str | None,
                   baseline: str | None) -> tuple[float, float]:
    """95% interval (%) of one corruption's bar: its CE under ``measure`` (None: its unnormalised
    mean error), from the metrics' own intervals on the cells of that corruption alone."""
    alone = tidy[tidy["corruption"].isin([corruption, M.CLEAN])]
    if measure is not None and baseline is not None and measure == M.label_ce_baseline(baseline):
        low, high = M.baseline_mce_ci(alone, per_sample, model, baseline)  # the baseline's errors vary too
        return 100.0 * low, 100.0 * high
    error = M.corruption_errors(tidy, model).get(corruption, math.nan)
    ci = (M.mean_corruption_error_ci(alone, per_sample, model) if corruption in BENCHMARK
          else M.group_mean_ci(alone, per_sample, model, "extra"))
    if measure is None:
        return 100.0 * ci[0], 100.0 * ci[1]
    scale = M.alexnet_ce(tidy, model).get(corruption, math.nan) / error if error else math.nan  # a fixed divisor
    return 100.0 * scale * ci[0], 100.0 * scale * ci[1]


@styled
def _plot_ce(tidy: pd.DataFrame, per_sample: M.PerSample, models: list[str], ce: pd.DataFrame,
             summary: dict[str, Any], plots: Path) -> None:
    """Bars of the first CE measure available and its mCE, else of the unnormalised per-corruption
    error, each with its 95% interval."""
    baseline = summary.get("baseline")
    if len(ce):
        measure: str | None = ce.index.get_level_values("measure")[0]
        frame = ce.xs(measure, level="measure")
        ylabel = measure
        mce_label = M.LABEL_MCE_ALEXNET if measure == M.LABEL_CE_ALEXNET else M.label_mce_baseline(baseline)
    else:
        measure, mce_label = None, None
        table = corruption_error_table(tidy, models)
        frame = table.loc[[c for c in table.index if c in BENCHMARK + EXTRA]]
        ylabel = "mean error over severities (unnormalised, %)"
    if frame.empty:
        return
    low, high = np.full(frame.shape, math.nan), np.full(frame.shape, math.nan)
    for j, model in enumerate(models):
        for i, row in enumerate(frame.index):
            if row == "mCE":
                pair = _interval(summary["models"][model].get(f"{mce_label} 95% CI"))
            elif math.isnan(frame.iloc[i, j]):
                continue
            else:
                pair = _corruption_ci(tidy, per_sample, model, row, measure, baseline)
            low[i, j], high[i, j] = pair
    fig = figure(min(14.0, max(6.0, 0.2 * len(frame) * len(models) + 2)), 4.0)
    interval_bars(fig.add_subplot(), frame.to_numpy(dtype=float), low, high, [str(r) for r in frame.index], models,
                  ylabel)
    save(fig, plots, "ce_by_corruption")


@styled
def _plot_groups(tidy: pd.DataFrame, models: list[str], summary: dict[str, Any], plots: Path) -> None:
    """Group means and the mean over benchmark corruptions, with their 95% intervals."""
    table = corruption_error_table(tidy, models)
    rows = [r for r in table.index if r.endswith("(group mean)") or r.startswith(MEAN_ROW)]
    if not rows:
        return
    low, high = np.full((len(rows), len(models)), math.nan), np.full((len(rows), len(models)), math.nan)
    for j, model in enumerate(models):
        entry = summary["models"][model]
        for i, row in enumerate(rows):
            pair = (entry.get(f"{M.LABEL_MEAN_ERROR} 95% CI") if row.startswith(MEAN_ROW) else
                    entry.get("group means (unnormalised, %) 95% CI", {}).get(row.replace(" (group mean)", "")))
            low[i, j], high[i, j] = _interval(pair)
    fig = figure(6.0, 4.0)
    interval_bars(fig.add_subplot(), table.loc[rows].to_numpy(dtype=float), low, high,
                  [r.replace(" (group mean)", "").replace(" corruptions", "") for r in rows], models,
                  "mean top-1 error (unnormalised, %)")
    save(fig, plots, "group_summary")


# ----------------------------------------------------------------------------- entry point

def write_reports(run_dir: Path, tidy: pd.DataFrame, *, per_sample: dict, baseline: str | None,
                  alexnet_normalisation: bool, command: str) -> dict:
    """Write results.csv, corruption_errors.{csv,md}, ce.{csv,md} (when a normalisation applies),
    summary.json, study.{csv,md} and plots/*.{png,svg} into ``run_dir``; return the summary."""
    run_dir = Path(run_dir)
    models = M.models_of(tidy)
    summary = build_summary(tidy, per_sample, baseline, alexnet_normalisation, command)
    atomic_write_text(run_dir / "results.csv", results_table(tidy).to_csv(index=False, float_format="%.4f"))
    if models:
        _write_table(run_dir, "corruption_errors", corruption_error_table(tidy, models),
                     "Top-1 error (%), mean over severities; group means and mean over benchmark corruptions "
                     "(unnormalised)")
    ce = ce_table(tidy, models, baseline, alexnet_normalisation)
    if len(ce):
        _write_table(run_dir, "ce", ce, "Corruption error (CE, %) per corruption and mCE")
    atomic_write_json(run_dir / "summary.json", summary)
    if models:
        _write_table(run_dir, "study", study_table(summary),
                     "Study table: values in %, 95% intervals in brackets (clean: Wilson; means and mCE: "
                     "paired delta method); differences from the baseline in percentage points with a paired "
                     "bootstrap over images, p-values from a sign-flip test on whole images")
    if models:
        plots = run_dir / "plots"
        _plot_severity(tidy, models, plots)
        _plot_ce(tidy, per_sample, models, ce, summary, plots)
        _plot_groups(tidy, models, summary, plots)
    return summary

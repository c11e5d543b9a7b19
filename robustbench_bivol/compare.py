"""``bivol-robust compare``: merge the results of several run folders into one comparison.

Runs must have evaluated the same samples with the same corruption settings (dataset, sample
set, seed, profile, JPEG step), otherwise their numbers are not comparable and the merge is
refused. Models are read from each run's store (per-sample results, so paired CIs and the
image-clustered tests work across runs) or, without one, from its results.csv. A model name found
in more than one run is suffixed with its run's folder name. With ``--seeds`` each run is one
training seed of the same models, and the runs are combined per architecture instead
(:mod:`seeds`).

A folder that ``compare`` wrote lists its runs in ``runs.json`` (relative to itself, so the folder
moves with its runs) and counts as one run wherever a run folder is expected: the CIFAR-10 study
evaluates each model in its own run and merges them, and ``--seeds`` then combines one such merged
folder per seed.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import UsageError
from .evaluation.store import CLEAN, CONFIG_FILE, RunStore
from .html_report import write_html
from .io import atomic_write_json, atomic_write_text

MERGED_FILE = "runs.json"

#: run.json keys that must agree for results to be comparable.
SAME_KEYS = ("dataset", "n_samples", "indices_digest", "seed", "profile", "jpeg_quality", "clean_dataset",
             "random_streams")


def _load_run(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise UsageError(f"run folder not found: {path}")
    if not (path / CONFIG_FILE).is_file() and (path / MERGED_FILE).is_file():
        return _load_merged(path)
    config_path = path / CONFIG_FILE
    config = json.loads(config_path.read_text()) if config_path.is_file() else None
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if config is not None and (path / "cells").is_dir():
        from .evaluation.run import collect

        cells = [(CLEAN, 0)] + [(c, s) for c in config["corruptions"] for s in config["severities"]]
        shards = math.ceil(config["n_samples"] / config["shard_size"])
        models = list(config["models"])
        tidy, per_sample, _ = collect(RunStore(path, config), cells, shards, models)
    elif (path / "results.csv").is_file():
        table = pd.read_csv(path / "results.csv")
        tidy = table[["model", "corruption", "severity", "n", "correct"]].copy()
        tidy["error"] = 1.0 - tidy["correct"] / tidy["n"]
        per_sample = {}
    else:
        raise UsageError(f"{path} is not a run folder (no run.json + cells/ nor results.csv)")
    if tidy.empty:
        raise UsageError(f"{path} holds no finished cells yet")
    return {"path": path, "config": config or {}, "summary": summary, "tidy": tidy, "per_sample": per_sample}


def _load_merged(path: Path) -> dict[str, Any]:
    """A folder ``compare`` wrote, as one run: its runs loaded and merged again."""
    listed = json.loads((path / MERGED_FILE).read_text())["runs"]
    runs = [_load_run(path / run) for run in listed]  # relative entries resolve against the folder
    _check_comparable(runs)
    _rename(runs)
    tidy, per_sample = _merge(runs)
    alexnet = all(run["summary"].get("alexnet_normalisation", False) for run in runs)
    return {"path": path, "config": {k: runs[0]["config"].get(k) for k in SAME_KEYS},
            "summary": {"alexnet_normalisation": alexnet}, "tidy": tidy, "per_sample": per_sample}


def _merge(runs: list[dict[str, Any]]) -> tuple[pd.DataFrame, dict]:
    """The runs' tidy rows and per-sample results together; no per-sample results unless every
    run has them (the paired intervals need every model's)."""
    tidy = pd.concat([run["tidy"] for run in runs], ignore_index=True)
    if any(not run["per_sample"] for run in runs):
        return tidy, {}
    per_sample: dict = {}
    for run in runs:
        per_sample.update(run["per_sample"])
    return tidy, per_sample


def _check_comparable(runs: list[dict[str, Any]]) -> None:
    first = runs[0]
    for run in runs[1:]:
        for key in SAME_KEYS:
            a, b = first["config"].get(key), run["config"].get(key)
            if a != b:
                what = {"dataset": "datasets", "n_samples": "sample sets", "indices_digest": "sample sets"}.get(
                    key, f"corruption settings ({key})")
                raise UsageError(f"cannot compare runs of different {what}: {first['path']} has {key}={a!r}, "
                                 f"{run['path']} has {key}={b!r}")
        if not first["config"] or not run["config"]:
            n_a, n_b = set(first["tidy"]["n"]), set(run["tidy"]["n"])
            if n_a != n_b:
                raise UsageError(f"cannot compare runs of different sample sets: {first['path']} "
                                 f"and {run['path']} (image counts {sorted(n_a)} vs {sorted(n_b)})")


def _rename(runs: list[dict[str, Any]]) -> None:
    """Suffix model names that occur in several runs with their run's folder name."""
    counts = Counter(m for run in runs for m in dict.fromkeys(run["tidy"]["model"]))
    labels = [run["path"].resolve().name for run in runs]
    if len(set(labels)) != len(labels):
        labels = [f"{label}{i + 1}" for i, label in enumerate(labels)]
    for run, label in zip(runs, labels):
        mapping = {m: (f"{m}@{label}" if counts[m] > 1 else m) for m in dict.fromkeys(run["tidy"]["model"])}
        run["tidy"]["model"] = run["tidy"]["model"].map(mapping)
        run["per_sample"] = {(mapping.get(k[0], k[0]), *k[1:]): v for k, v in run["per_sample"].items()}
        run["mapping"] = mapping


def _default_baseline(models: list[str]) -> str | None:
    from .models import model_spec

    for name in models:
        try:
            if model_spec(name.split("@", 1)[0]).operator == "static":
                return name
        except Exception:  # an architecture this installation does not know
            continue
    return None


def _check_baseline_covers(tidy: pd.DataFrame, models: list[str], baseline: str) -> None:
    from . import metrics as M

    for model in models:
        try:
            M.baseline_ce(tidy, model, baseline)
        except M.IncompleteResultsError as exc:
            raise M.IncompleteResultsError(
                f"{exc}; finish the baseline's run on those cells (rerun its evaluate command) "
                "or choose another --baseline") from None


def _out_folder(runs: list[dict[str, Any]], out: str | Path | None) -> Path:
    if out is None:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", "+".join(run["path"].resolve().name for run in runs))[:120]
        out = Path("runs") / f"compare-{slug}"
    out = Path(out)
    if (out / CONFIG_FILE).is_file():  # its reports would be replaced while its run.json and cells stay
        raise UsageError(f"{out} is a run folder written by evaluate; give compare another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _relative(run: Path, out: Path) -> str:
    """``run`` as seen from ``out``, so that the merged folder still finds its runs once moved with them."""
    return os.path.relpath(run.resolve(), out.resolve())


def compare_runs(run_dirs: list[str | Path], out: str | Path | None = None, baseline: str | None = None,
                 command: str = "") -> tuple[Path, dict[str, Any]]:
    """Merge ``run_dirs`` into ``out``: results.csv, corruption_errors, ce, summary.json, plots, report.html."""
    from .reports import write_reports

    if len(run_dirs) < 2:
        raise UsageError("compare needs at least two run folders")
    runs = [_load_run(Path(p)) for p in run_dirs]
    _check_comparable(runs)
    _rename(runs)
    tidy, per_sample = _merge(runs)
    models = list(dict.fromkeys(tidy["model"]))
    if baseline is not None and baseline not in models:
        raise UsageError(f"--baseline {baseline} is not among the compared models ({', '.join(models)})")
    if baseline is not None:  # asked for by name: refuse an mCE that would silently leave models out
        _check_baseline_covers(tidy, models, baseline)
    baseline = baseline or _default_baseline(models)
    alexnet = all(run["summary"].get("alexnet_normalisation", False) for run in runs)
    out = _out_folder(runs, out)
    summary = write_reports(out, tidy, per_sample=per_sample, baseline=baseline, alexnet_normalisation=alexnet,
                            command=command)
    summary["runs"] = {_relative(run["path"], out): run["mapping"] for run in runs}
    atomic_write_json(out / "summary.json", summary)
    atomic_write_json(out / MERGED_FILE, {"runs": list(summary["runs"]),
                                          "models": summary["runs"],
                                          "config": {k: runs[0]["config"].get(k) for k in SAME_KEYS}})
    write_html(out)
    return out, summary


def compare_seeds(run_dirs: list[str | Path], out: str | Path | None = None, baseline: str | None = None,
                  command: str = "") -> tuple[Path, pd.DataFrame]:
    """Combine runs that each hold one training seed of the same architectures into ``out``:
    seeds.{csv,md} (one row per architecture and metric), seeds.json (every number) and report.html."""
    from .reports import markdown_table
    from .seeds import method_note, seed_summary, seed_table

    runs = [_load_run(Path(p)) for p in run_dirs]
    _check_comparable(runs)
    models = list(dict.fromkeys(runs[0]["tidy"]["model"]))
    baseline = baseline or _default_baseline(models)
    if baseline is None:
        raise UsageError("--seeds compares each operator with a static model: none found, give --baseline")
    summary = seed_summary(runs, baseline)
    table = seed_table(summary, baseline)
    out = _out_folder(runs, out)
    title = (f"Seeds: mean ± sd across {len(runs)} seed(s) (%); differences from {baseline} in percentage "
             "points (mCE: points of mCE), seed-mean difference with its 95% interval")
    atomic_write_text(out / "seeds.csv", table.to_csv())
    atomic_write_text(out / "seeds.md", markdown_table(table, title))
    atomic_write_json(out / "seeds.json", {"command": command, "baseline": baseline,
                                           "runs": [_relative(run["path"], out) for run in runs],
                                           "units": "fractions (mCE: ratio to the baseline's)",
                                           "method": method_note(), "architectures": summary})
    write_html(out)
    return out, table


__all__ = ["compare_runs", "compare_seeds", "SAME_KEYS"]

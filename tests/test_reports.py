"""Reports: every file is written and its numbers recount from the per-sample arrays."""
import json

import numpy as np
import pandas as pd
import pytest

from corruptions.registry import BENCHMARK, SEVERITIES
from robustbench_bivol import clustered as C
from robustbench_bivol import metrics as M
from robustbench_bivol.errors import UsageError
from robustbench_bivol.reports import clustered_key, format_summary, write_reports


def _run(models, cells, n=60, seed=0):
    """Random per-sample correctness and the tidy table counted from it, as the store does."""
    rng = np.random.default_rng(seed)
    per_sample, rows = {}, []
    for i, model in enumerate(models):
        for c, s in cells:
            correct = rng.random(n) > 0.15 + 0.1 * s + 0.05 * i
            per_sample[(model, c, s)] = correct
            rows.append({"model": model, "corruption": c, "severity": s, "n": n, "correct": int(correct.sum())})
    tidy = pd.DataFrame(rows)
    tidy["error"] = 1 - tidy["correct"] / tidy["n"]
    return tidy, per_sample


def _err(per_sample, model, c, s):
    return 100 * (1 - per_sample[(model, c, s)].mean())


PLOTS = ["error_vs_severity", "ce_by_corruption", "group_summary"]


def test_small_run_with_baseline(tmp_path):
    cells = [("clean", 0)] + [(c, s) for c in ("gaussian_noise", "fog") for s in (1, 2)]
    tidy, ps = _run(["static", "bivol"], cells)
    summary = write_reports(tmp_path, tidy, per_sample=ps, baseline="static", alexnet_normalisation=False,
                            command="bivol-robust evaluate")
    for name in ["results.csv", "corruption_errors.csv", "corruption_errors.md", "ce.csv", "ce.md", "summary.json"]:
        assert (tmp_path / name).is_file(), name
    for stem in PLOTS:
        for fmt in ("png", "svg"):
            assert (tmp_path / "plots" / f"{stem}.{fmt}").stat().st_size > 0
    assert not list(tmp_path.rglob("*.tmp"))

    results = pd.read_csv(tmp_path / "results.csv")
    assert len(results) == 2 * 5
    for _, row in results.iterrows():
        assert row["error (%)"] == pytest.approx(_err(ps, row["model"], row["corruption"], row["severity"]), abs=1e-3)
        assert row["ci_low (%)"] <= row["error (%)"] <= row["ci_high (%)"]

    wide = pd.read_csv(tmp_path / "corruption_errors.csv", index_col="corruption")
    assert list(wide.index[:3]) == ["clean", "gaussian_noise", "fog"]
    for model in ("static", "bivol"):
        g = np.mean([_err(ps, model, "gaussian_noise", s) for s in (1, 2)])
        f = np.mean([_err(ps, model, "fog", s) for s in (1, 2)])
        assert wide.loc["gaussian_noise", model] == pytest.approx(g, abs=1e-3)
        assert wide.loc["noise (group mean)", model] == pytest.approx(g, abs=1e-3)
        assert wide.loc["mean (benchmark corruptions)", model] == pytest.approx((g + f) / 2, abs=1e-3)
        assert summary["models"][model][M.LABEL_MEAN_ERROR] == pytest.approx((g + f) / 2, abs=1e-3)

    ce = pd.read_csv(tmp_path / "ce.csv", index_col=["measure", "corruption"])
    label = M.label_ce_baseline("static")
    ratio = {c: sum(_err(ps, "bivol", c, s) for s in (1, 2)) / sum(_err(ps, "static", c, s) for s in (1, 2))
             for c in ("gaussian_noise", "fog")}
    assert ce.loc[(label, "fog"), "bivol"] == pytest.approx(100 * ratio["fog"], abs=1e-3)
    assert ce.loc[(label, "mCE"), "static"] == pytest.approx(100.0)

    stored = json.loads((tmp_path / "summary.json").read_text())
    entry = stored["models"]["bivol"]
    assert stored["command"] == "bivol-robust evaluate"
    assert entry[M.label_mce_baseline("static")] == pytest.approx(100 * np.mean(list(ratio.values())), abs=1e-3)
    assert entry[f"corruptions in {M.label_mce_baseline('static')}"] == ["gaussian_noise", "fog"]
    low, high = entry[f"{M.label_mce_baseline('static')} 95% CI"]
    assert low < entry[M.label_mce_baseline("static")] < high
    clustered = entry[clustered_key("static")][M.LABEL_MEAN_ERROR]
    assert clustered["difference (pp)"] == pytest.approx(
        entry[M.LABEL_MEAN_ERROR] - stored["models"]["static"][M.LABEL_MEAN_ERROR], abs=1e-3)
    low, high = clustered["95% CI (image bootstrap)"]
    assert low < clustered["difference (pp)"] < high and 0 < clustered["p (image sign-flip)"] <= 1
    assert clustered_key("static") not in stored["models"]["static"]
    assert "sign-flip" in stored["clustered_method"]
    assert entry["n images"] == 60

    text = format_summary(summary)
    assert M.LABEL_CLEAN in text and M.label_mce_baseline("static") in text and "bivol" in text
    low, high = entry[f"{M.LABEL_MEAN_ERROR} 95% CI"]  # each value with half its interval's width
    assert f"{entry[M.LABEL_MEAN_ERROR]:.2f} ± {(high - low) / 2:.2f}" in text and "60 images per cell" in text


def test_clean_only_without_baseline_still_reports(tmp_path):
    tidy, ps = _run(["a"], [("clean", 0)])
    summary = write_reports(tmp_path, tidy, per_sample=ps, baseline=None, alexnet_normalisation=True, command="x")
    assert (tmp_path / "results.csv").is_file() and (tmp_path / "summary.json").is_file()
    assert (tmp_path / "corruption_errors.md").is_file()
    assert not (tmp_path / "ce.csv").exists()  # nothing to normalise
    assert summary["models"]["a"][M.LABEL_MCE_ALEXNET] is None and summary["notes"]
    assert "a" in format_summary(summary)


def test_unknown_baseline_is_a_usage_error(tmp_path):
    tidy, ps = _run(["a"], [("clean", 0)])
    with pytest.raises(UsageError, match="baseline 'b'"):
        write_reports(tmp_path, tidy, per_sample=ps, baseline="b", alexnet_normalisation=False, command="x")


def test_full_benchmark_with_alexnet_normalisation(tmp_path):
    cells = [("clean", 0)] + [(c, s) for c in BENCHMARK for s in SEVERITIES]
    tidy, ps = _run(["static", "bivol"], cells, n=40)
    summary = write_reports(tmp_path, tidy, per_sample=ps, baseline="static", alexnet_normalisation=True,
                            command="x")
    for model in ("static", "bivol"):
        expected = np.mean([sum(_err(ps, model, c, s) for s in SEVERITIES) / (5 * M.ALEXNET_ERRORS[c])
                            for c in BENCHMARK])
        entry = summary["models"][model]
        assert entry[M.LABEL_MCE_ALEXNET] == pytest.approx(expected, abs=1e-3)
        low, high = entry[f"{M.LABEL_MCE_ALEXNET} 95% CI"]
        assert low < entry[M.LABEL_MCE_ALEXNET] < high
        assert entry[M.LABEL_REL_MCE_ALEXNET] is not None
    ce = pd.read_csv(tmp_path / "ce.csv", index_col=["measure", "corruption"])
    assert ce.loc[(M.LABEL_CE_ALEXNET, "mCE"), "bivol"] == pytest.approx(
        summary["models"]["bivol"][M.LABEL_MCE_ALEXNET], abs=1e-3)
    assert M.LABEL_MCE_ALEXNET in format_summary(summary)
    assert all((tmp_path / "plots" / f"{stem}.svg").is_file() for stem in PLOTS)
    assert not summary["notes"]


def test_study_table_recounts_from_per_sample(tmp_path):
    """study.{csv,md}: registered models get params/FLOPs and one seed; the noise group's mean,
    its interval and the image-clustered difference from the baseline come from the per-sample
    arrays."""
    cells = [("clean", 0)] + [(c, s) for c in ("gaussian_noise", "shot_noise", "fog") for s in (1, 2)]
    tidy, ps = _run(["resnet20", "bivol_resnet20"], cells, n=200)
    write_reports(tmp_path, tidy, per_sample=ps, baseline="resnet20", alexnet_normalisation=False, command="x")
    study = pd.read_csv(tmp_path / "study.csv", index_col="model", dtype=str)
    assert "| bivol_resnet20 |" in (tmp_path / "study.md").read_text()
    assert study.loc["resnet20", "params (M)"] == "0.272" and study.loc["resnet20", "GFLOPs"] == "0.041"

    noise = [(c, s) for c in ("gaussian_noise", "shot_noise") for s in (1, 2)]
    wrong = np.mean([~ps[("bivol_resnet20", *cell)] for cell in noise], axis=0)  # per-image mean over noise cells
    mean, half = 100 * wrong.mean(), 100 * 1.959964 * wrong.std(ddof=1) / np.sqrt(len(wrong))
    value, interval = study.loc["bivol_resnet20", "noise error (%)"].split(" [")
    low, high = (float(v) for v in interval.rstrip("]").split(", "))
    assert float(value) == pytest.approx(mean, abs=0.01)
    assert low == pytest.approx(mean - half, abs=0.01) and high == pytest.approx(mean + half, abs=0.01)

    d = wrong - np.mean([~ps[("resnet20", *cell)] for cell in noise], axis=0)  # per-image difference
    delta = study.loc["bivol_resnet20", "Δ noise error vs resnet20 (pp) [95% CI, image bootstrap]"]
    assert float(delta.split(" [")[0]) == pytest.approx(100 * d.mean(), abs=0.01)
    p = float(study.loc["bivol_resnet20", "p (image-clustered, noise error)"])
    assert p == pytest.approx(C.sign_flip_p(d[:, None])[0], rel=0.01)
    assert study.loc["resnet20", "p (image-clustered, noise error)"] == "-"
    assert (study["seeds"] == "1").all()
    clean_acc = 100 * ps[("bivol_resnet20", "clean", 0)].mean()
    assert float(study.loc["bivol_resnet20", "clean accuracy (%)"].split(" [")[0]) == pytest.approx(clean_acc, abs=0.01)

"""Seeds: the interval of a difference from the baseline includes the seed variance (exactly the
t-interval when images add none, the image bootstrap with one seed) and covers the truth in a
simulation where an image-only interval does not."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from robustbench_bivol import clustered as C
from robustbench_bivol.errors import UsageError
from robustbench_bivol.seeds import INTERVAL_IMAGES, INTERVAL_SEEDS, seed_interval, seed_summary, seed_table

NOISE = ("gaussian_noise", "shot_noise", "impulse_noise")


def _run(name: str, per_sample: dict) -> dict:
    rows = [{"model": m, "corruption": c, "severity": s, "n": len(v), "correct": int(v.sum())}
            for (m, c, s), v in per_sample.items()]
    tidy = pd.DataFrame(rows)
    tidy["error"] = 1 - tidy["correct"] / tidy["n"]
    return {"path": Path(name), "tidy": tidy, "per_sample": per_sample}


def _uniform_run(name: str, wrong_noise: int, n: int = 30) -> dict:
    """Every image alike: the model is wrong on all images of the first ``wrong_noise`` noise
    corruptions and of fog, the baseline on all images of fog only."""
    cells = [("clean", 0)] + [(c, 1) for c in (*NOISE, "fog")]
    per_sample = {}
    for c, s in cells:
        per_sample[("base", c, s)] = np.full(n, c != "fog")
        per_sample[("model", c, s)] = np.full(n, not (c == "fog" or c in NOISE[:wrong_noise]))
    return _run(name, per_sample)


def test_interval_is_the_t_interval_when_images_add_no_variance():
    runs = [_uniform_run(f"seed{k}", k) for k in (0, 1, 3)]
    summary = seed_summary(runs, "base", replicates=200)
    entry = summary["model"]["mean"]
    per_seed = np.array([0, 1, 3]) / 4
    assert entry["n seeds"] == 3 and entry["per-seed differences"] == pytest.approx(per_seed)
    assert entry["interval"] == INTERVAL_SEEDS and entry["difference"] == pytest.approx(per_seed.mean())
    expected = stats.t.interval(0.95, 2, loc=per_seed.mean(), scale=per_seed.std(ddof=1) / np.sqrt(3))
    assert entry["ci"] == pytest.approx(expected)
    assert entry["mean"] == pytest.approx(np.mean([1, 2, 4]) / 4) and entry["sd"] == pytest.approx(np.std([1, 2, 4], ddof=1) / 4)
    assert summary["base"]["mean"]["sd"] == 0 and "difference" not in summary["base"]["mean"]
    assert list(summary) == ["base", "model"]
    table = seed_table(summary, "base")
    assert table.loc[("model", "noise error (unnormalised, %)"), "seeds"] == 3
    assert table.loc[("model", "mean corruption error (unnormalised, %)"), "mean ± sd across seeds (%)"] == "58.33 ± 38.19"


def test_one_seed_is_the_image_bootstrap_of_the_run():
    rng = np.random.default_rng(0)
    hard = rng.random(500)
    cells = [("clean", 0)] + [(c, s) for c in ("gaussian_noise", "fog") for s in (1, 2)]
    per_sample = {(m, c, s): rng.random(500) > 0.3 * hard + 0.1 * s + shift
                  for m, shift in (("base", 0.0), ("model", 0.05)) for c, s in cells}
    run = _run("only", per_sample)
    summary = seed_summary([run], "base", replicates=500)
    single = C.versus_baseline(run["tidy"], per_sample, "base", replicates=500)["model"]
    for key, result in single.items():
        entry = summary["model"][key]
        assert entry["n seeds"] == 1 and entry["sd"] is None and entry["interval"] == INTERVAL_IMAGES
        assert entry["difference"] == pytest.approx(result["difference"])
        assert entry["ci"] == pytest.approx(result["ci"])
    assert seed_table(summary, "base").loc[("base", "clean error (%)"), "mean ± sd across seeds (%)"].count("±") == 0


def test_interval_covers_the_truth_when_seeds_vary():
    """d[s, i] = seed effect + image effect + noise, the seed effect dominating: the interval
    covers the true difference 0 about 95% of the time; one ignoring seeds (image bootstrap of
    the pooled seeds) far less often."""
    rng = np.random.default_rng(7)
    seeds, images, covered, image_only = 3, 200, 0, 0
    trials = 300
    for trial in range(trials):
        d = rng.normal(0, 0.02, (seeds, 1)) + rng.normal(0, 0.05, (1, images)) + rng.normal(0, 0.1, (seeds, images))
        replicates = C.bootstrap_means(d.T, replicates=200, seed=trial)
        low, high = seed_interval(d.mean(axis=1), replicates, images)[0]
        covered += low <= 0 <= high
        low, high = C.percentile_interval(replicates.mean(axis=1))
        image_only += low <= 0 <= high
    assert 0.9 <= covered / trials <= 1.0
    assert image_only / trials < 0.8


def test_refusals():
    a, b = _uniform_run("a", 0), _uniform_run("b", 1)
    b["tidy"] = b["tidy"][b["tidy"]["model"] == "base"]
    with pytest.raises(UsageError, match="same models"):
        seed_summary([a, b], "base")
    with pytest.raises(UsageError, match="--baseline nope"):
        seed_summary([a], "nope")
    with pytest.raises(UsageError, match="per-sample results"):
        seed_summary([{**a, "per_sample": {}}], "base")

"""Image-clustered inference: the bootstrap against the exact bootstrap distribution, the sign-flip
test against the exact sign test and a full enumeration, and a design where pooling the 75
corrupted copies of each image as independent pairs would be wildly overconfident."""
import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from corruptions.registry import BENCHMARK, SEVERITIES
from robustbench_bivol import clustered as C
from robustbench_bivol import metrics as M

CELLS = [("clean", 0)] + [(c, s) for c in BENCHMARK for s in SEVERITIES]


def _tidy(per_sample: dict) -> pd.DataFrame:
    rows = [{"model": m, "corruption": c, "severity": s, "n": len(v), "correct": int(v.sum())}
            for (m, c, s), v in per_sample.items()]
    tidy = pd.DataFrame(rows)
    tidy["error"] = 1 - tidy["correct"] / tidy["n"]
    return tidy


def test_bootstrap_matches_the_exact_bootstrap_distribution():
    """4 images: all 4^4 equally likely resamples enumerated give the exact bootstrap distribution
    of the mean; its variance is the plug-in variance / n."""
    d = np.array([0.0, 1.0, 3.0, 7.0])
    exact = np.array([d[list(idx)].mean() for idx in itertools.product(range(4), repeat=4)])
    assert exact.var() == pytest.approx(d.var() / len(d))
    boot = C.bootstrap_means(d[:, None], replicates=20000, seed=1)[:, 0]
    assert boot.mean() == pytest.approx(d.mean(), abs=0.03)
    assert boot.var() == pytest.approx(exact.var(), rel=0.04)
    grid = np.unique(exact)
    assert np.max(np.abs(np.searchsorted(np.sort(boot), grid, side="right") / len(boot)
                         - np.searchsorted(np.sort(exact), grid, side="right") / len(exact))) < 0.015


def test_resamples_are_seeded_and_shared_across_columns():
    rng = np.random.default_rng(0)
    x, y = rng.random((50, 2)), rng.random((50, 3))
    both = C.bootstrap_means(np.column_stack([x, y]), replicates=300, seed=5)
    # The same resampled images, so the same means up to float rounding: BLAS may pick another
    # kernel, and summation order, for another number of columns (OpenBLAS does on some CPUs).
    assert np.allclose(both[:, :2], C.bootstrap_means(x, replicates=300, seed=5), rtol=1e-12, atol=0)
    assert np.allclose(both[:, 2:], C.bootstrap_means(y, replicates=300, seed=5), rtol=1e-12, atol=0)
    assert not np.allclose(both[:, :2], C.bootstrap_means(x, replicates=300, seed=6))


def test_sign_flip_matches_the_exact_sign_test_and_a_full_enumeration():
    # differences of +-1 (and ties, which no flip changes): the sign-flip test is the sign test
    d = np.array([1.0] * 23 + [-1.0] * 17 + [0.0] * 20)
    p = C.sign_flip_p(d[:, None], flips=20000, seed=3)[0]
    assert p == pytest.approx(stats.binomtest(23, 40, 0.5).pvalue, abs=0.012)
    # general differences: all 2^10 sign patterns enumerated
    e = np.array([0.9, 0.4, 0.7, -0.2, 0.5, 0.3, 1.1, -0.6, 0.8, 0.2])
    sums = np.array([np.dot(signs, e) for signs in itertools.product((-1, 1), repeat=10)])
    exact = np.mean(np.abs(sums) >= abs(e.sum()) - 1e-12)
    assert C.sign_flip_p(e[:, None], flips=20000, seed=4)[0] == pytest.approx(exact, abs=0.006)
    assert C.sign_flip_p(np.zeros((5, 1)), flips=100)[0] == 1.0
    assert C.sign_flip_p(np.ones((60, 1)), flips=999)[0] == pytest.approx(1 / 1000)  # the floor


def test_copies_of_one_image_count_once():
    """40 images, each either right in all 76 cells for the model and wrong for the baseline (23)
    or the reverse (17). Pooling the 75 corrupted copies as pairs would give p ~ 2e-16; by image it
    is the sign test of 23 vs 17 (p = 0.43) and the interval of a 40-image mean."""
    better = np.arange(40) < 23
    per_sample = {}
    for c, s in CELLS:
        per_sample[("model", c, s)] = better.copy()
        per_sample[("base", c, s)] = ~better
    tidy = _tidy(per_sample)
    result = C.versus_baseline(tidy, per_sample, "base", replicates=4000, flips=20000)["model"]
    sign_test = stats.binomtest(23, 40, 0.5).pvalue
    pooled = stats.binomtest(23 * 75, 40 * 75, 0.5).pvalue  # what treating the copies as pairs gives
    assert pooled < 1e-10 and sign_test > 0.4
    for key in ("clean", "mean", "noise"):
        assert result[key]["difference"] == pytest.approx(-6 / 40)
        assert result[key]["p"] == pytest.approx(sign_test, abs=0.015)
        low, high = result[key]["ci"]
        sd = math.sqrt(np.var(np.where(better, -1.0, 1.0)) / 40)  # exact bootstrap sd of the mean
        assert low < 0 < high and high - low == pytest.approx(2 * 1.96 * sd, rel=0.1)
    assert result["mce"]["difference"] == pytest.approx(17 / 23 - 1) and result["mce"]["p"] is None


def test_headline_differences_match_the_metrics_and_the_delta_method():
    rng = np.random.default_rng(0)
    n = 3000
    hard = rng.random(n)  # image difficulty shared by every cell and model
    cells = [("clean", 0)] + [(c, s) for c in ("gaussian_noise", "shot_noise", "fog") for s in (1, 3)]
    per_sample = {(m, c, s): rng.random(n) > 0.2 + 0.4 * hard + 0.03 * s + shift
                  for m, shift in (("base", 0.0), ("model", -0.02)) for c, s in cells}
    tidy = _tidy(per_sample)
    result = C.versus_baseline(tidy, per_sample, "base", replicates=2000)["model"]
    assert result["mean"]["difference"] == pytest.approx(
        M.mean_corruption_error(tidy, "model") - M.mean_corruption_error(tidy, "base"))
    assert result["noise"]["difference"] == pytest.approx(
        M.group_means(tidy, "model")["noise"] - M.group_means(tidy, "base")["noise"])
    assert result["clean"]["difference"] == pytest.approx(M.clean_error(tidy, "model") - M.clean_error(tidy, "base"))
    mce, names = M.baseline_mce(tidy, "model", "base")
    assert result["mce"]["difference"] == pytest.approx(mce - 1) and names == ["gaussian_noise", "shot_noise", "fog"]
    delta = np.array(M.baseline_mce_ci(tidy, per_sample, "model", "base")) - 1  # two methods, one answer
    assert np.array(result["mce"]["ci"]) == pytest.approx(delta, abs=0.1 * (delta[1] - delta[0]))
    assert C.versus_baseline(tidy, {}, "base") == {}  # no per-sample results: nothing to resample

"""Plots: the CE and group bars carry the run's 95% intervals, and every figure has one style."""
import matplotlib.colors as mc
import numpy as np
import pytest

from robustbench_bivol import metrics as M
from robustbench_bivol import plotstyle
from robustbench_bivol import reports
from test_reports import _run

CELLS = [("clean", 0)] + [(c, s) for c in ("gaussian_noise", "shot_noise", "fog", "contrast") for s in (1, 3)]
MODELS = ["static", "bivol"]


@pytest.fixture
def drawn(monkeypatch, tmp_path):
    """Write a run's reports, keeping every figure (stem -> Figure) instead of only its files."""
    figures = {}
    save = plotstyle.save

    def keep(fig, folder, stem):
        figures[stem] = fig
        save(fig, folder, stem)

    monkeypatch.setattr(reports, "save", keep)
    tidy, ps = _run(MODELS, CELLS, n=80)
    summary = reports.write_reports(tmp_path, tidy, per_sample=ps, baseline="static", alexnet_normalisation=False,
                                    command="x")
    return figures, summary, tidy, ps


def _error_bars(fig):
    """(bar top, interval low, interval high) of every drawn error bar, sorted."""
    ax = fig.axes[0]
    segments = [s for collection in ax.collections for s in collection.get_segments()]
    return sorted((round(s[0][1], 6), round(s[1][1], 6)) for s in segments)


def _near(pair, bars):
    return any(np.allclose(pair, bar, atol=1e-3) for bar in bars)


def test_group_bars_carry_summary_intervals(drawn):
    figures, summary, _, _ = drawn
    expected = []
    for model in MODELS:
        entry = summary["models"][model]
        expected += [tuple(entry["group means (unnormalised, %) 95% CI"][g]) for g in ("noise", "weather", "digital")]
        expected.append(tuple(entry[f"{M.LABEL_MEAN_ERROR} 95% CI"]))
    np.testing.assert_allclose(_error_bars(figures["group_summary"]), sorted(expected), atol=1e-3)


def test_ce_bars_carry_per_corruption_and_mce_intervals(drawn):
    figures, summary, tidy, ps = drawn
    bars = _error_bars(figures["ce_by_corruption"])
    mce = tuple(summary["models"]["bivol"][f"{M.label_mce_baseline('static')} 95% CI"])
    assert _near(mce, bars)
    # the CE of one corruption: the mCE interval of the cells of that corruption alone
    fog = tidy[tidy["corruption"].isin(["fog", "clean"])]
    low, high = M.baseline_mce_ci(fog, ps, "bivol", "static")
    assert _near((100 * low, 100 * high), bars)
    widths = [h - l for l, h in bars]
    assert sum(w > 0.5 for w in widths) == 5  # bivol: 4 corruptions + mCE; the baseline's CE is exactly 100
    assert len(bars) == 2 * 5


def test_no_per_sample_results_draw_no_intervals(tmp_path, monkeypatch):
    figures = {}
    monkeypatch.setattr(reports, "save", lambda fig, folder, stem: figures.setdefault(stem, fig))
    tidy, _ = _run(MODELS, CELLS, n=80)
    reports.write_reports(tmp_path, tidy, per_sample={}, baseline="static", alexnet_normalisation=False, command="x")
    assert _error_bars(figures["group_summary"]) == []
    assert "no intervals" in figures["group_summary"].legends[0].get_title().get_text()


def test_every_figure_has_the_shared_style(drawn):
    figures, *_ = drawn
    for stem, fig in figures.items():
        for ax in fig.axes:
            if not ax.get_visible():
                continue
            assert not ax.spines["top"].get_visible(), stem
            colours = [line.get_color() for line in ax.get_lines() if line.get_marker() == "o"]
            colours += [patch.get_facecolor() for patch in ax.patches]
            assert {mc.to_hex(c) for c in colours} <= {c.lower() for c in plotstyle.COLOURS}, stem
        assert fig.legends, stem  # the legend sits above the axes, hiding no data


def test_saved_figures_are_reproducible(tmp_path):
    tidy, ps = _run(MODELS, CELLS, n=40)
    for folder in ("a", "b"):
        reports.write_reports(tmp_path / folder, tidy, per_sample=ps, baseline="static",
                              alexnet_normalisation=False, command="x")
    for svg in (tmp_path / "a" / "plots").glob("*.svg"):
        assert svg.read_bytes() == (tmp_path / "b" / "plots" / svg.name).read_bytes(), svg.name

"""``compare`` merges runs of the same samples; ``sweep`` evaluates a continuous noise parameter
(the band-limited noises included)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from _support import write_image_folder
from click.testing import CliRunner

from robustbench_bivol.checkpoint import CheckpointMeta, save_checkpoint
from robustbench_bivol.cli import main
from robustbench_bivol.data.builtin import CLASSES, render
from robustbench_bivol.metrics import wilson_interval
from robustbench_bivol.models import create_model
from robustbench_bivol.sweep import parameter_grid, sweep_images

N = 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    write_image_folder(root / "data", N)
    meta = CheckpointMeta(arch="resnet20", num_classes=10, input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3,
                          dataset="builtin", classes=list(CLASSES))
    for seed in (0, 1):
        torch.manual_seed(seed)
        save_checkpoint(root / f"r20-{seed}.pt", create_model("resnet20").state_dict(), meta)
        save_checkpoint(root / f"bivol-{seed}.pt", create_model("bivol_resnet20").state_dict(),
                        dataclasses.replace(meta, arch="bivol_resnet20"))
    return root


def _invoke(args):
    result = CliRunner().invoke(main, args)
    return result


def _evaluate(setup, out, weights, *extra, models=("resnet20",)):
    specs = [arg for name, w in zip(models, weights.split("+")) for arg in ("-m", f"{name}={setup / w}")]
    result = _invoke(["evaluate", *specs, "--dataset", str(setup / "data"),
                      "--corruptions", "gaussian_noise", "--severities", "2", "--out", str(out), "--no-progress",
                      *extra])
    assert result.exit_code == 0, result.output
    return pd.read_csv(out / "results.csv")


def test_compare_merges_suffixes_and_refuses(setup, tmp_path):
    a = _evaluate(setup, tmp_path / "runA", "r20-0.pt")
    b = _evaluate(setup, tmp_path / "runB", "r20-1.pt")
    out = tmp_path / "cmp"
    result = _invoke(["compare", str(tmp_path / "runA"), str(tmp_path / "runB"), "--out", str(out),
                      "--baseline", "resnet20@runA"])
    assert result.exit_code == 0, result.output
    merged = pd.read_csv(out / "results.csv")
    assert list(dict.fromkeys(merged["model"])) == ["resnet20@runA", "resnet20@runB"]
    for name, run in (("resnet20@runA", a), ("resnet20@runB", b)):
        mine = merged[merged.model == name].reset_index(drop=True)
        assert mine["correct"].tolist() == run["correct"].tolist() and (mine["n"] == N).all()
    table = pd.read_csv(out / "corruption_errors.csv", index_col=0)
    assert list(table.columns) == ["resnet20@runA", "resnet20@runB"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["baseline"] == "resnet20@runA" and set(summary["models"]) == {"resnet20@runA", "resnet20@runB"}
    assert (out / "plots" / "error_vs_severity.png").is_file()
    report = (out / "report.html").read_text()  # the comparison's page: both runs' models and the runs
    assert "resnet20@runB" in report and "runs.json" in report and "../runA" in report
    assert "<table" in (tmp_path / "runA" / "report.html").read_text()  # and each evaluate run's own

    _evaluate(setup, tmp_path / "small", "r20-0.pt", "--limit", "5")
    refused = _invoke(["compare", str(tmp_path / "runA"), str(tmp_path / "small"), "--out", str(tmp_path / "no")])
    assert refused.exit_code == 2 and "different sample sets" in refused.output
    assert refused.output.count("\n") == 1
    into_run = _invoke(["compare", str(tmp_path / "runA"), str(tmp_path / "runB"), "--out", str(tmp_path / "runA")])
    assert into_run.exit_code == 2 and "is a run folder written by evaluate" in into_run.output
    assert pd.read_csv(tmp_path / "runA" / "results.csv")["model"].unique().tolist() == ["resnet20"]
    other = _invoke(["compare", str(tmp_path / "runA"), str(tmp_path / "nothing")])
    assert other.exit_code == 2 and "run folder not found" in other.output


def test_compare_seeds_writes_the_seed_table(setup, tmp_path):
    runs = []
    for seed in (0, 1):
        runs.append(_evaluate(setup, tmp_path / f"seed{seed}", f"r20-{seed}.pt+bivol-{seed}.pt",
                              models=("resnet20", "bivol_resnet20")))
    out = tmp_path / "seeds"
    result = _invoke(["compare", str(tmp_path / "seed0"), str(tmp_path / "seed1"), "--seeds", "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "seeds.csv", index_col=["architecture", "metric"])
    assert set(table["seeds"]) == {2} and "| bivol_resnet20 |" in (out / "seeds.md").read_text()
    clean = [100 * (1 - run.query("model == 'bivol_resnet20' and corruption == 'clean'")["correct"].item() / N)
             for run in runs]
    spread = table.loc[("bivol_resnet20", "clean error (%)"), "mean ± sd across seeds (%)"]
    assert spread == f"{np.mean(clean):.2f} ± {np.std(clean, ddof=1):.2f}"
    stored = json.loads((out / "seeds.json").read_text())
    assert stored["baseline"] == "resnet20" and "Welch-Satterthwaite" in stored["method"]
    assert stored["architectures"]["bivol_resnet20"]["mean"]["interval"] == "t, seed + image variance"

    one = _invoke(["compare", str(tmp_path / "seed0"), "--seeds", "--out", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    assert set(pd.read_csv(tmp_path / "one" / "seeds.csv")["seeds"]) == {1}
    _evaluate(setup, tmp_path / "lone", "r20-1.pt")
    refused = _invoke(["compare", str(tmp_path / "seed0"), str(tmp_path / "lone"), "--seeds"])
    assert refused.exit_code == 2 and "same models" in refused.output and refused.output.count("\n") == 1


def test_a_merged_folder_counts_as_one_run(setup, tmp_path):
    """The CIFAR-10 study's layout: one run per model, merged by compare; --seeds on the merged
    folders gives the table --seeds gives on one run per seed holding every model, even after the
    merged folders moved with their runs."""
    for seed in (0, 1):
        _evaluate(setup, tmp_path / f"whole{seed}", f"r20-{seed}.pt+bivol-{seed}.pt",
                  models=("resnet20", "bivol_resnet20"))
        study = tmp_path / "moved" / f"study{seed}"
        for name, weights in (("resnet20", f"r20-{seed}.pt"), ("bivol_resnet20", f"bivol-{seed}.pt")):
            _evaluate(setup, study / "runs" / name, weights, models=(name,))
        merged = _invoke(["compare", str(study / "runs" / "resnet20"), str(study / "runs" / "bivol_resnet20"),
                          "--out", str(study)])
        assert merged.exit_code == 0, merged.output
    (tmp_path / "moved").rename(tmp_path / "elsewhere")
    whole = _invoke(["compare", str(tmp_path / "whole0"), str(tmp_path / "whole1"), "--seeds",
                     "--out", str(tmp_path / "seeds-whole")])
    split = _invoke(["compare", str(tmp_path / "elsewhere" / "study0"), str(tmp_path / "elsewhere" / "study1"),
                     "--seeds", "--out", str(tmp_path / "seeds-split")])
    assert whole.exit_code == 0 and split.exit_code == 0, whole.output + split.output
    assert (tmp_path / "seeds-split" / "seeds.csv").read_text() == (tmp_path / "seeds-whole" / "seeds.csv").read_text()
    assert "| bivol_resnet20 |" in (tmp_path / "seeds-split" / "seeds.md").read_text()
    again = _invoke(["compare", str(tmp_path / "elsewhere" / "study0"), str(tmp_path / "whole1"),
                     "--out", str(tmp_path / "again")])
    assert again.exit_code == 0, again.output
    assert set(pd.read_csv(tmp_path / "again" / "results.csv")["model"]) == {
        "resnet20@study0", "bivol_resnet20@study0", "resnet20@whole1", "bivol_resnet20@whole1"}


def test_sweep_writes_csv_and_plots(setup, tmp_path):
    clean = _evaluate(setup, tmp_path / "run", "r20-0.pt")
    out = tmp_path / "sweep"
    result = _invoke(["sweep", "-m", f"resnet20={setup / 'r20-0.pt'}", "-m", f"resnet56={setup / 'r20-0.pt'}",
                      "--dataset", str(setup / "data"), "--corruption", "gaussian_noise", "--max", "0.5",
                      "--steps", "3", "--out", str(out), "--no-progress"])
    # resnet56 with resnet20 weights is refused before any work
    assert result.exit_code != 0 and "Traceback" not in result.output
    result = _invoke(["sweep", "-m", f"resnet20={setup / 'r20-0.pt'}", "--dataset", str(setup / "data"),
                      "--corruption", "gaussian_noise", "--max", "0.5", "--steps", "3", "--out", str(out),
                      "--no-progress"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "sweep.csv")
    assert list(table.columns) == ["corruption", "model", "parameter", "n", "correct", "accuracy",
                                   "accuracy_low", "accuracy_high"]
    assert ((table["accuracy_low"] <= table["accuracy"]) & (table["accuracy"] <= table["accuracy_high"])).all()
    assert table["accuracy_low"].iloc[0] == pytest.approx(wilson_interval(table["correct"].iloc[0], N)[0])
    assert table["parameter"].tolist() == pytest.approx([0.0, 0.25, 0.5])
    assert (table["n"] == N).all()
    clean_correct = clean[clean.corruption == "clean"]["correct"].item()
    assert table["correct"].iloc[0] == clean_correct  # sigma 0 is the clean image
    assert (out / "sweep.png").is_file() and (out / "sweep.svg").is_file()
    bad = _invoke(["sweep", "-m", f"resnet20={setup / 'r20-0.pt'}", "--dataset", str(setup / "data"),
                   "--corruption", "fog", "--max", "1", "--out", str(out)])
    assert bad.exit_code == 2 and "cannot be swept" in bad.output
    bands = _invoke(["sweep", "-m", f"resnet20={setup / 'r20-0.pt'}", "--dataset", str(setup / "data"),
                     "--corruption", "band_noise", "--max", "0.2", "--steps", "2", "--out", str(tmp_path / "bands"),
                     "--no-progress"])
    assert bands.exit_code == 0, bands.output
    table = pd.read_csv(tmp_path / "bands" / "sweep.csv")
    assert table["corruption"].tolist() == ["band_noise_low"] * 2 + ["band_noise_mid"] * 2 + ["band_noise_high"] * 2
    assert (table[table["parameter"] == 0]["correct"] == clean_correct).all()


@pytest.mark.parametrize("name,grid", [("gaussian_noise", (0.5, 5, None)), ("shot_noise", (100, 4, 2)),
                                       ("impulse_noise", (0.3, 4, None)), ("band_noise_low", (0.3, 4, None)),
                                       ("band_noise_high", (0.3, 4, None))])
def test_sweep_ops_are_seeded_and_monotone(name, grid):
    images, _ = render(np.arange(4))
    params = parameter_grid(name, grid[0], grid[1], grid[2])
    distances = []
    for c in params:
        a = sweep_images(images, [0, 1, 2, 3], name, float(c), seed=0)
        b = sweep_images(images[[2, 3]], [2, 3], name, float(c), seed=0)
        assert a.dtype == torch.uint8 and torch.equal(a[2:], b)  # per-image streams, batch-independent
        distances.append((a.float() - images.float()).abs().mean().item())
    strength = distances if name != "shot_noise" else distances[::-1]  # more photons, less noise
    assert strength == sorted(strength)
    if name != "shot_noise":
        assert distances[0] == 0.0

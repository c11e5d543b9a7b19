"""End to end: ``bivol-robust evaluate`` on a tiny subset, figures recounted independently."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from _support import make_checkpoint
from click.testing import CliRunner

import corruptions
from robustbench_bivol.api import BUILTIN_DEFAULT_LIMIT
from robustbench_bivol.cli import main
from robustbench_bivol.data import BuiltinShapes, balanced_subset
from robustbench_bivol.models import create_model
from robustbench_bivol.weights import bundled_tags

LIMIT, CORRUPTIONS, SEVERITIES = 30, ["gaussian_noise", "contrast"], [1, 3]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A resnet20 with random weights whose predictions vary: what matters is the bookkeeping."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "resnet20.pt")


def _run(args: list[str]) -> str:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _recount(checkpoint, severity_cells):
    """Corrupt and classify with the public APIs directly, without the engine."""
    model = create_model("resnet20", weights=str(checkpoint)).eval()
    data = BuiltinShapes("test", 32, seed=0)
    indices = balanced_subset(data.labels.numpy(), LIMIT)
    images, labels = data.images[indices], data.labels[indices]
    mean, std = torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.25)
    counts = {}
    for corruption, severity in severity_cells:
        x = images if corruption == "clean" else corruptions.corrupt(
            images, corruption, severity, seed=0, indices=indices.tolist())
        with torch.no_grad():
            pred = model((x.float() / 255 - mean) / std).argmax(1)
        counts[(corruption, severity)] = int((pred == labels).sum())
    return counts


def test_evaluate_tiny_subset_recounts(tmp_path, checkpoint):
    out = tmp_path / "run"
    output = _run(["evaluate", "--model", f"resnet20={checkpoint}", "--limit", str(LIMIT),
                   "--corruptions", ",".join(CORRUPTIONS), "--severities", "1,3", "--out", str(out),
                   "--no-progress"])
    tidy = pd.read_csv(out / "results.csv")
    cells = [("clean", 0)] + [(c, s) for c in CORRUPTIONS for s in SEVERITIES]
    assert len(tidy) == len(cells)
    assert (tidy["n"] == LIMIT).all()
    expected = _recount(checkpoint, cells)
    for row in tidy.itertuples():
        assert row.correct == expected[(row.corruption, row.severity)], (row.corruption, row.severity)
    assert tidy["error (%)"].to_numpy() == pytest.approx(100 * (1 - tidy["correct"] / tidy["n"]).to_numpy())
    table = pd.read_csv(out / "corruption_errors.csv", index_col=0)
    for corruption in CORRUPTIONS:
        mean_error = np.mean([1 - expected[(corruption, s)] / LIMIT for s in SEVERITIES]) * 100
        assert table.loc[corruption, "resnet20"] == pytest.approx(mean_error, abs=1e-4)  # CSV keeps 4 decimals
    assert len(set(tidy["correct"])) > 1  # the recount compares varying figures
    assert (out / "corruption_errors.md").read_text().count("|") > 10
    assert "resnet20" in output

    # Rerunning the same command resumes: nothing left to do, identical results.
    _run(["evaluate", "--model", f"resnet20={checkpoint}", "--limit", str(LIMIT), "--corruptions",
          ",".join(CORRUPTIONS), "--severities", "1,3", "--out", str(out), "--no-progress"])
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), tidy)


BUNDLED = ["resnet20", "bivol_resnet20", "condconv_resnet20", "dyconv_resnet20", "involution_resnet20"]


def test_evaluate_default_compares_all_bundled_models(tmp_path):
    assert all("builtin" in bundled_tags(name) for name in BUNDLED)
    out = tmp_path / "run"
    _run(["evaluate", "--limit", "50", "--corruptions", "gaussian_noise", "--severities", "5",
          "--out", str(out), "--no-progress"])
    tidy = pd.read_csv(out / "results.csv")
    assert list(dict.fromkeys(tidy["model"])) == BUNDLED  # the static baseline first
    clean = tidy[tidy.corruption == "clean"].set_index("model")["error (%)"]
    assert (clean < 50).all(), clean  # trained weights, far from chance (90%)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["baseline"] == "resnet20"


def test_builtin_default_is_a_balanced_subset_in_its_own_folder(tmp_path, monkeypatch, checkpoint):
    """Without --limit the built-in dataset is evaluated on BUILTIN_DEFAULT_LIMIT class-balanced
    images, in a folder named for it, so the full run (--limit 1000) does not collide with it."""
    monkeypatch.chdir(tmp_path)
    output = _run(["evaluate", "-m", f"resnet20={checkpoint}", "--corruptions", "gaussian_noise", "--severities", "5",
                   "--no-progress"])
    run = tmp_path / "runs" / f"builtin-resnet20-{BUILTIN_DEFAULT_LIMIT}img"
    tidy = pd.read_csv(run / "results.csv")
    assert (tidy["n"] == BUILTIN_DEFAULT_LIMIT).all()
    labels = BuiltinShapes("test", 32, seed=0).labels.numpy()
    assert json.loads((run / "run.json").read_text())["n_samples"] == len(balanced_subset(labels, BUILTIN_DEFAULT_LIMIT))
    assert f"{BUILTIN_DEFAULT_LIMIT} images per cell" in output and " ± " in output
    assert (run / "report.html").is_file()


def test_unknown_model_is_one_line_error(tmp_path):
    result = CliRunner().invoke(main, ["evaluate", "--model", "resnet21", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: unknown model 'resnet21'. Did you mean 'resnet20'?")
    assert "Traceback" not in result.output


def test_cuda_evaluation_runs_in_full_float32(monkeypatch):
    """TF32 moved borderline predictions on a GPU (4 of 380 cells off by one image on an H200):
    choosing a CUDA device switches it off, so GPU and CPU runs report the same figures."""
    from robustbench_bivol.evaluation.run import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:  # the cuBLAS flag is a property of a module proxy: monkeypatch cannot restore it
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        assert pick_device("cpu") == "cpu"
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        assert pick_device("cuda:1") == "cuda:1"
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

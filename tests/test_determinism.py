"""``evaluate`` gives the same numbers whatever the batch size or the number of decoding workers.

A corrupted image depends only on (seed, sample index, corruption, severity), so splitting the
subset into batches of 1, 7 or 64 images, or decoding it in worker processes, must not change a
single prediction. The corruptions cover a random one (gaussian_noise) and ones that draw spatial
randomness (glass_blur, elastic_transform).

That ``corruptions.corrupt`` on a batch equals per-image calls, for all 19 corruptions at 32 px,
is tested in tests/test_corruptions_api.py::test_batch_equals_single_images (not repeated here).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from robustbench_bivol.checkpoint import CheckpointMeta, save_checkpoint
from robustbench_bivol.cli import main
from robustbench_bivol.data import BuiltinShapes
from robustbench_bivol.models import create_model

LIMIT = 30
CORRUPTIONS = "gaussian_noise,glass_blur,elastic_transform"
SEVERITIES = "3"


def make_checkpoint(path: Path) -> Path:
    """Random resnet20 with BatchNorm statistics calibrated on a few built-in images, so that its
    predictions vary from image to image (an uncalibrated random net predicts one class). The test
    split is used because generating the 20k-image train split takes minutes."""
    torch.manual_seed(0)
    model = create_model("resnet20")
    x = (BuiltinShapes("test", 32, seed=0).images[-128:].float() / 255 - 0.5) / 0.25
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
    meta = CheckpointMeta(arch="resnet20", num_classes=10, input_size=32, mean=(0.5, 0.5, 0.5),
                          std=(0.25, 0.25, 0.25), dataset="builtin", classes=list(BuiltinShapes.classes))
    save_checkpoint(path, model.state_dict(), meta)
    return path


def store_predictions(run: Path) -> dict[tuple[str, str], np.ndarray]:
    """{(cell folder, 'labels' | model): array ordered by sample index} from the run's cell files."""
    out: dict[tuple[str, str], np.ndarray] = {}
    for cell in sorted(p for p in (run / "cells").iterdir() if p.is_dir()):
        parts = [np.load(f) for f in sorted(cell.glob("shard-*.npz"))]
        indices = np.concatenate([p["indices"] for p in parts])
        order = np.argsort(indices, kind="stable")
        out[(cell.name, "indices")] = indices[order]
        out[(cell.name, "labels")] = np.concatenate([p["labels"] for p in parts])[order]
        for key in parts[0].files:
            if key.startswith("pred::"):
                out[(cell.name, key)] = np.concatenate([p[key] for p in parts])[order]
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "resnet20.pt")


def _evaluate(checkpoint: Path, out: Path, *extra: str) -> Path:
    args = ["evaluate", "--model", f"resnet20={checkpoint}", "--limit", str(LIMIT), "--corruptions", CORRUPTIONS,
            "--severities", SEVERITIES, "--device", "cpu", "--out", str(out), "--no-progress", *extra]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def reference(checkpoint, tmp_path_factory) -> Path:
    return _evaluate(checkpoint, tmp_path_factory.mktemp("ref") / "run", "--batch-size", "64", "--workers", "0")


def test_reference_predictions_are_not_trivial(reference):
    predictions = store_predictions(reference)
    assert len({k[0] for k in predictions}) == 4  # clean + 3 corruptions at one severity
    for (cell, key), values in predictions.items():
        if key.startswith("pred::"):
            assert len(values) == LIMIT
            assert len(np.unique(values)) > 1, f"{cell}: constant predictions make the comparison vacuous"
    clean = predictions[("clean_s0", "pred::resnet20")]
    assert any(not np.array_equal(clean, predictions[(c, "pred::resnet20")])
               for c in ("gaussian_noise_s3", "glass_blur_s3", "elastic_transform_s3"))


@pytest.mark.parametrize("options", [("--batch-size", "1"), ("--batch-size", "7"), ("--workers", "2")],
                         ids=["batch1", "batch7", "workers2"])
def test_same_results_for_batch_size_and_workers(checkpoint, reference, tmp_path, options):
    run = _evaluate(checkpoint, tmp_path / "run", *options)
    assert (run / "results.csv").read_text() == (reference / "results.csv").read_text()
    got, want = store_predictions(run), store_predictions(reference)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=str(key))

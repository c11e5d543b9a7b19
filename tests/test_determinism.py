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
from click.testing import CliRunner

from robustbench_bivol.cli import main
from _support import make_checkpoint, store_predictions

LIMIT = 30
CORRUPTIONS = "gaussian_noise,glass_blur,elastic_transform"
SEVERITIES = "3"


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

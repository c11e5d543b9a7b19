"""``fourier``: Fourier-basis heat maps (Yin et al. 2019).

The basis equals the authors' FFT construction; a model that blurs its input before classifying
is fragile at low frequencies only (and a horizontal blur only along j); results do not depend on
the batch size or the number of torchrun ranks, and a stopped run resumes without redoing finished
frequencies.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from _support import SIZE, BlurThenDetect, GreyImages, make_checkpoint, store_predictions
from click.testing import CliRunner

from robustbench_bivol import fourier as fourier_module
from robustbench_bivol.cli import main
from robustbench_bivol.evaluation.store import RunStore
from robustbench_bivol.fourier import fourier_basis, fourier_heatmap, perturb, random_signs
from robustbench_bivol.frequency_grid import conjugate, frequencies, half_plane, representative



def _fft_basis(height: int, width: int, i: int, j: int) -> np.ndarray:
    """The released code's construction: (1+1j)/2 at the representative (i, j), (1-1j)/2 at its
    mirror (1 if they coincide), inverse FFT, real part, unit norm."""
    spectrum = np.zeros((height, width), dtype=complex)
    i, j = representative(i, j, height, width)
    ci, cj = conjugate(i, j, height, width)
    if (ci, cj) == (i, j):
        spectrum[i % height, j % width] = 1
    else:
        spectrum[i % height, j % width], spectrum[ci % height, cj % width] = 0.5 + 0.5j, 0.5 - 0.5j
    u = np.real(np.fft.ifft2(spectrum))
    return u / np.linalg.norm(u)


@pytest.mark.parametrize("height,width", [(8, 8), (7, 9), (6, 5)])
def test_basis_is_the_fft_construction_and_the_half_plane_covers_each_pair_once(height, width):
    full = {(i, j) for i in frequencies(height) for j in frequencies(width)}
    half = half_plane(height, width)
    assert len(half) == len(set(half)) and {conjugate(i, j, height, width) for i, j in half} | set(half) == full
    assert len(half) == (height * width + sum(conjugate(i, j, height, width) == (i, j) for i, j in full)) // 2
    for i, j in full:
        u = fourier_basis(height, width, i, j)
        np.testing.assert_allclose(u.double().numpy(), _fft_basis(height, width, i, j), atol=1e-6)
        assert torch.equal(u, fourier_basis(height, width, *conjugate(i, j, height, width)))
    assert len(half_plane(32, 32)) == 514 and len(half_plane(32, 32, stride=4)) == 34


def test_perturbation_has_norm_eps_per_channel_and_is_clipped():
    grey = torch.full((2, 3, SIZE, SIZE), 128, dtype=torch.uint8)
    signs = random_signs(0, np.array([5, 9]), SIZE, SIZE)[:, :, 3, 14]  # frequency (3, -2)
    x = perturb(grey, 3, -2, 0.5, signs)
    delta = (x - 128) / 255
    expected = signs.float().view(2, 3, 1, 1) * 0.5 * fourier_basis(SIZE, SIZE, 3, -2)
    np.testing.assert_allclose(delta.numpy(), expected.numpy(), atol=1e-6)
    np.testing.assert_allclose(delta.flatten(2).norm(dim=2).numpy(), 0.5, rtol=1e-5)
    strong = perturb(grey, 3, -2, 50.0, signs)
    assert strong.min() == 0 and strong.max() == 255
    assert not torch.equal(random_signs(0, np.array([5]), SIZE, SIZE), random_signs(1, np.array([5]), SIZE, SIZE))
    assert torch.equal(random_signs(0, np.array([9]), SIZE, SIZE)[0], random_signs(0, np.array([5, 9]), SIZE, SIZE)[1])


def _error_grid(table: pd.DataFrame, model: str) -> dict[tuple[int, int], float]:
    rows = table[(table["model"] == model) & (table["eps"] > 0)]
    grid = {}
    for i, j, error in zip(rows["i"], rows["j"], rows["error"]):
        grid[(i, j)] = grid[conjugate(i, j, SIZE, SIZE)] = error
    return grid


def test_blurring_model_is_fragile_at_low_frequencies_only():
    models = {"blur": BlurThenDetect(), "horizontal_blur": BlurThenDetect(horizontal_only=True)}
    results = fourier_heatmap(models, GreyImages(4), eps=1.0, mean=(0.0,) * 3, std=(1.0,) * 3, device="cpu",
                              progress=False)
    table = results.table
    assert len(table) == 2 * (1 + len(half_plane(SIZE, SIZE))) and (table["n"] == 4).all()
    assert table[table["eps"] == 0]["error"].tolist() == [0.0, 0.0]  # clean images are 'unchanged'
    blur, horizontal = _error_grid(table, "blur"), _error_grid(table, "horizontal_blur")
    radius = {f: math.hypot(*f) for f in blur}
    assert all(blur[f] == 1.0 for f in blur if radius[f] <= 1.5)  # low frequencies pass the blur: detected
    assert all(blur[f] == 0.0 for f in blur if radius[f] >= 4)  # high frequencies are blurred away
    assert horizontal[(SIZE // 2 - 1, 0)] == 1.0 and horizontal[(0, SIZE // 2 - 1)] == 0.0  # i is vertical
    assert all(horizontal[(i, 0)] == 1.0 for i in frequencies(SIZE))  # no vertical blur: always detected


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("fourier") / "resnet20.pt")


def _cli(checkpoint, out, *extra):
    return CliRunner().invoke(main, ["fourier", "-m", f"resnet20={checkpoint}", "--limit", "12", "--stride", "4",
                                     "--device", "cpu", "--out", str(out), "--no-progress", *extra])


@pytest.fixture(scope="module")
def reference(checkpoint, tmp_path_factory):
    """One plain process, batches of 64."""
    out = tmp_path_factory.mktemp("fourier-run") / "b64"
    result = _cli(checkpoint, out, "--batch-size", "64")
    assert result.exit_code == 0, result.output
    return out


def _assert_same_run(got, want):
    assert (got / "fourier.csv").read_text() == (want / "fourier.csv").read_text()
    a, b = store_predictions(got), store_predictions(want)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_same_results_for_batch_sizes_1_and_64(checkpoint, reference, tmp_path):
    result = _cli(checkpoint, tmp_path / "b1", "--batch-size", "1")
    assert result.exit_code == 0, result.output
    _assert_same_run(tmp_path / "b1", reference)
    table = pd.read_csv(reference / "fourier.csv")
    assert list(table.columns) == ["model", "i", "j", "eps", "n", "error"] and len(table) == 1 + 34
    assert table["error"].nunique() > 1  # the heat map is not flat
    assert {"fourier.png", "fourier.svg", "fourier-resnet20.png"} <= {p.name for p in reference.iterdir()}


def test_two_torchrun_ranks_match_one_process(checkpoint, reference, tmp_path):
    """Shards of 6 of the 12 images: each rank perturbs and evaluates one, rank 0 writes both."""
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    out = tmp_path / "ranks"
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "robustbench_bivol", "fourier",
                           "-m", f"resnet20={checkpoint}", "--limit", "12", "--stride", "4", "--device", "cpu",
                           "--shard-size", "6", "--out", str(out), "--no-progress"],
                          cwd=tmp_path, env={**env, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""},
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert len(list((out / "cells" / "fourier_4_4_s0").iterdir())) == 2
    _assert_same_run(out, reference)


def test_stopped_run_resumes_without_redoing_frequencies(checkpoint, tmp_path, monkeypatch):
    full = tmp_path / "full"
    assert _cli(checkpoint, full).exit_code == 0
    real_write, written = RunStore.write, []

    def write_then_stop(self, cell, shard, result):
        if len(written) == 5:
            raise KeyboardInterrupt
        real_write(self, cell, shard, result)
        written.append(cell)

    monkeypatch.setattr(RunStore, "write", write_then_stop)
    stopped = _cli(checkpoint, tmp_path / "stopped")
    assert stopped.exit_code == 130 and not (tmp_path / "stopped" / "fourier.csv").exists()
    monkeypatch.setattr(RunStore, "write", real_write)
    calls = []
    real_perturb = fourier_module.perturb
    monkeypatch.setattr(fourier_module, "perturb", lambda images, i, j, *a: calls.append((i, j)) or
                        real_perturb(images, i, j, *a))
    resumed = _cli(checkpoint, tmp_path / "stopped")
    assert resumed.exit_code == 0, resumed.output
    assert len(calls) == 34 + 1 - 5  # one batch per frequency not yet stored (the clean cell was stored first)
    assert (tmp_path / "stopped" / "fourier.csv").read_text() == (full / "fourier.csv").read_text()


@pytest.mark.parametrize("extra,message", [(("--eps", "-1"), "--eps must be > 0"),
                                           (("--eps", "four"), "comma-separated numbers"),
                                           (("--stride", "0"), "--stride")])
def test_bad_options_are_one_line_errors(checkpoint, tmp_path, extra, message):
    result = _cli(checkpoint, tmp_path / "bad", *extra)
    assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1

"""Band-limited Gaussian noise: each band's noise lies in its ring of frequencies and has the same
L2 norm; a model that blurs its input ignores high-band noise and fails under low-band noise."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _support import SIZE, BlurThenDetect, GreyImages

from corruptions.ops.bandlimited import BANDS, band_mask, band_noise
from corruptions.philox import Streams
from robustbench_bivol.evaluation.run import load_models, open_for_models
from robustbench_bivol.sweep import run_sweep


def test_bands_partition_the_frequencies_but_the_mean():
    masks = torch.stack([band_mask(SIZE, SIZE + 3, band) for band in BANDS])
    every_once = torch.ones(SIZE, SIZE + 3, dtype=torch.int64)
    every_once[0, 0] = 0  # the mean, rho = 0, is in no band
    assert torch.equal(masks.sum(0), every_once)
    assert [int(m.sum()) for m in masks] == sorted(int(m.sum()) for m in masks)  # rings widen outwards


@pytest.mark.parametrize("band", list(BANDS))
def test_noise_is_in_its_band_with_the_requested_norm(band):
    x = torch.full((3, 3, SIZE, SIZE), 0.5)
    streams = Streams.for_images(0, range(3), f"band_noise_{band}", 0)
    noise = (band_noise(x, 0.05, streams, band) - x).double()
    np.testing.assert_allclose(noise.flatten(1).norm(dim=1).numpy(), 0.05 * math.sqrt(3 * SIZE * SIZE), rtol=1e-5)
    spectrum = torch.fft.fft2(noise).abs().pow(2)
    outside = spectrum[..., ~band_mask(SIZE, SIZE, band)].sum() / spectrum.sum()
    assert outside < 1e-10


def test_blurring_model_ignores_high_band_noise_only():
    data = GreyImages(6)
    entries = load_models({"blur": BlurThenDetect()}, None, data, mean=(0.0,) * 3, std=(1.0,) * 3)
    data = open_for_models(data, entries, split="test", seed=0)
    grids = {f"band_noise_{band}": np.array([0.0, 0.1]) for band in BANDS}
    table, _ = run_sweep(entries, data, np.arange(6), grids, progress=False)
    accuracy = table.set_index(["corruption", "parameter"])["accuracy"]
    assert (accuracy.xs(0.0, level="parameter") == 1.0).all()  # clean grey images are 'unchanged'
    assert accuracy[("band_noise_low", 0.1)] == 0.0 and accuracy[("band_noise_high", 0.1)] == 1.0

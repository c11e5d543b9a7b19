"""`bivol-robust corrupt` (ImageNet-C and CIFAR-10-C layouts, resume) and `show`, through the CLI."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import corruptions as C
from robustbench_bivol.cli import main
from robustbench_bivol.data import balanced_subset, dataset_labels

NAMES = ("gaussian_noise", "contrast")
LIMIT = 20


@pytest.fixture(scope="module", autouse=True)
def cached_builtin():
    """Build the builtin test split once: the CLI reopens it on every call (seconds each)."""
    import robustbench_bivol.data as data_module

    original = data_module.open_dataset
    cache: dict = {}

    def cached(spec, **kwargs):
        key = (spec, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = original(spec, **kwargs)
        return cache[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data_module, "open_dataset", cached)
        yield


@pytest.fixture(scope="module")
def subset(cached_builtin: None) -> tuple[torch.Tensor, np.ndarray, np.ndarray, list[str]]:
    """The images, labels and indices that `corrupt --limit 20` renders (builtin, 32 px, seed 0)."""
    import robustbench_bivol.data as data_module

    data = data_module.open_dataset("builtin", split="test", size=32, seed=0)
    indices = balanced_subset(dataset_labels(data), LIMIT)
    items = [data[int(i)] for i in indices]
    images = torch.stack([image for image, _ in items])
    labels = np.asarray([label for _, label in items], dtype=np.int64)
    return images, labels, indices, list(data.classes)


def run_corrupt(out: Path, layout: str) -> str:
    result = CliRunner().invoke(main, ["corrupt", "--dataset", "builtin", "--limit", str(LIMIT), "--out", str(out),
                                       "--layout", layout, "--corruptions", ",".join(NAMES), "--no-progress"])
    assert result.exit_code == 0, result.output
    return result.output


def written(output: str) -> int:
    match = re.search(r"wrote (\d+) files", output)
    assert match, output
    return int(match.group(1))


def test_imagenet_c_layout(tmp_path: Path, subset) -> None:
    images, labels, indices, classes = subset
    out = tmp_path / "inc"
    assert written(run_corrupt(out, "imagenet-c")) == LIMIT * len(NAMES) * 5
    files = sorted(out.rglob("*.JPEG"))
    assert len(files) == LIMIT * len(NAMES) * 5
    for f in files:
        name, severity, cls = f.relative_to(out).parts[:3]
        assert name in NAMES and severity in "12345" and cls in classes
        with Image.open(f) as im:
            assert im.size == (32, 32) and im.convert("RGB").getbbox() is not None
    # one rendered file equals the JPEG-85 round trip of corrupt() for that dataset index
    k = 3
    index, label = int(indices[k]), int(labels[k])
    for name in NAMES:
        for severity in (1, 5):
            path = out / name / str(severity) / classes[label] / f"{index:06d}.JPEG"
            with Image.open(path) as im:
                rendered = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
            expected = C.corrupt(images[k], name, severity, seed=0, indices=[index], jpeg_quality=85)
            assert torch.equal(rendered, expected), (name, severity)
    # rerunning resumes: everything exists, nothing is written
    assert written(run_corrupt(out, "imagenet-c")) == 0


def test_cifar_c_layout(tmp_path: Path, subset) -> None:
    images, labels, indices, _ = subset
    out = tmp_path / "cc"
    assert written(run_corrupt(out, "cifar-c")) == len(NAMES) + 1
    for name in NAMES:
        array = np.load(out / f"{name}.npy")
        assert array.shape == (5 * LIMIT, 32, 32, 3) and array.dtype == np.uint8
        for severity in C.SEVERITIES:
            expected = C.corrupt(images, name, severity, seed=0, indices=indices.tolist())
            block = torch.from_numpy(array[(severity - 1) * LIMIT:severity * LIMIT]).permute(0, 3, 1, 2)
            assert torch.equal(block, expected), (name, severity)
    assert np.array_equal(np.load(out / "labels.npy"), np.tile(labels, 5))
    assert written(run_corrupt(out, "cifar-c")) == 0


def test_show_writes_grid_png(tmp_path: Path, subset) -> None:
    images = subset[0]
    source = tmp_path / "clean.png"
    Image.fromarray(images[0].permute(1, 2, 0).numpy()).save(source)
    target = tmp_path / "grid.png"
    result = CliRunner().invoke(main, ["show", str(source), "--out", str(target), "--size", "32",
                                       "--corruptions", ",".join(NAMES)])
    assert result.exit_code == 0, result.output
    with Image.open(target) as png:
        assert png.format == "PNG"
        grid = torch.from_numpy(np.array(png.convert("RGB"))).permute(2, 0, 1)
    # 6 columns (clean + 5 severities) x one row per corruption, 2 px padding, below a header row
    # (severities) and right of a column of corruption names
    left, top = grid.shape[2] - (6 * (32 + 2) + 2), grid.shape[1] - (len(NAMES) * (32 + 2) + 2)
    assert left > 0 and top > 0
    for row, name in enumerate(NAMES):
        y = top + 2 + row * 34
        assert (grid[:, y:y + 32, :left] < 128).any(), f"no label left of row {name}"
        for column, severity in enumerate((0, *C.SEVERITIES)):
            x = left + 2 + column * 34
            expected = images[0] if severity == 0 else C.corrupt(images[0], name, severity, seed=0, indices=[0])
            assert torch.equal(grid[:, y:y + 32, x:x + 32], expected), (name, severity)
            if row == 0:
                assert (grid[:, :top, x:x + 32] < 128).any(), f"no label above column {column}"

"""Datasets read as they are on disk: ImageFolder edge cases, pre-rendered layouts, CIFAR-10."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from robustbench_bivol.checkpoint import CheckpointMeta, save_checkpoint
from robustbench_bivol.cli import main
from robustbench_bivol.data import BuiltinShapes, ImageFolderDataset, open_dataset
from robustbench_bivol.data.builtin import CLASSES, render
from robustbench_bivol.data.prerendered import CifarCFolder, ImageNetCFolder, detect_layout
from robustbench_bivol.errors import DatasetError
from robustbench_bivol.evaluation.engine import EvalPlan, ModelEntry, evaluate
from robustbench_bivol.evaluation.run import check_classes, collect
from robustbench_bivol.evaluation.store import RunStore
from robustbench_bivol.models import create_model
from robustbench_bivol.rendering import render_dataset

N = 10
CELLS = (["gaussian_noise", "contrast"], [1, 3])


def make_model(path):
    """A random resnet20 with calibrated BN and standardised logits: varied predictions."""
    torch.manual_seed(0)
    model = create_model("resnet20")
    x = (render(np.arange(40))[0].float() / 255 - 0.5) / 0.25
    model.train()
    with torch.no_grad():
        model(x)
        model.eval()
        logits = model(x)
        mean, std = logits.mean(0), logits.std(0).clamp_min(1e-6)
        model.fc.weight.div_(std[:, None])
        model.fc.bias.sub_(mean).div_(std)
    meta = CheckpointMeta(arch="resnet20", num_classes=10, input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3,
                          dataset="builtin", classes=list(CLASSES))
    save_checkpoint(path, model.state_dict(), meta)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("ckpt") / "resnet20.pt")


@pytest.fixture(scope="module")
def builtin():
    return BuiltinShapes("test", 32, seed=0, length=N)


def _entry(checkpoint) -> ModelEntry:
    from robustbench_bivol.evaluation.loading import load_entry

    return load_entry(f"resnet20={checkpoint}", None)


def _evaluate(data, checkpoint, out, corruption_names, severities, include_clean=True, on_bad_image="fail"):
    entry = _entry(checkpoint)
    check_classes(data, [entry])
    plan = EvalPlan(dataset_name=data.name, indices=np.arange(len(data)), corruption_names=corruption_names,
                    severities=severities, include_clean=include_clean, shard_size=5)
    store = RunStore.open(out, plan.config([entry]))
    evaluate(plan, [entry], data, store, batch_size=5, progress=False, on_bad_image=on_bad_image)
    return collect(store, plan.cells, len(plan.shards), [entry.name], plan.indices)


# ----------------------------------------------------------------------------- ImageFolder

def _write(folder, name, image, **kwargs):
    folder.mkdir(parents=True, exist_ok=True)
    image.save(folder / name, **kwargs)


@pytest.fixture()
def odd_folder(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    root = tmp_path / "odd"
    _write(root / "a", "gray.png", Image.fromarray(rgb[..., 0]))
    _write(root / "a", "rgba.png", Image.fromarray(np.dstack([rgb, rgb[..., :1]])))
    _write(root / "a", "cmyk.jpg", Image.fromarray(rgb).convert("CMYK"))
    _write(root / "b", "deep.png", Image.fromarray(rgb[..., 0].astype(np.uint16) * 257))
    _write(root / "b", "small.png", Image.fromarray(rgb[:7, :11]))
    return root


def test_image_folder_converts_modes_and_enlarges_small_images(odd_folder):
    data = ImageFolderDataset(odd_folder, size=32)
    assert data.classes == ["a", "b"]
    for i in range(len(data)):
        image, label = data[i]
        assert image.shape == (3, 32, 32) and image.dtype == torch.uint8, data.samples[i]
    gray = data[[p.endswith("gray.png") for p, _ in data.samples].index(True)][0]
    assert torch.equal(gray[0], gray[1])  # grayscale replicated to three channels
    deep = data[[p.endswith("deep.png") for p, _ in data.samples].index(True)][0]
    assert deep.float().std() > 20  # 16-bit scaled down to 8 bits, not clipped to white


def test_truncated_jpeg_fail_and_skip(odd_folder, tmp_path, checkpoint):
    good = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    _write(odd_folder / "b", "broken.jpg", Image.fromarray(good), quality=90)
    path = odd_folder / "b" / "broken.jpg"
    path.write_bytes(path.read_bytes()[:300])
    # the folder's classes are not the model's: give it ten names the model knows
    for old, new in (("a", CLASSES[0]), ("b", CLASSES[1])):
        (odd_folder / old).rename(odd_folder / new)
    for name in CLASSES[2:]:
        _write(odd_folder / name, "x.png", Image.fromarray(good))
    args = ["evaluate", "-m", f"resnet20={checkpoint}", "--dataset", str(odd_folder),
            "--corruptions", "gaussian_noise", "--severities", "1", "--no-progress"]
    failed = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "f")])
    assert failed.exit_code != 0
    message = failed.output.strip()
    assert message.startswith("error:") and "broken.jpg" in message and "--on-bad-image skip" in message
    assert "\n" not in message and "Traceback" not in failed.output
    out = tmp_path / "s"
    ok = CliRunner().invoke(main, [*args, "--out", str(out), "--on-bad-image", "skip"])
    assert ok.exit_code == 0, ok.output
    assert "skipped 1 unreadable" in ok.output
    tidy = pd.read_csv(out / "results.csv")
    total = sum(1 for _ in odd_folder.rglob("*.*"))
    assert (tidy["n"] == total - 1).all()
    summary = pd.read_json(out / "summary.json", typ="series")
    assert summary["skipped images"] == 1


# ----------------------------------------------------------------------------- pre-rendered

def _predictions(out, cells):
    store = RunStore(out, {})
    return {cell: store.read(cell, 0).predictions["resnet20"].tolist() + store.read(cell, 1).predictions[
        "resnet20"].tolist() for cell in cells}


@pytest.mark.parametrize("layout", ["cifar-c", "imagenet-c"])
def test_prerendered_equals_on_the_fly(layout, builtin, checkpoint, tmp_path):
    names, severities = CELLS
    if layout == "cifar-c":
        names, severities = ["gaussian_noise"], [1, 2, 3, 4, 5]  # the layout stacks all five
    render_dataset(builtin, tmp_path / "rendered", corruption_names=names, severities=severities, layout=layout,
                   indices=np.arange(N), progress=False)
    assert detect_layout(tmp_path / "rendered") == layout
    fly, fly_samples, _ = _evaluate(builtin, checkpoint, tmp_path / "fly", names, severities)
    disk = open_dataset(str(tmp_path / "rendered"), size=32)
    assert isinstance(disk, CifarCFolder if layout == "cifar-c" else ImageNetCFolder)
    assert disk.available() == {n: severities if layout == "imagenet-c" else [1, 2, 3, 4, 5] for n in names}
    check_classes(disk, [_entry(checkpoint)])
    disk.attach_clean(builtin)  # by position (cifar-c) or by the index in the file name (imagenet-c)
    read, read_samples, _ = _evaluate(disk, checkpoint, tmp_path / "disk", names, severities)
    corrupted = fly[fly.corruption != "clean"].reset_index(drop=True)
    if layout == "cifar-c":  # no JPEG step: per-cell results and per-image predictions are identical
        pd.testing.assert_frame_equal(read, fly)
        assert all(np.array_equal(read_samples[k], fly_samples[k]) for k in fly_samples)
        assert len(set(sum(_predictions(tmp_path / "disk", [(n, 1) for n in names]).values(), []))) > 1
    else:  # JPEG-85 files: same cells, same images, counts close
        assert read[["corruption", "severity", "n"]].equals(fly[["corruption", "severity", "n"]])
        clean = read[read.corruption == "clean"]
        assert clean["correct"].item() == fly[fly.corruption == "clean"]["correct"].item()
        assert (read["correct"] - fly["correct"]).abs().max() <= N // 2
    assert len(corrupted) == len(names) * len(severities)


def test_prerendered_cli_defaults_absent_clean_and_missing_cell(builtin, checkpoint, tmp_path):
    render_dataset(builtin, tmp_path / "ic", corruption_names=["gaussian_noise"], severities=[2, 4],
                   layout="imagenet-c", indices=np.arange(N), progress=False)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["evaluate", "-m", f"resnet20={checkpoint}", "--dataset", str(tmp_path / "ic"),
                                       "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "clean cell: absent" in result.output
    tidy = pd.read_csv(out / "results.csv")
    assert list(zip(tidy.corruption, tidy.severity)) == [("gaussian_noise", 2), ("gaussian_noise", 4)]
    for extra, word in ((["--corruptions", "fog"], "fog"), (["--severities", "3"], "severity 3")):
        bad = CliRunner().invoke(main, ["evaluate", "-m", f"resnet20={checkpoint}", "--dataset",
                                        str(tmp_path / "ic"), "--out", str(tmp_path / "x"), *extra])
        assert bad.exit_code == 2 and bad.output.startswith("error:") and word in bad.output
        assert bad.output.count("\n") == 1


def test_cifar10_missing_root_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("BIVOL_OFFLINE", "1")
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz") as info:
        open_dataset(f"cifar10:{tmp_path / 'none'}")
    assert "\n" not in str(info.value)
    result = CliRunner().invoke(main, ["evaluate", "-m", "resnet20=x.pt", "--dataset", f"cifar10:{tmp_path}"])
    assert result.exit_code != 0 and "Traceback" not in result.output

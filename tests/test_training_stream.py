"""Streamed training for ImageNet-size models: the random resized crop, draws that depend only on
(seed, epoch, sample), ranks that partition each global batch, and a resnet18 (224 px) trained,
resumed and evaluated end to end from a tiny image folder."""
from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner

from robustbench_bivol import training
from robustbench_bivol.checkpoint import load_checkpoint
from robustbench_bivol.cli import main
from robustbench_bivol.data.folder import scan_image_folder
from robustbench_bivol.data.training_stream import RATIO, SCALE, RankBatches, StreamingTrainSet, random_resized_crop_box

from _support import write_image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/ (12 images) and val/ (4 images): an ImageNet-style layout without test/."""
    root = tmp_path_factory.mktemp("imagenet-like")
    write_image_folder(root / "train", 12)
    write_image_folder(root / "val", 20)  # the first 20 built-in images cover all 10 classes
    return root


def test_random_resized_crop_stays_in_its_ranges():
    generator = torch.Generator().manual_seed(0)
    for width, height in [(500, 375), (32, 32), (224, 600)]:
        for _ in range(200):
            top, left, h, w = random_resized_crop_box(width, height, generator)
            assert 0 <= top <= height - h and 0 <= left <= width - w and h > 0 and w > 0
            if (h, w) != (height, width):  # the fallback takes the whole image
                assert SCALE[0] - 0.02 <= h * w / (width * height) <= SCALE[1]
                assert RATIO[0] * 0.9 <= w / h <= RATIO[1] * 1.1  # rounding to whole pixels
    # an image far outside the ratios falls back to its centre at the nearest allowed ratio
    top, left, h, w = random_resized_crop_box(1000, 10, torch.Generator().manual_seed(1))
    assert (h, w) == (10, round(10 * RATIO[1])) and left == (1000 - w) // 2


def test_an_images_augmentation_depends_only_on_seed_epoch_and_index(folder):
    _, samples = scan_image_folder(folder / "train")
    data = StreamingTrainSet(samples, 64, seed=3)
    first = data[5][0]
    assert first.shape == (3, 64, 64) and first.dtype == torch.uint8
    assert torch.equal(data[5][0], first)  # read again, in any order
    data.epoch = 1
    assert not torch.equal(data[5][0], first)
    data.epoch = 0
    loader = torch.utils.data.DataLoader(data, batch_sampler=[[1, 5]], num_workers=1)
    assert torch.equal(next(iter(loader))[0][1], first)  # a worker draws what the main process draws


def test_ranks_partition_each_global_batch():
    order = torch.randperm(22, generator=torch.Generator().manual_seed(0))
    alone = list(RankBatches(order, 8, 0, 1))
    ranks = [list(RankBatches(order, 8, r, 2)) for r in range(2)]
    assert len(alone) == len(ranks[0]) == math.ceil(22 / 8)
    for step, batch in enumerate(alone):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(batch)


def _args(folder, out, *extra: str) -> list[str]:
    return ["train", "--model", "resnet18", "--dataset", str(folder), "--epochs", "2", "--batch-size", "4",
            "--lr", "0.01", "--out", str(out), "--no-progress", *extra]


def test_resnet18_streams_trains_and_resumes_to_the_same_weights(folder, tmp_path, monkeypatch):
    """12 images at 224 px through resnet18: the log has validation and test accuracy, the run
    reads val/ as its test split, and one killed after its first epoch resumes bit for bit."""
    whole = CliRunner().invoke(main, _args(folder, tmp_path / "whole", "--holdout", "2"))
    assert whole.exit_code == 0, whole.output
    log = (tmp_path / "whole" / "log.csv").read_text().splitlines()
    assert log[0] == "epoch,lr,train_loss,train_acc,val_acc,test_acc,seconds" and len(log) == 3
    state, meta, _ = load_checkpoint(tmp_path / "whole" / "final.pt")
    assert meta.arch == "resnet18" and meta.input_size == 224 and len(meta.classes) == 10

    real = training._StreamedData.accuracy
    calls = {"n": 0}

    def stop_in_second_epoch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 1 measured val and test; epoch 2 stops here
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(training._StreamedData, "accuracy", stop_in_second_epoch)
    stopped = CliRunner().invoke(main, _args(folder, tmp_path / "resumed", "--holdout", "2"))
    assert stopped.exit_code == 130, stopped.output
    monkeypatch.setattr(training._StreamedData, "accuracy", real)
    resumed = CliRunner().invoke(main, _args(folder, tmp_path / "resumed", "--holdout", "2", "--workers", "1"))
    assert resumed.exit_code == 0, resumed.output
    again, _, _ = load_checkpoint(tmp_path / "resumed" / "final.pt")
    assert all(torch.equal(state[k], again[k]) for k in state)  # workers do not change the draws


def test_a_test_split_with_other_classes_is_refused(folder, tmp_path):
    write_image_folder(tmp_path / "data" / "train", 12)
    write_image_folder(tmp_path / "data" / "test", 3)  # three classes only
    result = CliRunner().invoke(main, _args(tmp_path / "data", tmp_path / "run"))
    assert result.exit_code == 2 and "different classes" in result.output

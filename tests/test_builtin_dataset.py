"""The built-in dataset: deterministic, balanced, disjoint splits, any size."""
import hashlib

import numpy as np
import pytest
import torch

from robustbench_bivol.data import BuiltinShapes, balanced_subset, open_dataset
from robustbench_bivol.data.builtin import CLASSES, render
from robustbench_bivol.errors import DatasetError


def _hashes(images: torch.Tensor) -> set[str]:
    return {hashlib.sha1(im.numpy().tobytes()).hexdigest() for im in images}


def test_same_seed_same_images_and_index_independence():
    a, la = render(np.arange(50), "test", 32, seed=3)
    b, lb = render(np.arange(50), "test", 32, seed=3)
    assert torch.equal(a, b) and torch.equal(la, lb)
    # image i does not depend on which other images are rendered with it
    c, _ = render(np.array([49, 7, 20]), "test", 32, seed=3)
    assert torch.equal(c, a[[49, 7, 20]])


def test_different_seed_gives_different_images():
    a, _ = render(np.arange(20), "test", 32, seed=0)
    b, _ = render(np.arange(20), "test", 32, seed=1)
    assert not _hashes(a) & _hashes(b)


def test_class_balance_and_labels():
    data = BuiltinShapes("test", length=200)
    counts = np.bincount(data.labels.numpy(), minlength=len(CLASSES))
    assert counts.tolist() == [20] * len(CLASSES)
    assert data.classes == list(CLASSES)


def test_splits_are_disjoint():
    train, _ = render(np.arange(300), "train", 32)
    test, _ = render(np.arange(300), "test", 32)
    assert not _hashes(train) & _hashes(test)


@pytest.mark.parametrize("size", [16, 32, 64, 100])
def test_any_size(size):
    images, labels = render(np.arange(4), "test", size)
    assert images.shape == (4, 3, size, size) and images.dtype == torch.uint8
    assert images.float().std() > 20  # textured, not flat


def test_classes_differ_in_appearance():
    """A nearest-class-mean classifier on raw pixels must be weak: the task is not trivial."""
    images, labels = render(np.arange(1000), "train", 32)
    test, test_labels = render(np.arange(500), "test", 32)
    x = images.float().flatten(1)
    means = torch.stack([x[labels == c].mean(0) for c in range(len(CLASSES))])
    pred = torch.cdist(test.float().flatten(1), means).argmin(1)
    assert (pred == test_labels).float().mean() < 0.5


def test_balanced_subset_is_deterministic_prefix_and_balanced():
    labels = np.repeat(np.arange(10), 30)
    small, large = balanced_subset(labels, 20), balanced_subset(labels, 50)
    assert set(small) <= set(large)
    assert np.bincount(labels[large]).tolist() == [5] * 10
    assert balanced_subset(labels, None).tolist() == list(range(300))
    with pytest.raises(DatasetError, match="larger than the dataset"):
        balanced_subset(labels, 301)


def test_missing_folder_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        open_dataset(str(tmp_path / "nope"))

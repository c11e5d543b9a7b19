"""Datasets as the evaluation engine sees them: indexable (uint8 CHW image, label) collections.

Every dataset keeps the original sample index of each image: corruption randomness is seeded by
it, so a subset of a dataset shows exactly the corrupted images the full dataset would.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import DatasetError, UsageError
from .builtin import BuiltinShapes
from .folder import ImageFolderDataset

BUILTIN = "builtin"


class LimitError(DatasetError, UsageError):
    """A --limit that the dataset cannot satisfy: exit code 2 (usage), a DatasetError for API callers."""

    exit_code = UsageError.exit_code


class EvalDataset(Protocol):
    name: str
    classes: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]: ...


def open_dataset(spec: str, *, split: str = "test", size: int = 32, seed: int = 0,
                 resize: int | None = None) -> EvalDataset:
    """Open a dataset given on the command line.

    ``spec`` is 'builtin', ``cifar10:ROOT`` (torchvision's CIFAR-10, downloaded when online),
    ``imagenet-c:DIR`` / ``cifar-c:DIR`` (pre-rendered benchmarks), ``folder:DIR`` or a plain folder:
    a folder holding ``labels.npy`` is read as CIFAR-10-C, one holding ``<corruption>/<digit>/``
    as ImageNet-C, any other as ImageFolder (``<root>/<class>/<image>``). ``resize`` is the shorter
    side before an image folder's centre crop (default: :func:`.folder.default_resize`).
    """
    from .prerendered import LAYOUTS, detect_layout, open_prerendered

    if spec == BUILTIN:
        return BuiltinShapes(split=split, size=size, seed=seed)
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("cifar10", "folder", *LAYOUTS) and rest:
        if kind == "cifar10":
            from .cifar import Cifar10

            return Cifar10(rest, split=split, size=size)
        if not Path(rest).is_dir():
            raise DatasetError(f"dataset folder not found: '{rest}'")
        if kind == "folder":
            return ImageFolderDataset(rest, size=size, resize=resize)
        return open_prerendered(rest, size, layout=kind)
    path = Path(spec)
    if not path.exists():
        raise DatasetError(f"dataset not found: '{spec}' (give 'builtin', cifar10:ROOT or an existing folder)")
    layout = detect_layout(path)
    if layout is not None:
        return open_prerendered(path, size, layout=layout)
    return ImageFolderDataset(path, size=size, resize=resize)


def is_prerendered(dataset: object) -> bool:
    return bool(getattr(dataset, "is_prerendered", False))


def align_classes(dataset: EvalDataset, classes: list[str] | None) -> bool:
    """Renumber the labels of ``dataset`` to follow ``classes`` (a model's class order) when its
    classes are the same names in another order (ImageFolder sorts folder names). Returns whether
    labels changed."""
    mine = list(getattr(dataset, "classes", []) or [])
    if not classes or mine == list(classes) or sorted(mine) != sorted(classes):
        return False
    new_of = {old: list(classes).index(name) for old, name in enumerate(mine)}
    mapping = np.asarray([new_of[i] for i in range(len(mine))], dtype=np.int64)
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, torch.Tensor):
        dataset.labels = torch.from_numpy(mapping[labels.numpy()])
    elif isinstance(labels, np.ndarray):
        dataset.labels = mapping[labels]
    elif labels is not None:
        dataset.labels = [int(mapping[v]) for v in labels]
    samples = getattr(dataset, "samples", None)
    if samples is not None:
        dataset.samples = [(path, int(mapping[label])) for path, label in samples]
    dataset.classes = list(classes)
    return True


def dataset_labels(dataset: EvalDataset) -> np.ndarray:
    """Labels of every sample without decoding images where the dataset knows them."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = [dataset[i][1] for i in range(len(dataset))]
    return np.asarray(labels.tolist() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)


def balanced_subset(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """A deterministic, class-balanced choice of ``limit`` sample indices (all when None).

    Classes take turns in label order, each giving its samples in index order, so the subset
    of a smaller limit is a prefix of the subset of a larger one.
    """
    total = len(labels)
    if limit is None or limit == total:
        return np.arange(total)
    if limit <= 0:
        raise LimitError(f"--limit must be positive, got {limit}")
    if limit > total:
        raise LimitError(f"--limit {limit} is larger than the dataset ({total} images); give at most {total}")
    per_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    rank = np.empty(total, dtype=np.int64)
    for members in per_class:
        rank[members] = np.arange(len(members))
    order = np.lexsort((labels, rank))  # round-robin over classes
    return np.sort(order[:limit])


__all__ = ["BUILTIN", "BuiltinShapes", "EvalDataset", "ImageFolderDataset", "align_classes", "balanced_subset",
           "dataset_labels", "is_prerendered", "open_dataset"]

"""Datasets as the evaluation engine sees them: indexable (uint8 CHW image, label) collections.

Every dataset keeps the original sample index of each image: corruption randomness is seeded by
it, so a subset of a dataset shows exactly the corrupted images the full dataset would.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import DatasetError
from .builtin import BuiltinShapes
from .folder import ImageFolderDataset

BUILTIN = "builtin"


class EvalDataset(Protocol):
    name: str
    classes: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]: ...


def open_dataset(spec: str, *, split: str = "test", size: int = 32, seed: int = 0) -> EvalDataset:
    """``spec`` is 'builtin' or a folder in ImageFolder layout (``<root>/<class>/<image>``)."""
    if spec == BUILTIN:
        return BuiltinShapes(split=split, size=size, seed=seed)
    path = Path(spec)
    if not path.exists():
        raise DatasetError(f"dataset not found: '{spec}' (give 'builtin' or an existing folder)")
    return ImageFolderDataset(path, size=size)


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
        raise DatasetError(f"--limit must be positive, got {limit}")
    if limit > total:
        raise DatasetError(f"--limit {limit} is larger than the dataset ({total} images)")
    per_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    rank = np.empty(total, dtype=np.int64)
    for members in per_class:
        rank[members] = np.arange(len(members))
    order = np.lexsort((labels, rank))  # round-robin over classes
    return np.sort(order[:limit])


__all__ = ["BUILTIN", "BuiltinShapes", "EvalDataset", "ImageFolderDataset", "balanced_subset",
           "dataset_labels", "open_dataset"]

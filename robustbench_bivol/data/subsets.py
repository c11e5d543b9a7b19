"""Which samples a run uses: labels read without decoding, class-balanced subsets.

Its own module so the datasets (e.g. pre-rendered ones matching a clean set) use it without
importing the package that opens them.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import DatasetError, UsageError


class LimitError(DatasetError, UsageError):
    """A --limit that the dataset cannot satisfy: exit code 2 (usage), a DatasetError for API callers."""

    exit_code = UsageError.exit_code


def dataset_labels(dataset: Sequence[tuple[Any, int]]) -> np.ndarray:
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

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
from .subsets import balanced_subset, dataset_labels

BUILTIN = "builtin"


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


__all__ = ["BUILTIN", "BuiltinShapes", "EvalDataset", "ImageFolderDataset", "align_classes", "balanced_subset",
           "dataset_labels", "is_prerendered", "open_dataset"]

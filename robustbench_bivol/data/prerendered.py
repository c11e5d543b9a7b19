"""Pre-rendered corruption benchmarks read as they are on disk.

* ``imagenet-c``: ``<root>/<corruption>/<severity>/<class>/<file>`` (released ImageNet-C,
  Tiny-ImageNet-C, or ``bivol-robust corrupt --layout imagenet-c``);
* ``cifar-c``: ``<root>/<corruption>.npy`` uint8 (5N, H, W, 3), severities 1..5 stacked, plus
  ``<root>/labels.npy`` (released CIFAR-10-C, or ``bivol-robust corrupt --layout cifar-c``).

The engine reads each cell's images from disk instead of corrupting clean images. The sample list
is that of the first cell on disk (sorted), so every run of a folder has the same samples whatever
corruptions it selects. Clean images come from an optional clean dataset matched to the samples;
without one the clean cell is absent.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DatasetError, UsageError
from .cifar import CIFAR10_CLASSES, resize_batch
from .folder import BadImageError, default_resize, load_image, scan_image_folder
from .subsets import dataset_labels

LAYOUTS = ("imagenet-c", "cifar-c")
CLEAN = "clean"


def detect_layout(root: str | Path) -> str | None:
    """'cifar-c' (labels.npy present), 'imagenet-c' (``<corruption>/<digit>/`` folders) or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    if (root / "labels.npy").is_file():
        return "cifar-c"
    children = sorted(p for p in root.iterdir() if p.is_dir())[:20]
    for child in children:
        with os.scandir(child) as entries:  # d_type: no stat per file of a large class folder
            if any(e.name.isdigit() and e.is_dir() for e in entries):
                return "imagenet-c"
    return None


class PrerenderedDataset:
    """A folder of pre-rendered corrupted images; ``read(cell, indices)`` gives a cell's images.

    ``__getitem__`` gives the clean image (from the clean dataset) so the object also works where
    a plain dataset is expected; ``has_clean`` says whether there is one.
    """

    layout: str
    is_prerendered = True

    def __init__(self, root: str | Path, size: int) -> None:
        self.root, self.size = Path(root), size
        self.clean: Any = None
        self._clean_index: np.ndarray | None = None
        self.clean_name: str | None = None

    # ------------------------------------------------------------------ shared
    @property
    def has_clean(self) -> bool:
        return self.clean is not None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.clean is None:
            raise DatasetError(f"{self.root} has no clean images: give --clean-dataset")
        image, _ = self.clean[int(self._clean_index[index])]
        return image, int(self.labels[index])

    def available(self) -> dict[str, list[int]]:
        return self.cells_on_disk

    def check_cells(self, corruption_names: Sequence[str], severities: Sequence[int]) -> None:
        """One-line error for a requested (corruption, severity) that is not on disk."""
        for name in corruption_names:
            if name not in self.cells_on_disk:
                raise UsageError(f"corruption '{name}' is not in {self.root} "
                                 f"(on disk: {', '.join(sorted(self.cells_on_disk)) or 'none'})")
            missing = [s for s in severities if s not in self.cells_on_disk[name]]
            if missing:
                raise UsageError(f"severity {missing[0]} of '{name}' is not in {self.root} "
                                 f"(on disk: {', '.join(map(str, self.cells_on_disk[name]))})")

    def attach_clean(self, clean: Any) -> None:
        """Match a clean dataset to the samples (by class and file stem, by index, or by position)."""
        index = self._match_clean(clean)
        clean_labels = dataset_labels(clean)[index]
        names = getattr(clean, "classes", None)
        if names is not None and list(names) != list(self.classes) and not self._generic_classes:
            raise DatasetError(f"--clean-dataset classes differ from those of {self.root}")
        if not np.array_equal(clean_labels, np.asarray(self.labels)):
            raise DatasetError(f"--clean-dataset labels do not match those of {self.root}")
        self.clean, self._clean_index = clean, index
        self.clean_name = getattr(clean, "name", str(clean))

    def _match_by_position(self, clean: Any) -> np.ndarray:
        if len(clean) != len(self):
            raise DatasetError(f"--clean-dataset has {len(clean)} images but {self.root} has {len(self)} per cell; "
                               "give the clean split the benchmark was rendered from")
        return np.arange(len(self))

    _generic_classes = False


class ImageNetCFolder(PrerenderedDataset):
    layout = "imagenet-c"

    def __init__(self, root: str | Path, size: int) -> None:
        super().__init__(root, size)
        root = self.root
        cells: dict[str, list[int]] = {}
        for child in sorted(p for p in root.iterdir() if p.is_dir()):
            severities = sorted(int(g.name) for g in child.iterdir() if g.is_dir() and g.name.isdigit())
            if severities:
                cells[child.name] = severities
        if not cells:
            raise DatasetError(f"no <corruption>/<severity>/ folders under {root} (imagenet-c layout)")
        self.cells_on_disk = cells
        first = sorted(cells)[0]
        reference = root / first / str(cells[first][0])
        classes, samples = scan_image_folder(reference)
        self.classes = classes
        self.relative = [Path(p).relative_to(reference).as_posix() for p, _ in samples]
        self.labels = np.asarray([label for _, label in samples], dtype=np.int64)
        self.resize = default_resize(size)
        self.name = f"imagenet-c:{root.resolve()}"

    def sample_name(self, index: int) -> str:
        return self.relative[index]

    def path(self, cell: tuple[str, int], index: int) -> Path:
        return self.root / cell[0] / str(cell[1]) / self.relative[index]

    def read(self, cell: tuple[str, int], indices: Sequence[int]) -> list[torch.Tensor | BadImageError]:
        """Each sample's image of ``cell``, or the error that kept it from being read."""
        out: list[torch.Tensor | BadImageError] = []
        for index in indices:
            path = self.path(cell, int(index))
            if not path.is_file():
                out.append(BadImageError(f"missing image {path}"))
                continue
            try:
                out.append(load_image(path, self.size, self.resize))
            except BadImageError as exc:
                out.append(exc)
        return out

    def _match_clean(self, clean: Any) -> np.ndarray:
        stems = [Path(r).stem for r in self.relative]
        samples = getattr(clean, "samples", None)
        if samples:
            clean_classes = list(clean.classes)
            lookup = {(clean_classes[label], Path(p).stem): i for i, (p, label) in enumerate(samples)}
            keys = [(self.classes[label], stem) for label, stem in zip(self.labels, stems)]
            missing = [f"{c}/{s}" for c, s in keys if (c, s) not in lookup]
            if missing:
                raise DatasetError(f"--clean-dataset lacks {len(missing)} of the images of {self.root}, "
                                   f"e.g. {missing[0]}")
            return np.asarray([lookup[k] for k in keys], dtype=np.int64)
        if all(s.isdigit() for s in stems):  # rendered from an indexed dataset: the stem is the index
            index = np.asarray([int(s) for s in stems], dtype=np.int64)
            if index.max() >= len(clean):
                raise DatasetError(f"--clean-dataset has {len(clean)} images, fewer than the indices in {self.root}")
            return index
        return self._match_by_position(clean)


class CifarCFolder(PrerenderedDataset):
    layout = "cifar-c"

    def __init__(self, root: str | Path, size: int) -> None:
        super().__init__(root, size)
        root = self.root
        try:
            stacked = np.load(root / "labels.npy")
        except (OSError, ValueError) as exc:
            raise DatasetError(f"cannot read {root / 'labels.npy'}: {exc}") from None
        if stacked.ndim != 1 or len(stacked) % 5:
            raise DatasetError(f"{root / 'labels.npy'} must hold 5N labels (severities 1..5 stacked)")
        n = len(stacked) // 5
        self.labels = stacked[:n].astype(np.int64)
        self.n = n
        cells: dict[str, list[int]] = {}
        for path in sorted(root.glob("*.npy")):
            if path.name == "labels.npy":
                continue
            try:
                shape = np.load(path, mmap_mode="r").shape
            except (OSError, ValueError) as exc:
                raise DatasetError(f"cannot read {path}: {exc}") from None
            if len(shape) != 4 or shape[0] != 5 * n or shape[3] != 3:
                raise DatasetError(f"{path} has shape {shape}; expected ({5 * n}, H, W, 3)")
            cells[path.stem] = [1, 2, 3, 4, 5]
        if not cells:
            raise DatasetError(f"no <corruption>.npy files in {root} (cifar-c layout)")
        self.cells_on_disk = cells
        n_classes = int(self.labels.max()) + 1 if n else 0
        if n_classes <= len(CIFAR10_CLASSES):
            self.classes = list(CIFAR10_CLASSES)
        else:
            self.classes = [f"class_{i}" for i in range(n_classes)]
        self._generic_classes = True  # the layout stores no class names
        self._arrays: dict[str, np.ndarray] = {}
        self.name = f"cifar-c:{root.resolve()}"

    def sample_name(self, index: int) -> str:
        return f"#{index}"

    def read(self, cell: tuple[str, int], indices: Sequence[int]) -> list[torch.Tensor | BadImageError]:
        name, severity = cell
        if name not in self._arrays:
            self._arrays[name] = np.load(self.root / f"{name}.npy", mmap_mode="r")
        rows = (severity - 1) * self.n + np.asarray(indices, dtype=np.int64)
        block = torch.from_numpy(np.ascontiguousarray(self._arrays[name][rows])).permute(0, 3, 1, 2)
        return list(resize_batch(block.contiguous(), self.size))

    def _match_clean(self, clean: Any) -> np.ndarray:
        return self._match_by_position(clean)


def open_prerendered(root: str | Path, size: int, layout: str | None = None) -> PrerenderedDataset:
    layout = layout or detect_layout(root)
    if layout == "cifar-c":
        return CifarCFolder(root, size)
    if layout == "imagenet-c":
        return ImageNetCFolder(root, size)
    raise DatasetError(f"{root} is neither an imagenet-c nor a cifar-c folder")

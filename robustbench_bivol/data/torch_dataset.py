"""A user's own torch ``Dataset`` as the engine sees datasets: uint8 (3, size, size) images and labels.

Items may hold PIL images, uint8 tensors (C, H, W), float tensors in [0, 1] or HWC uint8 arrays;
each is converted to RGB, resized (shorter side to ``resize``) and centre-cropped to ``size``.
Labels come from the dataset's ``targets`` or ``labels`` when it has them (no image is decoded
for them), class names from its ``classes``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from ..errors import DatasetError
from .cifar import resize_batch
from .folder import to_rgb


def is_torch_dataset(value: Any) -> bool:
    """A map-style dataset object (anything indexable with a length), not a dataset spec string."""
    return not isinstance(value, (str, bytes)) and hasattr(value, "__getitem__") and hasattr(value, "__len__")


class TorchDataset:
    """Wrap ``dataset`` (items ``(image, label, ...)``) at evaluation size ``size``."""

    def __init__(self, dataset: Any, size: int, resize: int | None = None) -> None:
        if len(dataset) == 0:
            raise DatasetError(f"the dataset {type(dataset).__name__} is empty")
        self.dataset, self.size, self.resize = dataset, size, max(resize or size, size)
        labels = next((getattr(dataset, a) for a in ("targets", "labels") if getattr(dataset, a, None) is not None),
                      None)
        if labels is None:
            labels = [int(dataset[i][1]) for i in range(len(dataset))]
        self.labels = np.asarray(labels.tolist() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
        classes = getattr(dataset, "classes", None)
        self.classes = [str(c) for c in classes] if classes else [str(c) for c in range(int(self.labels.max()) + 1)]
        self.name = str(getattr(dataset, "name", None) or f"python:{type(dataset).__qualname__}:{len(dataset)}")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.dataset[index][0]
        return fit(as_uint8(image), self.size, self.resize), int(self.labels[index])


def as_uint8(image: Any) -> torch.Tensor:
    """A PIL image, tensor or array as a uint8 RGB (3, H, W) tensor."""
    if isinstance(image, Image.Image):
        return TF.pil_to_tensor(to_rgb(image))
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image if image.ndim == 2 or image.shape[0] in (1, 3) else image.transpose(2, 0, 1))
    if not isinstance(image, torch.Tensor):
        raise DatasetError(f"dataset items must hold a PIL image, tensor or array, got {type(image).__name__}")
    if image.dim() == 2:
        image = image.unsqueeze(0)
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise DatasetError(f"images must be (3, H, W) or (1, H, W), got shape {tuple(image.shape)}")
    if image.is_floating_point():
        image = (image * 255).round().clamp(0, 255).to(torch.uint8)
    return image.to(torch.uint8).expand(3, -1, -1)


def fit(image: torch.Tensor, size: int, resize: int) -> torch.Tensor:
    """Shorter side to ``resize``, then the central ``size`` x ``size`` crop."""
    image = resize_batch(image.unsqueeze(0), resize)[0]
    return TF.center_crop(image, [size, size]).contiguous()

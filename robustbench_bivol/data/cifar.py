"""CIFAR-10 through torchvision, held in memory as uint8 tensors (``--dataset cifar10:ROOT``)."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DatasetError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
#: Set to 1 to never try a download (tests, air-gapped machines).
OFFLINE_ENV = "BIVOL_OFFLINE"


def _online(host: str = "www.cs.toronto.edu", timeout: float = 3.0) -> bool:
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N,3,H,W) -> (N,3,size,size): shorter side to ``size`` (antialiased), centre crop."""
    if images.shape[-2:] == (size, size) or len(images) == 0:
        return images
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    new = (max(size, round(h * scale)), max(size, round(w * scale)))
    x = F.interpolate(images.float(), size=new, mode="bilinear", antialias=True, align_corners=False)
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    x = x[..., top:top + size, left:left + size]
    return x.round().clamp(0, 255).to(torch.uint8)


class Cifar10:
    """The CIFAR-10 train or test split (torchvision's pickles) as (uint8 CHW image, label) items."""

    classes = list(CIFAR10_CLASSES)

    def __init__(self, root: str | Path, split: str = "test", size: int = 32) -> None:
        from torchvision.datasets import CIFAR10

        if split not in ("train", "test"):
            raise DatasetError(f"CIFAR-10 has the splits train and test, not '{split}'")
        root = Path(root).expanduser()
        train = split == "train"
        try:
            data = CIFAR10(str(root), train=train, download=False)
        except RuntimeError:
            data = None
        if data is None:
            if not _online():
                raise DatasetError(
                    f"CIFAR-10 not found under {root} and this machine is offline: download {CIFAR10_URL} "
                    f"and extract it into {root} (giving {root / 'cifar-10-batches-py'}), or run once online")
            try:
                data = CIFAR10(str(root), train=train, download=True)
            except Exception as exc:  # network or disk trouble: one line, with the manual route
                raise DatasetError(f"CIFAR-10 download into {root} failed ({exc}); download {CIFAR10_URL} "
                                   f"and extract it into {root}") from None
        images = torch.from_numpy(np.ascontiguousarray(data.data)).permute(0, 3, 1, 2).contiguous()
        self.images = resize_batch(images, size)
        self.labels = torch.as_tensor(data.targets, dtype=torch.int64)
        self.classes = list(data.classes)
        self.name = f"cifar10:{split}:{size}px"

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

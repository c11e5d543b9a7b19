"""Shared test helpers: a checkpoint whose predictions vary, a run's per-sample predictions, and a
model that blurs its input before classifying (the frequency-analysis tests)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from robustbench_bivol.checkpoint import CheckpointMeta, save_checkpoint
from robustbench_bivol.data import BuiltinShapes
from robustbench_bivol.data.builtin import CLASSES, render
from robustbench_bivol.models import create_model


def make_checkpoint(path: Path) -> Path:
    """Random resnet20 with BatchNorm statistics calibrated on a few built-in images, so that its
    predictions vary from image to image (an uncalibrated random net predicts one class). The test
    split is used because generating the 20k-image train split takes minutes."""
    torch.manual_seed(0)
    model = create_model("resnet20")
    x = (BuiltinShapes("test", 32, seed=0).images[-128:].float() / 255 - 0.5) / 0.25
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
    meta = CheckpointMeta(arch="resnet20", num_classes=10, input_size=32, mean=(0.5, 0.5, 0.5),
                          std=(0.25, 0.25, 0.25), dataset="builtin", classes=list(BuiltinShapes.classes))
    save_checkpoint(path, model.state_dict(), meta)
    return path


def store_predictions(run: Path) -> dict[tuple[str, str], np.ndarray]:
    """{(cell folder, 'indices' | 'labels' | 'pred::model'): array ordered by sample index}."""
    out: dict[tuple[str, str], np.ndarray] = {}
    for cell in sorted(p for p in (run / "cells").iterdir() if p.is_dir()):
        parts = [np.load(f) for f in sorted(cell.glob("shard-*.npz"))]
        indices = np.concatenate([p["indices"] for p in parts])
        order = np.argsort(indices, kind="stable")
        out[(cell.name, "indices")] = indices[order]
        out[(cell.name, "labels")] = np.concatenate([p["labels"] for p in parts])[order]
        for key in parts[0].files:
            if key.startswith("pred::"):
                out[(cell.name, key)] = np.concatenate([p[key] for p in parts])[order]
    return out


def write_image_folder(root: Path, n: int) -> Path:
    """The first ``n`` built-in test images as PNGs in ImageFolder layout under ``root``."""
    images, labels = render(np.arange(n))
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / CLASSES[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    return root


SIZE = 16  # side of the grey images


class GreyImages(torch.utils.data.Dataset):
    """Mid-grey images of class 0 (class 1 means 'this image was changed')."""

    classes = ["unchanged", "changed"]

    def __init__(self, n: int) -> None:
        self.targets = [0] * n

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.full((3, SIZE, SIZE), 128, dtype=torch.uint8), 0


class BlurThenDetect(nn.Module):
    """A fixed circular Gaussian blur (sigma 1 px; along both axes, or along the width only), then
    a classifier that says 'changed' when the blurred image's mean squared deviation from grey
    exceeds half that of an unblurred eps = 1 perturbation."""

    def __init__(self, horizontal_only: bool = False) -> None:
        super().__init__()
        taps = torch.exp(-torch.arange(-3.0, 4.0) ** 2 / 2)
        taps /= taps.sum()
        kernel = torch.outer(torch.eye(7)[3] if horizontal_only else taps, taps)
        self.register_buffer("kernel", kernel.expand(3, 1, 7, 7).clone())
        self.threshold = 0.5 / SIZE ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blurred = F.conv2d(F.pad(x, (3, 3, 3, 3), mode="circular"), self.kernel, groups=3)
        energy = (blurred - 128 / 255).pow(2).mean((1, 2, 3))
        return torch.stack([self.threshold - energy, energy - self.threshold], 1)

"""Shared test helpers: a checkpoint whose predictions vary, and a run's per-sample predictions."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

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

"""Image folders (ImageNet val / ImageFolder layout) read as uint8 tensors at evaluation size."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ..errors import DatasetError

#: ImageNet convention: Resize(256) then CenterCrop(224), i.e. crop 87.5% of the shorter side.
IMAGENET_CROP_RATIO = 224 / 256


class BadImageError(DatasetError):
    """An image file that cannot be decoded (truncated, not an image, ...)."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, LA, P, RGBA, CMYK, 16-bit I;16 / I) to 8-bit RGB."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        if image.mode == "F" and array.max() <= 1.0:
            peak = 1.0
        image = Image.fromarray((array / peak * 255).round().clip(0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


def load_image(path: str | Path, size: int, resize: int) -> torch.Tensor:
    """Decode ``path`` to uint8 (3, size, size): Resize(shorter side=resize) + CenterCrop(size)."""
    try:
        with Image.open(path) as handle:
            image = to_rgb(handle)
            image.load()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadImageError(f"cannot read image {path}: {exc}") from None
    if image.size != (size, size):
        # the shorter side goes to ``resize`` (>= size), so images smaller than the crop are enlarged
        image = TF.resize(image, max(resize, size), interpolation=InterpolationMode.BILINEAR, antialias=True)
        image = TF.center_crop(image, [size, size])
    return TF.pil_to_tensor(image)


def default_resize(size: int) -> int:
    """Shorter side before the centre crop: 256 for 224 (ImageNet), the size itself below 128."""
    return round(size / IMAGENET_CROP_RATIO) if size >= 128 else size


def scan_image_folder(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes and (path, label) samples of ``root/<class>/<image>``; none found is an error."""
    try:
        classes, class_to_idx = find_classes(str(root))
        samples = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DatasetError(f"no images found under {root}: {str(exc).splitlines()[0]}") from None
    if not samples:
        raise DatasetError(f"no images found under {root} (extensions: {', '.join(IMG_EXTENSIONS)})")
    return classes, samples


class ImageFolderDataset:
    """``root/<class>/<image>`` read lazily; each item is decoded, converted to RGB and cropped.

    ``size`` is the evaluation resolution; ``resize`` defaults to size/0.875 for ImageNet-size
    images (Resize 256 / CenterCrop 224) and to ``size`` itself for small images (CIFAR: 32).
    """

    def __init__(self, root: str | Path, size: int, resize: int | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"dataset folder not found: {root} (expected <root>/<class>/<image files>)")
        classes, samples = scan_image_folder(root)
        self.root, self.size = root, size
        self.resize = resize or default_resize(size)
        self.classes = classes
        self.samples = samples
        self.labels = [label for _, label in samples]
        self.name = f"folder:{root.resolve()}"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return load_image(path, self.size, self.resize), label

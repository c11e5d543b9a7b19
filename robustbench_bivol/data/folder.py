"""Image folders (ImageNet val / ImageFolder layout) read as uint8 tensors at evaluation size.

On a GPU run the JPEGs that torchvision can decode there travel still encoded
(:meth:`ImageFolderDataset.load_encoded`) and are decoded in batches by nvjpeg
(:meth:`ImageFolderDataset.decode_encoded`), which spares the CPU its most expensive step; every
other file is decoded by Pillow, as on the CPU.
"""
from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg
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


#: What Pillow raises on a file it cannot read.
UNREADABLE = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def open_rgb(path: str | Path) -> Image.Image:
    """Decode ``path`` to an 8-bit RGB PIL image; a file Pillow cannot read is a BadImageError."""
    try:
        with Image.open(path) as handle:
            image = to_rgb(handle)
            image.load()
    except UNREADABLE as exc:
        raise BadImageError(f"cannot read image {path}: {exc}") from None
    return image


def load_image(path: str | Path, size: int, resize: int) -> torch.Tensor:
    """Decode ``path`` to uint8 (3, size, size): Resize(shorter side=resize) + CenterCrop(size)."""
    return TF.pil_to_tensor(resize_crop(open_rgb(path), size, resize))


def resize_crop(image: Image.Image | torch.Tensor, size: int, resize: int) -> Image.Image | torch.Tensor:
    """Resize(shorter side=resize) + CenterCrop(size) of a PIL image or a uint8 (3, H, W) tensor;
    an image already size x size is left as it is."""
    if TF.get_dimensions(image)[1:] == [size, size]:
        return image
    # the shorter side goes to ``resize`` (>= size), so images smaller than the crop are enlarged
    image = TF.resize(image, max(resize, size), interpolation=InterpolationMode.BILINEAR, antialias=True)
    return TF.center_crop(image, [size, size])


@dataclass(frozen=True)
class EncodedJpeg:
    """A JPEG file's bytes (uint8 1-D tensor), left for :func:`decode_jpegs` to decode on the GPU."""

    data: torch.Tensor
    path: str


#: The JPEG end-of-image marker. A file that does not end with it is truncated (or carries
#: trailing data): Pillow, not nvjpeg, reads it, so that it is reported exactly as on the CPU.
JPEG_END = b"\xff\xd9"


def encoded_jpeg(path: str | Path) -> EncodedJpeg | None:
    """The file's bytes when nvjpeg can decode it to what Pillow would give: a complete JPEG in
    colour (YCbCr) or greyscale. None for anything else (PNG, CMYK, truncated, unreadable, ...),
    which :func:`load_image` decodes or reports."""
    try:
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as handle:  # the header only: cheap
            decodable = handle.format == "JPEG" and handle.mode in ("RGB", "L")
    except UNREADABLE:
        return None
    if not decodable or not data.endswith(JPEG_END):
        return None
    return EncodedJpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), str(path))


def decode_jpegs(encoded: Sequence[EncodedJpeg], size: int, resize: int,
                 device: torch.device) -> list[torch.Tensor | BadImageError]:
    """Decode JPEGs on ``device`` in one batched call (nvjpeg on a GPU), then resize and crop them
    there as :func:`load_image` does. torchvision refuses a whole batch for one image it cannot
    decode, so a refused batch is retried image by image, and an image refused alone goes through
    :func:`load_image`, which decodes it or reports it: its :class:`BadImageError` is returned in
    its place, for the caller's bad-image policy."""
    try:
        decoded: list[torch.Tensor | None] = list(_decode_jpegs([item.data for item in encoded], device))
    except RuntimeError:
        decoded = [_decode_one(item.data, device) for item in encoded]
    out: list[torch.Tensor | BadImageError] = []
    for item, image in zip(encoded, decoded):
        if image is not None:
            out.append(resize_crop(image, size, resize))
            continue
        try:
            out.append(load_image(item.path, size, resize).to(device))
        except BadImageError as exc:
            out.append(exc)
    return out


def _decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    try:
        return _decode_jpegs([data], device)[0]
    except RuntimeError:
        return None


@functools.cache
def can_decode_jpeg_on(device: torch.device) -> bool:
    """Whether torchvision decodes JPEGs on ``device`` (its CUDA builds have nvjpeg), tried once."""
    try:
        _decode_jpegs([encode_jpeg(torch.zeros(3, 8, 8, dtype=torch.uint8))], device)
    except RuntimeError:
        return False
    return True


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

    def load_encoded(self, index: int) -> tuple[torch.Tensor | EncodedJpeg, int]:
        """Item ``index`` with its file left encoded where nvjpeg can decode it
        (:meth:`decode_encoded` then does), else decoded here as by ``dataset[index]``."""
        path, label = self.samples[index]
        return encoded_jpeg(path) or load_image(path, self.size, self.resize), label

    def decode_encoded(self, encoded: Sequence[EncodedJpeg],
                       device: torch.device) -> list[torch.Tensor | BadImageError]:
        """The images of :meth:`load_encoded`'s encoded files, decoded on ``device``."""
        return decode_jpegs(encoded, self.size, self.resize, device)

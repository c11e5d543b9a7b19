"""JPEG round trips through Pillow, one image at a time on the CPU.

One helper serves both uses:

* the ``jpeg_compression`` corruption (quality from the profile table), which the generators
  implement as ``PIL.Image.save(buf, 'JPEG', quality=c)`` then ``PIL.Image.open(buf)``;
* the released ImageNet-C storage step: every corrupted image was saved with
  ``Image.save(path, quality=85, optimize=True)``. ``optimize`` only re-builds the Huffman tables
  (lossless), so the decoded pixels are those of a plain quality-85 save; it is skipped here.

Pillow is the encoder the generators used, so for the same libjpeg build the output is bit-exact.
"""
from __future__ import annotations

from io import BytesIO

import numpy as np
import torch
from PIL import Image

#: Quality of the JPEG files of the released ImageNet-C / Tiny-ImageNet-C.
RELEASE_QUALITY = 85


def encode_decode(image_hwc: np.ndarray, quality: int) -> np.ndarray:
    """Encode one uint8 (H, W, 3) array as JPEG at ``quality`` with Pillow and decode it back."""
    buffer = BytesIO()
    Image.fromarray(image_hwc).save(buffer, "JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def jpeg_round_trip(images: torch.Tensor, quality: int = RELEASE_QUALITY) -> torch.Tensor:
    """JPEG-encode and decode uint8 images of shape (B, 3, H, W) or (3, H, W).

    Returns uint8 of the same shape on the input's device. Each image is coded independently.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"jpeg_round_trip expects uint8 images, got {images.dtype}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    single = images.dim() == 3
    batch = images[None] if single else images
    if batch.dim() != 4 or batch.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) or (3, H, W) images, got {tuple(images.shape)}")
    hwc = batch.detach().cpu().permute(0, 2, 3, 1).contiguous().numpy()
    out = np.stack([encode_decode(img, quality) for img in hwc])
    result = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(images.device)
    return result[0] if single else result

"""``corrupt``: the one entry point that turns clean uint8 images into corrupted uint8 images.

The output for an image depends only on (seed, index, corruption, severity) — and on the profile
and backend — never on the batch it came in, the batch size or the device order, because every
image gets its own random stream (:mod:`corruptions.philox`).

Conversion back to uint8: :func:`corruptions.levels.to_uint8`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .jpeg import jpeg_round_trip
from .levels import to_uint8
from .profiles import resolve_profile
from .registry import UnknownCorruptionError, validate, validate_severity
from .philox import Streams

BACKENDS = ("torch", "reference")


#: Target number of elements per chunk of the batch on the CPU. Large float tensors (tens of MB)
#: are handed back to the OS on every free by glibc, so each op on a whole 224 px batch paid page
#: faults for every temporary; chunks of ~0.5 M elements stay in the allocator's heap and in cache.
_CPU_CHUNK_ELEMENTS = 1 << 19


def _chunks(n: int, image_elements: int, device: torch.device) -> list[tuple[int, int]]:
    if device.type != "cpu":
        return [(0, n)]
    step = max(1, _CPU_CHUNK_ELEMENTS // max(1, image_elements))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def _check_images(images: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 in [0, 255], got {images.dtype}")
    single = images.dim() == 3
    batch = images[None] if single else images
    if batch.dim() != 4 or batch.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) or (3, H, W), got {tuple(images.shape)}")
    return batch, single


def corrupt(images: torch.Tensor, name: str, severity: int, *, seed: int = 0,
            indices: Sequence[int] | None = None, profile: str | None = None,
            jpeg_quality: int | None = None, backend: str = "torch") -> torch.Tensor:
    """Corrupt uint8 images of shape (B, 3, H, W) (or one (3, H, W) image) on any device.

    Args:
        name: one of :data:`corruptions.ALL`.
        severity: 1..5.
        seed: experiment seed; with ``indices`` it fixes every image's random stream.
        indices: the dataset index of each image (default ``range(B)``).
        profile: 'cifar', 'tinyimagenet' or 'imagenet' parameter tables; ``None`` picks by image
            size (:func:`corruptions.profile_for_size`).
        jpeg_quality: if given, JPEG-encode/decode the result at this quality (85 reproduces the
            storage step of the released ImageNet-C).
        backend: 'torch' (batched, any device) or 'reference' (imagecorruptions on the CPU,
            imagenet profile only).
    Returns:
        uint8 tensor of the input's shape, on the input's device.
    """
    batch, single = _check_images(images)
    name = validate(name)
    severity = validate_severity(severity)
    profile = resolve_profile(profile, tuple(batch.shape[-2:]))
    if backend not in BACKENDS:
        raise UnknownCorruptionError(f"unknown backend '{backend}'. Choose from: {', '.join(BACKENDS)}.")
    n = batch.shape[0]
    indices = list(range(n)) if indices is None else [int(i) for i in indices]
    if len(indices) != n:
        raise ValueError(f"got {len(indices)} indices for {n} images")

    if n == 0:
        out = batch.clone()
    elif backend == "reference":
        from .reference import corrupt_reference

        out = corrupt_reference(batch, name, severity, seed=seed, indices=indices,
                                profile=profile).to(batch.device)
    else:
        from .ops import IMPLEMENTATIONS

        impl = IMPLEMENTATIONS[name]
        c = impl.param(profile, severity)
        # Every image has its own stream and the ops are per image, so splitting the batch
        # into chunks (CPU only, see _CPU_CHUNK_ELEMENTS) cannot change any image's output.
        streams = Streams.for_images(seed, indices, name, severity)
        parts = []
        with torch.no_grad():
            spans = [(0, n)] if impl.per_image else _chunks(n, batch[0].numel(), batch.device)
            for lo, hi in spans:
                if impl.fn_uint8 is not None:
                    parts.append(impl.fn_uint8(batch[lo:hi], c, streams[lo:hi]))
                    continue
                x = batch[lo:hi].to(torch.float32).div_(255)
                y = impl.fn(x, c, streams[lo:hi])
                parts.append(to_uint8(y, inplace=y._base is None))  # y is fresh (or x)
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
    if jpeg_quality is not None and n:
        out = jpeg_round_trip(out, int(jpeg_quality))
    return out[0] if single else out

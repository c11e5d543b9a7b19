"""Reference backend: the ``imagecorruptions`` package (imagecorruptions-imaug fork), one image at
a time on the CPU.

It implements the ImageNet-C (224 px) parameters only, so it is offered for the ``imagenet``
profile only. It draws from NumPy's *global* random state, which is reseeded before every image
from :func:`corruptions.seeding.sample_seed`, so an image's output depends only on
(seed, index, corruption, severity) here too (not on the torch backend's numbers: the two
backends draw different random streams). Corruptions that take their own ``seed`` argument in
that package (impulse_noise, glass_blur) receive the same per-image seed.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .seeding import sample_seed

#: corruptions whose imagecorruptions function takes an explicit ``seed`` keyword.
_SEEDED = frozenset({"impulse_noise", "glass_blur"})

REFERENCE_PROFILE = "imagenet"


def check_profile(profile: str) -> None:
    if profile != REFERENCE_PROFILE:
        raise ValueError(
            f"reference backend implements only the imagenet profile (224 px), got profile "
            f"'{profile}'; use backend='torch'")


def corrupt_reference(images: torch.Tensor, name: str, severity: int, *, seed: int,
                      indices: Sequence[int], profile: str) -> torch.Tensor:
    """Corrupt uint8 (B, 3, H, W) images with ``imagecorruptions.corrupt``; returns uint8 on CPU."""
    check_profile(profile)
    from imagecorruptions import corrupt as ic_corrupt  # heavy import, only when asked for

    hwc = images.detach().cpu().permute(0, 2, 3, 1).contiguous().numpy()
    out = []
    for image, index in zip(hwc, indices):
        image_seed = sample_seed(seed, index, name, severity) % 2**32
        np.random.seed(image_seed)
        kwargs = {"seed": image_seed} if name in _SEEDED else {}
        result = ic_corrupt(image, corruption_name=name, severity=severity, **kwargs)
        out.append(np.asarray(result, dtype=np.uint8).reshape(image.shape))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()

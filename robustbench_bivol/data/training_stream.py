"""Training images streamed from an image folder, for ImageNet-size data that cannot sit in memory.

Why: ``train`` decodes CIFAR-size splits into one uint8 tensor (150 MB for CIFAR-10); ImageNet's
1.28 M images would take about 190 GB at 224 px. Here DataLoader workers read, decode and augment
each step's images as the step comes, with the ImageNet recipe's augmentation (random resized crop,
scale 0.08-1, aspect 3/4-4/3, then a horizontal flip), drawn from a generator keyed by
(seed, epoch, sample index): an image's crop does not depend on the batch, the worker count or the
rank, and a resumed epoch repeats its draws.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from corruptions.seeding import sample_seed

from .folder import open_rgb

#: The random resized crop of torchvision's ImageNet training recipe.
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)
_STREAM = "train-augment"  # the key of the augmentation streams (corruptions.seeding)


def random_resized_crop_box(width: int, height: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a crop covering SCALE of the area at an aspect ratio in RATIO
    (log-uniform), as ``torchvision.transforms.RandomResizedCrop.get_params``, from ``generator``;
    after 10 misses, the centre crop at the nearest allowed ratio."""
    area = width * height
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        draws = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        target = area * (SCALE[0] + (SCALE[1] - SCALE[0]) * draws[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * draws[1])
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(draws[2] * (height - h + 1)), int(draws[3] * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < RATIO[0]:
        w, h = width, round(width / RATIO[0])
    elif in_ratio > RATIO[1]:
        h, w = height, round(height * RATIO[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class StreamingTrainSet(torch.utils.data.Dataset):
    """(uint8 (3, size, size) image, label) for the (path, label) ``samples``, augmented anew each
    epoch (set :attr:`epoch` before iterating; workers get a copy when the epoch's loader starts)."""

    def __init__(self, samples: Sequence[tuple[str, int]], size: int, seed: int) -> None:
        self.samples, self.size, self.seed = list(samples), size, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        image = open_rgb(path)
        generator = torch.Generator().manual_seed(sample_seed(self.seed, index, _STREAM, self.epoch))
        top, left, h, w = random_resized_crop_box(*image.size, generator)
        image = TF.resized_crop(image, top, left, h, w, [self.size, self.size],
                                interpolation=InterpolationMode.BILINEAR, antialias=True)
        if torch.rand((), generator=generator) < 0.5:
            image = TF.hflip(image)
        return TF.pil_to_tensor(image), label


class RankBatches(torch.utils.data.Sampler[list[int]]):
    """The sample indices of this rank's share of each global batch of ``order``: every world-th
    sample, the partition ``DistributedSampler`` gives for the same permutation."""

    def __init__(self, order: torch.Tensor, batch_size: int, rank: int, world: int) -> None:
        self.order, self.batch_size, self.rank, self.world = order, batch_size, rank, world

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for start in range(0, len(self.order), self.batch_size):
            yield self.order[start:start + self.batch_size][self.rank::self.world].tolist()

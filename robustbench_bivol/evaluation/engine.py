"""Corrupt once, evaluate many: every model of a run sees the same corrupted images.

The sample list is cut into shards. For each shard the clean images are decoded once; for each
cell (corruption, severity) each batch is corrupted once and fed to every model. The store keeps
one file per (cell, shard), so an interrupted run resumes where it stopped.

Where a cell's images come from is a :class:`CellSource`: :class:`CorruptOnTheFly` decodes the
clean images of a shard once and corrupts each batch (:func:`corrupt_batch`); :class:`ReadFromDisk`
reads pre-rendered images (ImageNet-C / CIFAR-10-C folders). Both share the same loop.
Unreadable images follow ``on_bad_image``: 'fail' stops with a one-line error naming the file,
'skip' leaves the image out of the piece; the reports then drop it from every cell and model.

On a GPU the input pipeline keeps the device busy: a shard's clean images are moved there once
(one copy from pinned memory) and every cell corrupts them there; image folders' JPEGs are decoded
there too (nvjpeg, :func:`decode_device`); one loader reads every shard of the run, so its workers
read the next shard while the models evaluate this one; and predictions stay on the device until
a piece ends, so the host queues the next batch's corruption while the GPU runs the models.
"""
from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import corruptions
from corruptions.philox import STREAMS

from ..checkpoint import CheckpointMeta
from ..data.folder import BadImageError, EncodedJpeg, can_decode_jpeg_on
from .store import CLEAN, Cell, CellResult, RunStore


@dataclass
class ModelEntry:
    """A model ready to evaluate: its key in the results, its weights and preprocessing."""

    name: str
    module: nn.Module
    meta: CheckpointMeta
    weights: str = ""

    def prepare(self, device: torch.device, channels_last: bool = False) -> None:
        """Move the model to ``device`` in eval mode; ``channels_last`` stores its 4-D weights and
        every input batch channels-last (NHWC), the layout GPU convolution kernels run fastest on.
        (``Module.to(memory_format=...)`` refuses modules with 5-D weights, such as CondConv's
        expert kernels, hence the loop.)"""
        self.module.eval().to(device)
        self._channels_last = channels_last
        if channels_last:
            with torch.no_grad():
                for tensor in itertools.chain(self.module.parameters(), self.module.buffers()):
                    if tensor.dim() == 4:
                        tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
        self._mean = torch.tensor(self.meta.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.meta.std, device=device).view(1, 3, 1, 1)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor, amp: bool = False) -> torch.Tensor:
        """Top-1 classes of (B,3,H,W) images on the 0..255 scale (uint8, or float where a
        perturbation is kept off the 8-bit grid, as by fourier), normalised with the checkpoint's mean/std."""
        if self._channels_last:  # converted before .float(): a quarter of the bytes to move
            images = images.contiguous(memory_format=torch.channels_last)
        x = (images.float() / 255.0 - self._mean) / self._std
        context = torch.autocast(images.device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        with context:
            logits = self.module(x)
        return logits.argmax(1)


@dataclass
class EvalPlan:
    """What to evaluate; its ``config`` identifies the run folder's contents."""

    dataset_name: str
    indices: np.ndarray
    corruption_names: list[str]
    severities: list[int]
    seed: int = 0
    profile: str | None = None
    jpeg_quality: int | None = None
    shard_size: int = 512
    extra_config: dict[str, Any] = field(default_factory=dict)
    include_clean: bool = True

    @property
    def cells(self) -> list[Cell]:
        clean = [(CLEAN, 0)] if self.include_clean else []
        return clean + [(c, s) for c in self.corruption_names for s in self.severities]

    @property
    def shards(self) -> list[np.ndarray]:
        return [self.indices[i:i + self.shard_size] for i in range(0, len(self.indices), self.shard_size)]

    def config(self, models: Sequence[ModelEntry]) -> dict[str, Any]:
        return {
            "dataset": self.dataset_name,
            "n_samples": int(len(self.indices)),
            "indices_digest": _digest(self.indices),
            "corruptions": list(self.corruption_names),
            "severities": list(self.severities),
            "seed": self.seed,
            "profile": self.profile,
            "jpeg_quality": self.jpeg_quality,
            "random_streams": STREAMS,
            "shard_size": self.shard_size,
            "models": {m.name: m.weights for m in models},
            **self.extra_config,
        }


def _digest(indices: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]


BAD_IMAGE_POLICIES = ("fail", "skip")


#: Images per read of the loader (a batch of its workers); the cells' batches are cut from shards.
READ_BATCH = 256
#: An item of a tolerant loader: (image, or a file still encoded, or None; label; error or None).
Item = tuple[Any, int, str | None]


class _Indexed(torch.utils.data.Dataset):
    """Items ``indices`` of ``dataset``. ``tolerant``: (image, label, error) items, a bad image's
    error as text; ``encoded``: images as the dataset's ``load_encoded`` gives them."""

    def __init__(self, dataset: Any, indices: np.ndarray, tolerant: bool = False, encoded: bool = False) -> None:
        self.dataset, self.indices, self.tolerant, self.encoded = dataset, indices, tolerant, encoded

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        index = int(self.indices[i])
        if not self.tolerant:
            return self.dataset[index]
        try:
            image, label = self.dataset.load_encoded(index) if self.encoded else self.dataset[index]
            return image, label, None
        except BadImageError as exc:  # reported by the main process, so workers never die on it
            return None, -1, str(exc)


def _keep_items(batch: list[Any]) -> list[Any]:
    return batch


def load_shard(dataset: Any, indices: np.ndarray, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a shard's clean images once: uint8 (N,3,H,W) and labels (N,)."""
    loader = DataLoader(_Indexed(dataset, indices), batch_size=READ_BATCH, num_workers=workers, shuffle=False)
    images, labels = zip(*loader)
    return torch.cat(images), torch.cat(labels)


def _bad_image(message: str) -> BadImageError:
    return BadImageError(f"{message} (use --on-bad-image skip to leave unreadable images out)")


def decode_device(dataset: Any, device: torch.device) -> torch.device | None:
    """Where a dataset's JPEGs are decoded: on a CUDA ``device`` when the dataset can hand its files
    over still encoded (``load_encoded``/``decode_encoded``: image folders) and torchvision can decode
    there (nvjpeg), which takes the decoding off the CPU; None: by the loader on the CPU, as on a
    CPU run."""
    if device.type == "cuda" and hasattr(dataset, "decode_encoded") and can_decode_jpeg_on(device):
        return device
    return None


def stack_on(images: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Stack uint8 (3,H,W) images on ``device``. On a GPU those still on the host travel in one
    non-blocking copy from pinned memory, so the host goes on while it runs."""
    if not images:
        return torch.empty(0, dtype=torch.uint8, device=device)
    if device.type != "cuda":
        return torch.stack(images).to(device)
    on_host = [image.device.type == "cpu" for image in images]
    if any(on_host):
        host = [image for image, here in zip(images, on_host) if here]
        pinned = torch.empty((len(host), *host[0].shape), dtype=torch.uint8, pin_memory=True)
        moved = iter(torch.stack(host, out=pinned).to(device, non_blocking=True))
        images = [next(moved) if here else image for image, here in zip(images, on_host)]
    return torch.stack(images)


def _read_batches(part_sizes: Sequence[int]) -> list[range]:
    """The loader's reads: batches of at most READ_BATCH positions, none across two parts."""
    batches, offset = [], 0
    for size in part_sizes:
        batches += [range(offset + start, offset + min(start + READ_BATCH, size))
                    for start in range(0, size, READ_BATCH)]
        offset += size
    return batches


@dataclass
class Shard:
    """A shard as the loop sees it: its readable samples, their labels and clean images if decoded."""

    indices: np.ndarray
    labels: torch.Tensor
    images: torch.Tensor | None = None
    skipped: dict[int, str] = field(default_factory=dict)


class CellSource:
    """Where each cell's images come from: ``shards`` loads each shard once, then ``cell_batch``
    gives each batch of a cell. ``gpu_decode``: decode image folders' JPEGs on a GPU run's device
    (:func:`decode_device`); off, on the CPU, as on a CPU run, so that the clean images are the
    CPU's bit for bit (nvjpeg and the GPU resize round differently from Pillow)."""

    def __init__(self, dataset: Any, on_bad_image: str = "fail", workers: int = 0, gpu_decode: bool = True) -> None:
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")
        self.dataset, self.on_bad_image, self.workers, self.gpu_decode = dataset, on_bad_image, workers, gpu_decode

    def shards(self, parts: Sequence[np.ndarray], device: torch.device) -> Iterator[Shard]:
        """Each shard of ``parts`` (arrays of sample indices) in turn, loaded for ``device``."""
        raise NotImplementedError

    def load(self, indices: np.ndarray, device: torch.device = torch.device("cpu")) -> Shard:
        """One shard, loaded for ``device``."""
        (shard,) = self.shards([indices], device)
        return shard

    def cell_batch(self, shard: Shard, start: int, stop: int, cell: Cell, plan: EvalPlan,
                   device: torch.device) -> tuple[torch.Tensor, np.ndarray | None]:
        """The cell's uint8 images of ``shard[start:stop]`` on ``device`` and, when some could not
        be read (skip policy), the boolean mask of those returned."""
        raise NotImplementedError

    def _decode(self, parts: Sequence[np.ndarray],
                device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray, dict[int, str]]]:
        """For each array of sample indices in ``parts``, in turn, its images decoded under the
        bad-image policy: (uint8 images on ``device``, labels, kept mask, {index: error} of the
        skipped ones). One loader reads them all, so with workers the next part is read while the
        caller works on this one."""
        on_device = decode_device(self.dataset, device) if self.gpu_decode else None
        loader = DataLoader(_Indexed(self.dataset, np.concatenate(parts), tolerant=True, encoded=on_device is not None),
                            batch_sampler=_read_batches([len(part) for part in parts]),
                            num_workers=self.workers, collate_fn=_keep_items)
        batches = iter(loader)
        for part in parts:
            images, labels, keep, skipped = [], [], [], {}
            while len(keep) < len(part):
                batch = next(batches)
                if on_device is not None:
                    batch = self._decode_encoded(batch, on_device)
                for image, label, error in batch:
                    index = int(part[len(keep)])
                    if error is not None:
                        if self.on_bad_image == "fail":
                            raise _bad_image(error)
                        skipped[index] = error
                        keep.append(False)
                        continue
                    images.append(image)
                    labels.append(int(label))
                    keep.append(True)
            yield (stack_on(images, device), torch.as_tensor(labels, dtype=torch.int64), np.asarray(keep, dtype=bool),
                   skipped)

    def _decode_encoded(self, batch: list[Item], device: torch.device) -> list[Item]:
        """The loader's items with their encoded JPEGs decoded on ``device`` in one call; one it
        cannot read becomes an error item."""
        encoded = [image for image, _, _ in batch if isinstance(image, EncodedJpeg)]
        decoded = iter(self.dataset.decode_encoded(encoded, device) if encoded else [])
        items = []
        for image, label, error in batch:
            if isinstance(image, EncodedJpeg):
                image = next(decoded)
                if isinstance(image, BadImageError):
                    image, label, error = None, -1, str(image)
            items.append((image, label, error))
        return items


class CorruptOnTheFly(CellSource):
    """Clean images decoded once per shard; each cell's batch is corrupted in memory (on the
    run's device)."""

    def shards(self, parts: Sequence[np.ndarray], device: torch.device) -> Iterator[Shard]:
        for indices, (images, labels, keep, skipped) in zip(parts, self._decode(parts, device)):
            yield Shard(np.asarray(indices)[keep], labels, images, skipped)

    def cell_batch(self, shard: Shard, start: int, stop: int, cell: Cell, plan: EvalPlan,
                   device: torch.device) -> tuple[torch.Tensor, np.ndarray | None]:
        return corrupt_batch(shard.images[start:stop].to(device), shard.indices[start:stop], cell, plan), None


class ReadFromDisk(CellSource):
    """Pre-rendered cells read from disk (``dataset.read(cell, indices)``); the clean cell from the
    dataset's clean images (``dataset[i]``)."""

    def shards(self, parts: Sequence[np.ndarray], device: torch.device) -> Iterator[Shard]:
        for indices in parts:
            labels = torch.as_tensor(np.asarray(self.dataset.labels)[np.asarray(indices, dtype=np.int64)])
            yield Shard(np.asarray(indices), labels)

    def cell_batch(self, shard: Shard, start: int, stop: int, cell: Cell, plan: EvalPlan,
                   device: torch.device) -> tuple[torch.Tensor, np.ndarray | None]:
        indices = shard.indices[start:stop]
        if cell[0] == CLEAN:
            [(images, _, keep, _)] = self._decode([indices], device)
        else:
            items = self.dataset.read(cell, indices.tolist())
            keep = np.asarray([not isinstance(item, Exception) for item in items], dtype=bool)
            if not keep.all():
                first = next(item for item in items if isinstance(item, Exception))
                if self.on_bad_image == "fail":
                    raise _bad_image(str(first))
            images = stack_on([item for item in items if not isinstance(item, Exception)], device)
        return images, (None if keep.all() else keep)


def source_for(dataset: Any, on_bad_image: str = "fail", workers: int = 0, gpu_decode: bool = True) -> CellSource:
    if isinstance(dataset, CellSource):
        return dataset
    cls = ReadFromDisk if getattr(dataset, "is_prerendered", False) else CorruptOnTheFly
    return cls(dataset, on_bad_image=on_bad_image, workers=workers, gpu_decode=gpu_decode)


def corrupt_batch(images: torch.Tensor, indices: np.ndarray, cell: Cell, plan: EvalPlan) -> torch.Tensor:
    """The cell's version of a clean uint8 batch; the clean cell passes images through."""
    corruption, severity = cell
    if corruption == CLEAN:
        return images
    return corruptions.corrupt(images, corruption, severity, seed=plan.seed, indices=indices.tolist(),
                               profile=plan.profile, jpeg_quality=plan.jpeg_quality)


def _run_piece(plan: EvalPlan, models: Sequence[ModelEntry], source: CellSource, shard: Shard, cell: Cell,
               device: torch.device, batch_size: int, amp: bool, bar: tqdm) -> CellResult:
    """One (cell, shard): produce each batch of the cell once and feed it to every model."""
    bar.set_postfix_str("clean" if cell[0] == CLEAN else f"{cell[0]} s{cell[1]}")
    predictions: dict[str, list[torch.Tensor]] = {m.name: [] for m in models}
    kept_indices, kept_labels = [], []
    for start in range(0, len(shard.indices), batch_size):
        stop = min(start + batch_size, len(shard.indices))
        batch, keep = source.cell_batch(shard, start, stop, cell, plan, device)
        indices, labels = shard.indices[start:stop], shard.labels[start:stop]
        if keep is not None:
            indices, labels = indices[keep], labels[torch.from_numpy(keep)]
        kept_indices.append(np.asarray(indices, dtype=np.int64))
        kept_labels.append(labels.numpy().astype(np.int64))
        if len(indices):
            for model in models:  # kept on the device: a copy to the host here would wait for the GPU
                predictions[model.name].append(model.predict(batch, amp))
        bar.update(stop - start)
    empty = np.empty(0, dtype=np.int64)
    return CellResult(
        indices=np.concatenate(kept_indices) if kept_indices else empty,
        labels=np.concatenate(kept_labels) if kept_labels else empty,
        predictions={name: (torch.cat(p).cpu().numpy() if p else np.empty(0)).astype(np.int32)
                     for name, p in predictions.items()},
    )


def evaluate(plan: EvalPlan, models: Sequence[ModelEntry], dataset: Any, store: RunStore | None, *,
             device: str | torch.device = "cpu", batch_size: int = 128, workers: int = 0,
             amp: bool = False, channels_last: bool = False, gpu_decode: bool = True, progress: bool = True,
             on_bad_image: str = "fail") -> None:
    """Fill every missing (cell, shard) of ``store``; finished pieces are skipped.

    ``dataset`` is a dataset (pre-rendered ones are read from disk, others corrupted on the fly)
    or a :class:`CellSource`. ``amp``: bfloat16 autocast; ``channels_last``: the models run
    channels-last (:meth:`ModelEntry.prepare`); ``gpu_decode``: see :class:`CellSource`.

    Under torch.distributed, shard ``k`` belongs to rank ``k % world_size``. Rank 0 alone reads
    and writes the store (other ranks need no shared filesystem): it broadcasts what is already
    done, and after each round of shards gathers the other ranks' results and writes them.
    The results do not depend on the number of ranks: a corrupted image depends only on its
    sample index, and evaluation runs in eval mode.
    """
    rank, world = _rank_and_world()
    device = torch.device(device)
    source = source_for(dataset, on_bad_image, workers, gpu_decode)
    for model in models:
        model.prepare(device, channels_last)
    shards, cells = plan.shards, plan.cells
    done = [(k, cell) for k in range(len(shards)) for cell in cells if store.has(cell, k)] if rank == 0 else None
    done = set(_broadcast(done, world))
    todo = {k: [cell for cell in cells if (k, cell) not in done] for k in range(len(shards))}
    loaded = source.shards([shards[k] for k in range(rank, len(shards), world) if todo[k]], device)
    mine = sum(len(shards[k]) * len(todo[k]) for k in range(rank, len(shards), world))
    bar = tqdm(total=mine, unit="img", unit_scale=True, disable=not progress or rank != 0,
               desc="evaluate" if world == 1 else f"evaluate (rank 0 of {world})", dynamic_ncols=True)
    with bar:
        for first in range(0, len(shards), world):
            k = first + rank
            results: list[tuple[Cell, int, CellResult]] = []
            if k < len(shards) and todo[k]:
                shard = next(loaded)
                bar.update((len(shards[k]) - len(shard.indices)) * len(todo[k]))  # skipped clean images
                for cell in todo[k]:
                    result = _run_piece(plan, models, source, shard, cell, device, batch_size, amp, bar)
                    if world == 1:
                        store.write(cell, k, result)  # write at once: a kill loses one piece at most
                    else:
                        results.append((cell, k, result))
            if world > 1:
                for part in _gather(results, world, rank):
                    for cell, shard, result in part:
                        store.write(cell, shard, result)


def _rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _broadcast(value: Any, world: int) -> Any:
    if world == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _gather(value: Any, world: int, rank: int) -> list[Any]:
    """Rank 0 receives every rank's value; other ranks receive nothing."""
    import torch.distributed as dist

    out = [None] * world if rank == 0 else None
    dist.gather_object(value, out, dst=0)
    return out or []

"""Corrupt once, evaluate many: every model of a run sees the same corrupted images.

The sample list is cut into shards. For each shard the clean images are decoded once; for each
cell (corruption, severity) each batch is corrupted once and fed to every model. The store keeps
one file per (cell, shard), so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import corruptions

from ..checkpoint import CheckpointMeta
from .store import CLEAN, Cell, CellResult, RunStore


@dataclass
class ModelEntry:
    """A model ready to evaluate: its key in the results, its weights and preprocessing."""

    name: str
    module: nn.Module
    meta: CheckpointMeta
    weights: str = ""

    def prepare(self, device: torch.device) -> None:
        self.module.eval().to(device)
        self._mean = torch.tensor(self.meta.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.meta.std, device=device).view(1, 3, 1, 1)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor, amp: bool = False) -> torch.Tensor:
        """Top-1 classes of uint8 (B,3,H,W) images, normalised with the checkpoint's mean/std."""
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

    @property
    def cells(self) -> list[Cell]:
        return [(CLEAN, 0)] + [(c, s) for c in self.corruption_names for s in self.severities]

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
            "shard_size": self.shard_size,
            "models": {m.name: m.weights for m in models},
            **self.extra_config,
        }


def _digest(indices: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, dataset: Any, indices: np.ndarray) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.dataset[int(self.indices[i])]


def load_shard(dataset: Any, indices: np.ndarray, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a shard's clean images once: uint8 (N,3,H,W) and labels (N,)."""
    loader = DataLoader(_Indexed(dataset, indices), batch_size=256, num_workers=workers, shuffle=False)
    images, labels = zip(*loader)
    return torch.cat(images), torch.cat(labels)


def corrupt_batch(images: torch.Tensor, indices: np.ndarray, cell: Cell, plan: EvalPlan) -> torch.Tensor:
    """The cell's version of a clean uint8 batch; the clean cell passes images through."""
    corruption, severity = cell
    if corruption == CLEAN:
        return images
    return corruptions.corrupt(images, corruption, severity, seed=plan.seed, indices=indices.tolist(),
                               profile=plan.profile, jpeg_quality=plan.jpeg_quality)


def _run_piece(plan: EvalPlan, models: Sequence[ModelEntry], shard: np.ndarray, cell: Cell, clean: torch.Tensor,
               labels: torch.Tensor, device: torch.device, batch_size: int, amp: bool, bar: tqdm) -> CellResult:
    """One (cell, shard): corrupt each batch once and feed it to every model."""
    bar.set_postfix_str("clean" if cell[0] == CLEAN else f"{cell[0]} s{cell[1]}")
    predictions: dict[str, list[torch.Tensor]] = {m.name: [] for m in models}
    for start in range(0, len(shard), batch_size):
        stop = min(start + batch_size, len(shard))
        batch = corrupt_batch(clean[start:stop].to(device), shard[start:stop], cell, plan)
        for model in models:
            predictions[model.name].append(model.predict(batch, amp).cpu())
        bar.update(stop - start)
    return CellResult(
        indices=np.asarray(shard, dtype=np.int64),
        labels=labels.numpy().astype(np.int64),
        predictions={name: torch.cat(p).numpy().astype(np.int32) for name, p in predictions.items()},
    )


def evaluate(plan: EvalPlan, models: Sequence[ModelEntry], dataset: Any, store: RunStore | None, *,
             device: str | torch.device = "cpu", batch_size: int = 128, workers: int = 0,
             amp: bool = False, progress: bool = True) -> None:
    """Fill every missing (cell, shard) of ``store``; finished pieces are skipped.

    Under torch.distributed, shard ``k`` belongs to rank ``k % world_size``. Rank 0 alone reads
    and writes the store (other ranks need no shared filesystem): it broadcasts what is already
    done, and after each round of shards gathers the other ranks' results and writes them.
    The results do not depend on the number of ranks: a corrupted image depends only on its
    sample index, and evaluation runs in eval mode.
    """
    rank, world = _rank_and_world()
    device = torch.device(device)
    for model in models:
        model.prepare(device)
    shards, cells = plan.shards, plan.cells
    done = [(k, cell) for k in range(len(shards)) for cell in cells if store.has(cell, k)] if rank == 0 else None
    done = set(_broadcast(done, world))
    todo = {k: [cell for cell in cells if (k, cell) not in done] for k in range(len(shards))}
    mine = sum(len(shards[k]) * len(todo[k]) for k in range(rank, len(shards), world))
    bar = tqdm(total=mine, unit="img", unit_scale=True, disable=not progress or rank != 0,
               desc="evaluate" if world == 1 else f"evaluate (rank 0 of {world})", dynamic_ncols=True)
    with bar:
        for first in range(0, len(shards), world):
            k = first + rank
            results: list[tuple[Cell, int, CellResult]] = []
            if k < len(shards) and todo[k]:
                clean, labels = load_shard(dataset, shards[k], workers)
                for cell in todo[k]:
                    result = _run_piece(plan, models, shards[k], cell, clean, labels, device, batch_size, amp, bar)
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

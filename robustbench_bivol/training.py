"""Train a model on an image dataset and save checkpoints in the toolkit's format.

CIFAR-size models (the built-in dataset, CIFAR-10) train from memory: the training split is
decoded once into a uint8 tensor and augmented on the fly (random crop with 4 px padding,
horizontal flip) with generators seeded by (seed, epoch). ImageNet-size models stream their
images from the folder (:mod:`.data.training_stream`: DataLoader workers, random resized crop and
flip keyed by (seed, epoch, sample)). Either way a resumed run continues exactly.
"""
from __future__ import annotations

import contextlib
import csv
import io
import math
import platform
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from .distributed import process_group
from .data import balanced_subset, dataset_labels, open_dataset
from .data.folder import ImageFolderDataset
from .data.training_stream import RankBatches, StreamingTrainSet
from .errors import UsageError
from .evaluation.engine import load_shard
from .io import atomic_write_text
from .models import create_model, model_spec, set_temperature
from .models.operators import Involution2d
from .sync_batchnorm import synchronise_batchnorm

#: Models meant for inputs this large or larger (ImageNet-style) stream their training images;
#: smaller ones (CIFAR-style) train from memory.
STREAMING_INPUT_SIZE = 128
#: Training images whose centre crops give a streamed dataset's normalisation statistics.
STATISTICS_SAMPLE = 1000

#: DyConv (Chen et al. 2020): softmax temperature annealed linearly from 30 to 1 over 10 epochs.
DYCONV_TAU_START, DYCONV_TAU_END, DYCONV_ANNEAL_EPOCHS = 30.0, 1.0, 10


@dataclass
class TrainConfig:
    model: str
    dataset: str = "builtin"
    out: str = "runs/train"
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # or "onecycle"
    label_smoothing: float = 0.0
    amp: bool = False
    seed: int = 0
    device: str = "cpu"
    workers: int = 0
    limit: int | None = None
    anneal_epochs: int = DYCONV_ANNEAL_EPOCHS
    warmup_epochs: float = 0.0
    generator_lr_scale: float = 1.0
    holdout: int = 0


#: Options added after runs were checkpointed: their value in a checkpoint that predates them.
_PRE_OPTION_DEFAULTS = {"generator_lr_scale": 1.0, "holdout": 0}
#: Options that say where a run lives or runs, not what it trains: a run may resume on another
#: machine (data extracted elsewhere, another device or worker count, the folder moved).
_LOCATION_OPTIONS = ("out", "device", "workers")


def _recipe(config: dict) -> dict:
    """What must match for a checkpoint to resume: the configuration without location options,
    the dataset named by its folder's name (``builtin`` stays ``builtin``)."""
    recipe = {k: v for k, v in {**_PRE_OPTION_DEFAULTS, **config}.items() if k not in _LOCATION_OPTIONS}
    recipe["dataset"] = Path(recipe["dataset"]).name
    return recipe


def dyconv_temperature(epoch: float, anneal_epochs: int) -> float:
    """Linear annealing 30 -> 1 over the first ``anneal_epochs`` epochs, then 1."""
    if anneal_epochs <= 0:
        return DYCONV_TAU_END
    progress = min(epoch / anneal_epochs, 1.0)
    return DYCONV_TAU_START + (DYCONV_TAU_END - DYCONV_TAU_START) * progress


def crop_flip_draws(n: int, generator: torch.Generator, pad: int = 4) -> tuple[torch.Tensor, ...]:
    """Random crop offsets and flips for ``n`` images, drawn in one fixed order (dx, dy, flip)."""
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return dx, dy, flip


def crop_flip(images: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, flip: torch.Tensor,
              pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip, per image, batched, on the images' device."""
    n, _, h, w = images.shape
    device = images.device
    dx, dy, flip = dx.to(device), dy.to(device), flip.to(device)
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = (dy.view(n, 1) + torch.arange(h, device=device)).view(n, 1, h, 1).expand(n, 3, h, w)
    cols = (dx.view(n, 1) + torch.arange(w, device=device)).view(n, 1, 1, w).expand(n, 3, h, w)
    cols = torch.where(flip.view(n, 1, 1, 1), cols.flip(-1), cols)
    return padded[torch.arange(n, device=device).view(n, 1, 1, 1), torch.arange(3, device=device).view(1, 3, 1, 1),
                  rows, cols]


def _load_split(dataset: str, split: str, size: int, limit: int | None, workers: int):
    data = open_dataset(dataset if dataset == "builtin" else str(Path(dataset) / split), split=split, size=size)
    indices = balanced_subset(dataset_labels(data), limit)
    images, labels = load_shard(data, indices, workers)
    return images, labels, list(data.classes), data.name


@torch.inference_mode()
def count_correct(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], mean: torch.Tensor,
                  std: torch.Tensor, device: torch.device) -> int:
    """Top-1 hits of ``model`` over (uint8 images, labels) batches."""
    model.eval()
    correct = 0
    for images, labels in batches:
        x = (images.to(device).float() / 255 - mean) / std
        correct += int((model(x).argmax(1).cpu() == labels.cpu()).sum())
    return correct


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor,
             std: torch.Tensor, device: torch.device, batch_size: int = 500) -> float:
    """Top-1 accuracy on in-memory uint8 images."""
    batches = ((images[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, len(labels), batch_size))
    return count_correct(model, batches, mean, std, device) / len(labels)


def _schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """Cosine decay after an optional linear warm-up (dynamic operators can stall at chance when
    their routing/kernel generators see the full learning rate from step one), or one-cycle."""
    total = config.epochs * steps_per_epoch
    warmup = max(1, round(config.warmup_epochs * steps_per_epoch))
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / total)))
    if config.schedule == "onecycle":
        if config.warmup_epochs:
            raise UsageError("--warmup-epochs applies to the cosine schedule; one-cycle warms up by itself")
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[group["lr"] for group in optimizer.param_groups], total_steps=total)
    raise UsageError(f"unknown schedule '{config.schedule}' (choose cosine or onecycle)")


def parameter_groups(model: nn.Module, lr: float, generator_lr_scale: float) -> list[dict]:
    """One SGD group for the network at ``lr``, one at ``generator_lr_scale * lr`` for the
    involution kernel generators' input-dependent part (see :class:`Involution2d`).

    Why: at the full rate those parameters make the per-position kernels vary faster than the
    rest of the network can follow, and involution_resnet20 stayed at chance on the built-in
    shapes (with them frozen it reached 64% in the same probe; at 0.01x it learns).
    """
    if generator_lr_scale <= 0:
        raise UsageError(f"--generator-lr-scale must be positive, got {generator_lr_scale}")
    varying = {id(p) for m in model.modules() if isinstance(m, Involution2d)
               for p in m.kernel_variation_parameters()}
    if not varying or generator_lr_scale == 1.0:
        return [{"params": list(model.parameters()), "lr": lr}]
    return [{"params": [p for p in model.parameters() if id(p) not in varying], "lr": lr},
            {"params": [p for p in model.parameters() if id(p) in varying], "lr": lr * generator_lr_scale}]


def train(config: TrainConfig, *, command: str = "", progress: bool = True) -> Path:
    """Train ``config.model``; checkpoints every epoch to ``out/last.pt``; returns ``out/final.pt``.

    Rerunning with the same ``out`` resumes from ``last.pt`` (a different recipe there is
    refused). The per-epoch log goes to ``out/log.csv``.

    Under ``torchrun`` the same call trains data-parallel (DDP): ``batch_size`` stays the global
    batch, split evenly over the ranks, and every BatchNorm normalises over the global batch
    (:mod:`.sync_batchnorm`), so N processes train what one process trains, up to float
    rounding. Rank 0 writes the log and the checkpoints; every rank resumes from ``last.pt``
    (a filesystem all ranks see).
    """
    with process_group(config.device) as (rank, world, device):
        return _train(config, rank, world, torch.device(device), command, progress and rank == 0)


def _epoch_order(config: TrainConfig, epoch: int, n: int, world: int) -> tuple[torch.Tensor, torch.Generator]:
    """The epoch's sample order and the generator its augmentation draws continue from.

    Both depend only on (seed, epoch): a resumed epoch repeats them exactly. The order is cut to
    a multiple of the world size (``DistributedSampler(drop_last=True)``'s rule; nothing is cut
    in one process), and rank r takes every world-th sample of each global batch, which is the
    partition ``DistributedSampler`` gives it for the same permutation.
    """
    generator = torch.Generator().manual_seed(config.seed * 100003 + epoch)
    order = torch.randperm(n, generator=generator)
    return order[:n - n % world], generator


def _train(config: TrainConfig, rank: int, world: int, device: torch.device, command: str,
           progress: bool) -> Path:
    if config.batch_size % world:
        raise UsageError(f"--batch-size {config.batch_size} does not split over {world} processes; "
                         f"give a multiple of {world} (it is the global batch)")
    spec = model_spec(config.model)
    out = Path(config.out)
    torch.manual_seed(config.seed)
    streams = spec.input_size >= STREAMING_INPUT_SIZE and config.dataset != "builtin"
    data = (_StreamedData if streams else _InMemoryData)(config, spec.input_size, device)
    classes, dataset_name, mean, std = data.classes, data.name, data.mean, data.std
    model = create_model(config.model, num_classes=len(classes)).to(device)
    if world > 1:
        synchronise_batchnorm(model, device)
    optimizer = torch.optim.SGD(parameter_groups(model, config.lr, config.generator_lr_scale), lr=config.lr,
                                momentum=config.momentum, weight_decay=config.weight_decay, nesterov=True)
    usable = data.size - data.size % world
    steps_per_epoch = math.ceil(usable / config.batch_size)
    scheduler = _schedule(optimizer, config, steps_per_epoch)
    meta = CheckpointMeta(arch=config.model, num_classes=len(classes), input_size=spec.input_size,
                          mean=tuple(mean.tolist()), std=tuple(std.tolist()), dataset=dataset_name,
                          classes=classes)
    start_epoch, log_rows = 0, []
    last = out / "last.pt"
    if last.exists():
        state, _, extra = load_checkpoint(last)
        saved, wanted = _recipe(extra.get("train_config", {})), _recipe(asdict(config))
        if saved != wanted:
            differing = ", ".join(k for k in wanted if saved.get(k) != wanted[k])
            raise UsageError(f"{out} holds a training run with another configuration (differs in: {differing}); "
                             "use another --out")
        model.load_state_dict(state)
        optimizer.load_state_dict(extra["optimizer"])
        scheduler.load_state_dict(extra["scheduler"])
        start_epoch, log_rows = int(extra["epoch"]), list(extra["log"])
    net = model if world == 1 else DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    mean_d, std_d = mean.to(device).view(1, 3, 1, 1), std.to(device).view(1, 3, 1, 1)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    anneal = spec.operator == "dyconv"
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        order, generator = _epoch_order(config, epoch, data.size, world)
        model.train()
        loss_sum, correct = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.int64)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress,
                   unit="step", dynamic_ncols=True)
        for step, (images, y) in zip(bar, data.batches(epoch, order, generator, config.batch_size, rank, world)):
            if anneal:
                set_temperature(model, dyconv_temperature(epoch + step / steps_per_epoch, config.anneal_epochs))
            x = images.float().div_(255).sub_(mean_d).div_(std_d)
            context = torch.autocast(device.type, dtype=torch.bfloat16) if config.amp else contextlib.nullcontext()
            with context:
                logits = net(x)
                loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            bar.set_postfix(loss=f"{float(loss_sum) / ((step * config.batch_size // world) + len(y)):.3f}")
        if anneal:
            set_temperature(model, dyconv_temperature(epoch + 1, config.anneal_epochs))
        loss_sum, correct = _sum_over_ranks(loss_sum, world), _sum_over_ranks(correct, world)
        test_acc = data.accuracy(model, "test", mean_d, std_d, rank, world)
        validation = {"val_acc": data.accuracy(model, "val", mean_d, std_d, rank, world)} if data.has_validation else {}
        log_rows.append({
            "epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
            "train_loss": float(loss_sum) / usable, "train_acc": int(correct) / usable,
            **validation, "test_acc": test_acc, "seconds": time.perf_counter() - started,
        })
        if rank == 0:
            _write_log(out / "log.csv", log_rows)
            save_checkpoint(last, model.state_dict(), meta, extra={
                "epoch": epoch + 1, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "train_config": asdict(config), "log": log_rows,
            })
        if progress:
            tqdm.write(f"epoch {epoch + 1}: loss {log_rows[-1]['train_loss']:.4f} "
                       f"train acc {log_rows[-1]['train_acc']:.4f} test acc {log_rows[-1]['test_acc']:.4f}")
    final = out / "final.pt"
    if rank == 0:
        state, _, extra = load_checkpoint(last)
        meta.provenance = {
            "command": command, "train_config": asdict(config), "epochs": config.epochs,
            "test_accuracy": extra["log"][-1]["test_acc"] if extra["log"] else None,
            "train_seconds": round(sum(row["seconds"] for row in extra["log"]), 1),
            "processes": world, "torch": str(torch.__version__), "python": platform.python_version(),
        }
        save_checkpoint(final, state, meta)
    if world > 1:
        dist.barrier()  # final.pt exists for every rank that returns its path
    return final


def _hold_out(images: torch.Tensor, labels: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """(train images, train labels, validation images, validation labels): a class-balanced ``n``
    of the training split held out (the validation pair is None when ``n`` is 0)."""
    if n == 0:
        return images, labels, None, None
    if not 0 < n < len(labels):
        raise UsageError(f"--holdout must be between 1 and {len(labels) - 1} (the training images), got {n}")
    held = torch.zeros(len(labels), dtype=torch.bool)
    held[torch.from_numpy(balanced_subset(labels.numpy(), n))] = True
    return images[~held], labels[~held], images[held], labels[held]


def _test_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor,
                   std: torch.Tensor, device: torch.device, rank: int, world: int) -> float:
    """Accuracy on the whole test split; under DDP each rank classifies every world-th image."""
    if world == 1:
        return accuracy(model, images, labels, mean, std, device)
    mine = labels[rank::world]
    correct = accuracy(model, images[rank::world], mine, mean, std, device) * len(mine)
    return float(_sum_over_ranks(torch.tensor(correct, dtype=torch.float64), world)) / len(labels)


class _InMemoryData:
    """CIFAR-size splits decoded once into uint8 tensors; pad-and-crop and flip drawn per epoch."""

    def __init__(self, config: TrainConfig, size: int, device: torch.device) -> None:
        train_x, train_y, self.classes, self.name = _load_split(config.dataset, "train", size, config.limit, config.workers)
        train_x, train_y, val_x, val_y = _hold_out(train_x, train_y, config.holdout)
        test_x, test_y, _, _ = _load_split(config.dataset, "test", size, None, config.workers)
        pixels = train_x.float().div_(255).transpose(0, 1).reshape(3, -1)
        self.mean, self.std = pixels.mean(1), pixels.std(1)
        del pixels
        if device.type != "cpu":  # the uint8 split lives on the accelerator: batches and augmentation never cross over
            train_x, train_y = train_x.to(device), train_y.to(device)
        self.train_x, self.train_y, self.device = train_x, train_y, device
        self.splits = {"test": (test_x, test_y), **({} if val_y is None else {"val": (val_x, val_y)})}
        self.size, self.has_validation = len(train_y), val_y is not None

    def batches(self, epoch: int, order: torch.Tensor, generator: torch.Generator, batch_size: int, rank: int,
                world: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's (uint8 images, labels) of each global batch of ``order``, on the device."""
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            draws = [d[rank::world] for d in crop_flip_draws(len(batch), generator)]  # the global batch's draws
            batch = batch[rank::world].to(self.train_x.device)
            yield crop_flip(self.train_x[batch], *draws).to(self.device), self.train_y[batch].to(self.device)

    def accuracy(self, model: nn.Module, split: str, mean: torch.Tensor, std: torch.Tensor, rank: int,
                 world: int) -> float:
        images, labels = self.splits[split]
        return _test_accuracy(model, images, labels, mean, std, self.device, rank, world)


class _StreamedData:
    """ImageNet-size folders (``train/`` and ``test/`` or ``val/``): training images read, decoded and
    augmented by DataLoader workers step by step (:mod:`.data.training_stream`); validation and test
    images as evaluation reads them (Resize + CentreCrop); normalisation from the centre crops of
    a class-balanced sample of the training images."""

    def __init__(self, config: TrainConfig, size: int, device: torch.device) -> None:
        root = Path(config.dataset)
        train = ImageFolderDataset(root / "train", size)
        test_root = root / "test" if (root / "test").is_dir() or not (root / "val").is_dir() else root / "val"
        test = ImageFolderDataset(test_root, size)
        if test.classes != train.classes:
            raise UsageError(f"{test_root} and {root / 'train'} have different classes; both need the same "
                             "<class>/ folders")
        self.classes, self.name, self.workers, self.device = train.classes, train.name, config.workers, device
        labels = torch.tensor(train.labels)
        keep = torch.from_numpy(balanced_subset(labels.numpy(), config.limit))
        index, train_labels, val_index, _ = _hold_out(keep, labels[keep], config.holdout)
        self.train_set = StreamingTrainSet([train.samples[i] for i in index.tolist()], size, config.seed)
        self.splits: dict[str, Dataset] = {"test": test}
        if val_index is not None:
            self.splits["val"] = Subset(train, val_index.tolist())
        self.size, self.has_validation = len(index), val_index is not None
        sample = balanced_subset(train_labels.numpy(), min(STATISTICS_SAMPLE, len(index)))
        pixels = torch.cat([x for x, _ in self._loader(Subset(train, index[sample].tolist()), batch_size=256)])
        pixels = pixels.float().div_(255).transpose(0, 1).reshape(3, -1)
        self.mean, self.std = pixels.mean(1), pixels.std(1)

    def _loader(self, dataset: Dataset, **options) -> DataLoader:
        return DataLoader(dataset, num_workers=self.workers, pin_memory=self.device.type == "cuda", **options)

    def batches(self, epoch: int, order: torch.Tensor, generator: torch.Generator, batch_size: int, rank: int,
                world: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's (uint8 images, labels) of each global batch of ``order``, on the device."""
        self.train_set.epoch = epoch
        for images, labels in self._loader(self.train_set, batch_sampler=RankBatches(order, batch_size, rank, world)):
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def accuracy(self, model: nn.Module, split: str, mean: torch.Tensor, std: torch.Tensor, rank: int,
                 world: int) -> float:
        """Accuracy on the split; under DDP each rank classifies every world-th image."""
        dataset = self.splits[split]
        mine = Subset(dataset, range(rank, len(dataset), world))
        correct = count_correct(model, self._loader(mine, batch_size=256), mean, std, self.device)
        return float(_sum_over_ranks(torch.tensor(correct, dtype=torch.float64), world)) / len(dataset)


def _sum_over_ranks(value: torch.Tensor, world: int) -> torch.Tensor:
    """``value`` summed over the ranks (itself in one process); collectives run on CPU tensors
    under gloo, and on the rank's device under NCCL."""
    if world == 1:
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    total = value.to(device)
    dist.all_reduce(total)
    return total.cpu()


def _write_log(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())

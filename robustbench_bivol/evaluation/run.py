"""The pieces of an evaluation job: device, models, dataset, cells, and collecting the results.

:func:`robustbench_bivol.api.evaluate` puts them together; ``bivol-robust evaluate`` and
``bivol-robust sweep`` are shells over it and over these pieces.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

import corruptions

from ..data import BUILTIN, align_classes, is_prerendered, open_dataset
from ..data.torch_dataset import TorchDataset, is_torch_dataset
from ..errors import UsageError
from ..distributed import process_group
from .engine import BAD_IMAGE_POLICIES, ModelEntry
from .engine import evaluate as run_engine
from .loading import bundled_models_for, load_entry, module_entry, native_size
from .store import Cell, MemoryStore, RunStore

#: What ``models`` may be: None (the bundled defaults), CLI specs, {name: spec or nn.Module}, or one
#: spec or module.
Models = str | nn.Module | Sequence[str] | Mapping[str, "str | nn.Module"] | None


def pick_device(device: str) -> str:
    """Resolve ``auto`` and check CUDA; on CUDA, switch TF32 off (see :func:`full_float32_on_cuda`)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
        full_float32_on_cuda()
    return device


def full_float32_on_cuda() -> None:
    """Run float32 convolutions and matmuls in full float32 on the GPU, not TF32.

    PyTorch lets cuDNN use TF32 (a 10-bit mantissa) by default, which moved borderline
    predictions: on an H200, 4 of 380 cells of ``evaluate --limit 200`` differed from the CPU by
    one image; with TF32 off all 380 matched. ``--amp`` remains the explicit speed-for-precision
    choice.
    """
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def parse_severities(value: str | Sequence[int]) -> list[int]:
    """``"1,3,5"`` or ``[1, 3, 5]`` as a sorted list of valid severities."""
    from corruptions.registry import validate_severity

    try:
        if isinstance(value, str):
            parts = [v.strip() for v in value.split(",") if v.strip()]
            bad = [v for v in parts if not v.lstrip("-").isdigit()]
            if bad:
                raise ValueError(f"'{bad[0]}' is not a number; give comma-separated integers 1..5, e.g. 1,3,5")
            value = [int(v) for v in parts]
        return sorted({validate_severity(int(v)) for v in value})
    except ValueError as exc:
        raise UsageError(f"--severities: {exc}") from None


def run_folder(out: str | Path | bool | None, dataset: Any, names: list[str], limit: int | None,
               kind: str = "") -> Path | None:
    """Where a run is stored: ``out`` itself; for ``out=True`` the default
    ``runs/[<kind>-]<dataset>-<models>[-<N>img]`` (a subset is a run of its own: a run folder
    refuses a second configuration); None or False: nowhere, the run stays in memory."""
    if not out:
        return None
    if out is not True:
        return Path(out)
    if isinstance(dataset, str):
        stem = "builtin" if dataset == BUILTIN else Path(dataset.split(":", 1)[-1]).name or "dataset"
    else:
        stem = type(dataset).__name__
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{stem}-{'+'.join(names)}")[:120]
    return Path("runs") / ((f"{kind}-" if kind else "") + slug + ("" if limit is None else f"-{limit}img"))


def run_on_ranks(plan: Any, entries: list[ModelEntry], source: Any, folder: Path | None, device: str,
                 **engine_options: Any) -> RunStore | MemoryStore | None:
    """Run the engine on this process (one rank of a torchrun job, or alone). Rank 0 opens the
    store (``folder``, or memory) and returns it, filled; other ranks return None."""
    with process_group(device) as (rank, _, device):
        store = None
        if rank == 0:
            config = plan.config(entries)
            store = RunStore.open(folder, config) if folder else MemoryStore(config)
        run_engine(plan, entries, source, store, device=device, **engine_options)
    return store if rank == 0 else None


def check_engine_options(batch_size: int, workers: int, shard_size: int | None, on_bad_image: str) -> None:
    """The options every engine run (evaluate, fourier) takes, checked before any model loads."""
    if batch_size < 1 or workers < 0 or (shard_size is not None and shard_size < 1):
        raise UsageError("--batch-size and --shard-size must be >= 1 and --workers >= 0")
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise UsageError(f"on_bad_image must be one of {', '.join(BAD_IMAGE_POLICIES)}, got '{on_bad_image}'")


def load_models(models: Models, default_weights: str | None, dataset: Any, *, baseline: str | None = None,
                input_size: int | None = None, mean: tuple[float, ...] | None = None,
                std: tuple[float, ...] | None = None) -> list[ModelEntry]:
    """Entries for ``models``: CLI specs ``NAME[=WEIGHTS]``, or ``{name: spec or nn.Module}`` (the
    mapping's keys name the results; ``input_size``/``mean``/``std`` apply to modules), or one spec
    or module (named after its class); None evaluates every model with bundled weights for the
    built-in dataset. A ``baseline`` must be one of them."""
    if isinstance(models, str):
        models = [models]
    elif isinstance(models, nn.Module):
        models = {type(models).__name__: models}
    keyed = isinstance(models, Mapping)
    named = list(models.items()) if keyed else [(spec, spec) for spec in list(models or []) or bundled_models_for(dataset)]
    if not named:
        raise UsageError("no models given: name at least one, e.g. {'resnet20': 'resnet20'}")
    specs = [value for _, value in named if isinstance(value, str)]
    if default_weights is not None and specs and all("=" in spec for spec in specs):
        raise UsageError(f"--weights {default_weights} is unused: every --model names its own weights "
                         "(NAME=WEIGHTS); drop --weights or the '=WEIGHTS' parts")
    entries = []
    for key, value in named:
        if isinstance(value, nn.Module):
            entries.append(module_entry(key, value, input_size=input_size, mean=mean, std=std,
                                        default_size=native_size(dataset)))
        elif isinstance(value, str):
            entries.append(load_entry(value, default_weights, dataset, key=key if keyed else None))
        else:
            raise UsageError(f"model '{key}': give a name such as 'resnet20' or a torch.nn.Module, "
                             f"not {type(value).__name__}")
    keys = [entry.name for entry in entries]
    if len(set(keys)) != len(keys):
        raise UsageError(f"the same model is given twice: {', '.join(keys)}")
    if baseline is not None and baseline not in keys:
        raise UsageError(f"--baseline {baseline} is not among the evaluated models ({', '.join(keys)})")
    sizes = {(entry.meta.input_size, entry.meta.resize) for entry in entries}
    if len(sizes) != 1:
        shown = ", ".join(f"{e.name}: {e.meta.input_size} px" + (f" (resize {e.meta.resize})" if e.meta.resize else "")
                          for e in entries)
        raise UsageError(f"models in one run need the same input size and resize, got {shown}")
    return entries


def open_for_models(dataset: Any, entries: list[ModelEntry], *, split: str, seed: int) -> Any:
    """Open ``dataset`` (a spec or a torch dataset) at the models' input size, labels in the models'
    class order."""
    size, resize = entries[0].meta.input_size, entries[0].meta.resize
    if is_torch_dataset(dataset):
        data = TorchDataset(dataset, size, resize)
    else:
        data = open_dataset(dataset, split=split, size=size, resize=resize,
                            seed=seed if dataset == BUILTIN else 0)
    check_classes(data, entries)
    return data


def check_classes(data: Any, entries: list[ModelEntry]) -> None:
    orders = {tuple(entry.meta.classes) for entry in entries if entry.meta.classes}
    if len(orders) == 1:
        align_classes(data, list(orders.pop()))
    wrong = [entry for entry in entries if entry.meta.num_classes != len(data.classes)]
    if wrong:
        shown = ", ".join(f"{entry.name} predicts {entry.meta.num_classes}" for entry in wrong)
        raise UsageError(f"the dataset has {len(data.classes)} classes but {shown}; "
                         f"give models with a {len(data.classes)}-class output")


def select_cells(data: Any, corruption_spec: str | Sequence[str] | None,
                 severities: str | Sequence[int] | None) -> tuple[list[str], list[int]]:
    """Corruptions and severities: as asked, else what is on disk (pre-rendered) or the benchmark."""
    if corruption_spec is not None and not isinstance(corruption_spec, str):
        corruption_spec = ",".join(corruption_spec)
    if not is_prerendered(data):
        return (corruptions.select(corruption_spec or "benchmark"),
                parse_severities(severities if severities is not None else "1,2,3,4,5"))
    on_disk = data.available()
    if corruption_spec:
        names = corruptions.select(corruption_spec)
        data.check_cells(names, [])
    else:
        names = [c for c in corruptions.ALL if c in on_disk]
        names += sorted(c for c in on_disk if c not in names)
    if severities is not None and len(severities):
        severity_list = parse_severities(severities)
    else:
        severity_list = sorted(set.intersection(*(set(on_disk.get(c, [])) for c in names))) if names else []
        if not severity_list:
            raise UsageError(f"the chosen corruptions share no severity in {data.root}; give --severities")
    data.check_cells(names, severity_list)
    return names, severity_list


def sample_name(data: Any, index: int) -> str:
    samples = getattr(data, "samples", None)
    if samples:
        return str(samples[index][0])
    if hasattr(data, "sample_name"):
        return str(data.sample_name(index))
    return f"#{index}"


def add_extras(summary: dict, *, skipped: list[str], clean_absent: bool) -> dict:
    """Add the skipped images and the clean cell's status to a run's summary."""
    summary["skipped images"] = len(skipped)
    if skipped:
        summary["skipped files"] = skipped[:100]
    if clean_absent:
        summary["clean cell"] = "absent (pre-rendered dataset without --clean-dataset)"
        summary.setdefault("notes", []).append("clean cell absent: no clean images were given (--clean-dataset)")
    return summary


def collect(store: RunStore, cells: list[Cell], shards: int, models: list[str],
            expected: np.ndarray | None = None) -> tuple[pd.DataFrame, dict, list[int]]:
    """Tidy table and per-sample correctness over the samples present in every complete cell.

    A sample skipped as unreadable in any cell is left out of every cell and model, so cells and
    models stay paired image by image. Returns (tidy, per_sample, skipped sample indices).
    """
    complete = [cell for cell in cells if all(store.has(cell, s) for s in range(shards))]
    pieces: dict[Cell, tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]] = {}
    for cell in complete:
        parts = [store.read(cell, s) for s in range(shards)]
        indices = np.concatenate([p.indices for p in parts]).astype(np.int64)
        order = np.argsort(indices, kind="stable")
        labels = np.concatenate([p.labels for p in parts])[order]
        preds = {m: np.concatenate([p.predictions[m] for p in parts])[order] for m in models}
        pieces[cell] = (indices[order], labels, preds)
    common: np.ndarray | None = None
    for indices, _, _ in pieces.values():
        common = indices if common is None else np.intersect1d(common, indices)
    if common is None:
        common = np.empty(0, dtype=np.int64)
    per_sample: dict[tuple[str, str, int], np.ndarray] = {}
    rows = []
    for model in models:
        for cell in complete:
            indices, labels, preds = pieces[cell]
            keep = np.isin(indices, common)
            correct = preds[model][keep] == labels[keep]
            per_sample[(model, *cell)] = correct
            rows.append({"model": model, "corruption": cell[0], "severity": cell[1],
                         "n": int(len(correct)), "correct": int(correct.sum())})
    tidy = pd.DataFrame(rows, columns=["model", "corruption", "severity", "n", "correct"])
    tidy["error"] = 1.0 - tidy["correct"] / tidy["n"]
    skipped: list[int] = []
    if expected is not None and complete:
        skipped = [int(i) for i in np.setdiff1d(np.asarray(expected, dtype=np.int64), common)]
    return tidy, per_sample, skipped


def static_baseline(entries: list[ModelEntry]) -> str | None:
    """The first registered static-convolution model of the run, the natural reference for CE."""
    from ..models import list_models, model_spec

    for entry in entries:
        if entry.meta.arch in list_models() and model_spec(entry.meta.arch).operator == "static":
            return entry.name
    return None

"""The ``evaluate`` job: resolve dataset and models, run the engine, write the reports."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

import corruptions

from ..data import BUILTIN, align_classes, balanced_subset, dataset_labels, is_prerendered, open_dataset
from ..distributed import process_group
from ..errors import UsageError
from ..io import atomic_write_json
from .engine import EvalPlan, ModelEntry, evaluate
from .loading import bundled_models_for, load_entry
from .store import Cell, RunStore


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


def _default_out(dataset: str, names: list[str]) -> Path:
    stem = "builtin" if dataset == BUILTIN else Path(dataset.split(":", 1)[-1]).name or "dataset"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{stem}-{'+'.join(names)}")[:120]
    return Path("runs") / slug


def load_models(models: tuple[str, ...], default_weights: str | None, dataset: str) -> list[ModelEntry]:
    if default_weights is not None and models and all("=" in spec for spec in models):
        raise UsageError(f"--weights {default_weights} is unused: every --model names its own weights "
                         "(NAME=WEIGHTS); drop --weights or the '=WEIGHTS' parts")
    names = list(models) or bundled_models_for(dataset)
    entries = [load_entry(spec, default_weights, dataset) for spec in names]
    keys = [entry.name for entry in entries]
    if len(set(keys)) != len(keys):
        raise UsageError(f"the same model is given twice: {', '.join(keys)}")
    sizes = {entry.meta.input_size for entry in entries}
    if len(sizes) != 1:
        raise UsageError(f"models in one run need the same input size, got {sorted(sizes)}")
    return entries


def open_for_models(dataset: str, entries: list[ModelEntry], *, split: str, seed: int) -> Any:
    """Open ``dataset`` at the models' input size, labels in the models' class order."""
    size = entries[0].meta.input_size
    data = open_dataset(dataset, split=split, size=size, seed=seed if dataset == BUILTIN else 0)
    check_classes(data, entries)
    return data


def check_classes(data: Any, entries: list[ModelEntry]) -> None:
    orders = {tuple(entry.meta.classes) for entry in entries if entry.meta.classes}
    if len(orders) == 1:
        align_classes(data, list(orders.pop()))
    classes = {entry.meta.num_classes for entry in entries}
    if classes != {len(data.classes)}:
        raise UsageError(f"the dataset has {len(data.classes)} classes but the models predict {sorted(classes)}")


def _select_cells(data: Any, corruption_spec: str | None, severities: str | None) -> tuple[list[str], list[int]]:
    """Corruptions and severities: as asked, else what is on disk (pre-rendered) or the benchmark."""
    from ..cli import _severities

    if not is_prerendered(data):
        return corruptions.select(corruption_spec or "benchmark"), _severities(severities or "1,2,3,4,5")
    on_disk = data.available()
    if corruption_spec:
        names = corruptions.select(corruption_spec)
        data.check_cells(names, [])
    else:
        names = [c for c in corruptions.ALL if c in on_disk]
        names += sorted(c for c in on_disk if c not in names)
    if severities:
        severity_list = _severities(severities)
    else:
        severity_list = sorted(set.intersection(*(set(on_disk.get(c, [])) for c in names))) if names else []
        if not severity_list:
            raise UsageError(f"the chosen corruptions share no severity in {data.root}; give --severities")
    data.check_cells(names, severity_list)
    return names, severity_list


def evaluate_command(*, models: tuple[str, ...], default_weights: str | None, dataset: str, split: str,
                     limit: int | None, corruption_spec: str | None, severities: str | None, profile: str,
                     jpeg: bool, seed: int, baseline: str | None, batch_size: int, workers: int, device: str,
                     amp: bool, out: str | None, progress: bool, command: str, clean_dataset: str | None = None,
                     on_bad_image: str = "fail", shard_size: int | None = None) -> Path | None:
    """Run (or resume) an evaluation and write its reports; returns the run folder (None on ranks > 0)."""
    from ..reports import format_summary, write_reports

    if batch_size < 1 or workers < 0 or (shard_size is not None and shard_size < 1):
        raise UsageError("--batch-size and --shard-size must be >= 1 and --workers >= 0")
    device = pick_device(device)
    entries = load_models(models, default_weights, dataset)
    keys = [entry.name for entry in entries]
    if baseline is not None and baseline not in keys:
        raise UsageError(f"--baseline {baseline} is not among the evaluated models ({', '.join(keys)})")
    size = entries[0].meta.input_size
    data = open_for_models(dataset, entries, split=split, seed=seed)
    corruption_names, severity_list = _select_cells(data, corruption_spec, severities)
    extra: dict[str, Any] = {}
    include_clean = True
    if is_prerendered(data):
        if clean_dataset:
            clean = open_dataset(clean_dataset, split=split, size=size, seed=seed if clean_dataset == BUILTIN else 0)
            check_classes(clean, entries)
            data.attach_clean(clean)
        include_clean = data.has_clean
        extra = {"clean_dataset": data.clean_name}
    elif clean_dataset:
        raise UsageError("--clean-dataset applies to pre-rendered datasets (imagenet-c / cifar-c folders) only")
    indices = balanced_subset(dataset_labels(data), limit)
    plan = EvalPlan(dataset_name=data.name, indices=indices, corruption_names=corruption_names,
                    severities=severity_list, seed=seed, profile=None if profile == "auto" else profile,
                    jpeg_quality=85 if jpeg else None, extra_config=extra, include_clean=include_clean,
                    **({} if shard_size is None else {"shard_size": shard_size}))
    run_dir = Path(out) if out else _default_out(dataset, keys)
    with process_group(device) as (rank, _, device):
        store = RunStore.open(run_dir, plan.config(entries)) if rank == 0 else None
        evaluate(plan, entries, data, store, device=device, batch_size=batch_size, workers=workers, amp=amp,
                 progress=progress, on_bad_image=on_bad_image)
    if rank != 0:  # rank 0 alone holds the results and writes the reports
        return None
    tidy, per_sample, skipped = collect(store, plan.cells, len(plan.shards), keys, plan.indices)
    summary = write_reports(run_dir, tidy, per_sample=per_sample, baseline=baseline or _static_baseline(entries),
                            alexnet_normalisation=size >= 224, command=command)
    record_extras(run_dir, summary, skipped=[_sample_name(data, i) for i in skipped],
                  clean_absent=not include_clean)
    tqdm.write(format_summary(summary))
    if skipped:
        tqdm.write(f"skipped {len(skipped)} unreadable image(s) in every cell and model, e.g. {_sample_name(data, skipped[0])}")
    if not include_clean:
        tqdm.write("clean cell: absent (give --clean-dataset to evaluate clean images)")
    return run_dir


def _sample_name(data: Any, index: int) -> str:
    samples = getattr(data, "samples", None)
    if samples:
        return str(samples[index][0])
    if hasattr(data, "sample_name"):
        return str(data.sample_name(index))
    return f"#{index}"


def record_extras(run_dir: Path, summary: dict, *, skipped: list[str], clean_absent: bool) -> None:
    """Add the skipped images and the clean cell's status to summary.json."""
    summary["skipped images"] = len(skipped)
    if skipped:
        summary["skipped files"] = skipped[:100]
    if clean_absent:
        summary["clean cell"] = "absent (pre-rendered dataset without --clean-dataset)"
        summary.setdefault("notes", []).append("clean cell absent: no clean images were given (--clean-dataset)")
    atomic_write_json(Path(run_dir) / "summary.json", summary)


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


def _static_baseline(entries: list[Any]) -> str | None:
    """The first static-convolution model of the run, the natural reference for CE."""
    from ..models import model_spec

    for entry in entries:
        if model_spec(entry.meta.arch).operator == "static":
            return entry.name
    return None

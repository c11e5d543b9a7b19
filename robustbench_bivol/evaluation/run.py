"""The ``evaluate`` job: resolve dataset and models, run the engine, write the reports."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import corruptions

from ..data import BUILTIN, balanced_subset, dataset_labels, open_dataset
from ..distributed import process_group
from ..errors import UsageError
from .engine import EvalPlan, evaluate
from .loading import bundled_models_for, load_entry
from .store import RunStore


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    return device


def _default_out(dataset: str, names: list[str]) -> Path:
    stem = "builtin" if dataset == BUILTIN else Path(dataset).name or "dataset"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{stem}-{'+'.join(names)}")[:120]
    return Path("runs") / slug


def evaluate_command(*, models: tuple[str, ...], default_weights: str | None, dataset: str, split: str,
                     limit: int | None, corruption_spec: str, severities: str, profile: str, jpeg: bool,
                     seed: int, baseline: str | None, batch_size: int, workers: int, device: str, amp: bool,
                     out: str | None, progress: bool, command: str) -> Path | None:
    """Run (or resume) an evaluation and write its reports; returns the run folder (None on ranks > 0)."""
    from ..cli import _severities
    from ..reports import format_summary, write_reports

    if batch_size < 1 or workers < 0:
        raise UsageError("--batch-size must be >= 1 and --workers >= 0")
    names = list(models) or bundled_models_for(dataset)
    severity_list = _severities(severities)
    corruption_names = corruptions.select(corruption_spec)
    device = pick_device(device)
    entries = [load_entry(spec, default_weights, dataset) for spec in names]
    keys = [entry.name for entry in entries]
    if len(set(keys)) != len(keys):
        raise UsageError(f"the same model is given twice: {', '.join(keys)}")
    if baseline is not None and baseline not in keys:
        raise UsageError(f"--baseline {baseline} is not among the evaluated models ({', '.join(keys)})")
    sizes = {entry.meta.input_size for entry in entries}
    if len(sizes) != 1:
        raise UsageError(f"models in one run need the same input size, got {sorted(sizes)}")
    size = sizes.pop()
    data = open_dataset(dataset, split=split, size=size, seed=seed if dataset == BUILTIN else 0)
    classes = {entry.meta.num_classes for entry in entries}
    if classes != {len(data.classes)}:
        raise UsageError(f"the dataset has {len(data.classes)} classes but the models predict {sorted(classes)}")
    indices = balanced_subset(dataset_labels(data), limit)
    plan = EvalPlan(dataset_name=data.name, indices=indices, corruption_names=corruption_names,
                    severities=severity_list, seed=seed, profile=None if profile == "auto" else profile,
                    jpeg_quality=85 if jpeg else None)
    run_dir = Path(out) if out else _default_out(dataset, keys)
    with process_group(device) as (rank, _, device):
        store = RunStore.open(run_dir, plan.config(entries)) if rank == 0 else None
        evaluate(plan, entries, data, store, device=device, batch_size=batch_size, workers=workers, amp=amp,
                 progress=progress)
    if rank != 0:  # rank 0 alone holds the results and writes the reports
        return None
    tidy = store.tidy(plan.cells, len(plan.shards), keys)
    per_sample = store.per_sample(plan.cells, len(plan.shards))
    summary = write_reports(run_dir, tidy, per_sample=per_sample, baseline=baseline or _static_baseline(entries),
                            alexnet_normalisation=size >= 224, command=command)
    tqdm.write(format_summary(summary))
    return run_dir


def _static_baseline(entries: list[Any]) -> str | None:
    """The first static-convolution model of the run, the natural reference for CE."""
    from ..models import model_spec

    for entry in entries:
        if model_spec(entry.meta.arch).operator == "static":
            return entry.name
    return None

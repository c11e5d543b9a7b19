"""The Python API: :func:`evaluate` does what ``bivol-robust evaluate`` does and returns the figures.

The CLI command is a shell over this function, so both run the same code and accept the same
models, datasets and options.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .data import BUILTIN, balanced_subset, dataset_labels, is_prerendered, open_dataset
from .errors import UsageError
from .evaluation.engine import EvalPlan
from .evaluation.results import Results
from .evaluation.run import (Models, check_classes, check_engine_options, collect, load_models, open_for_models,
                             pick_device, run_folder, run_on_ranks, sample_name, select_cells, static_baseline)

PROFILES = ("auto", "imagenet", "tinyimagenet", "cifar")
#: Images of the built-in dataset evaluated when no limit is given: a class-balanced fifth of its
#: 1 000 test images, so that the first run compares all five operators in under 2 minutes on two
#: CPU cores, with 95% intervals about 2.2 times as wide as the full split's; ``limit=1000`` (CLI
#: ``--limit 1000``) evaluates all of them. Other datasets are evaluated whole by default.
BUILTIN_DEFAULT_LIMIT = 200


def evaluate(models: Models = None, dataset: Any = BUILTIN, *, weights: str | None = None,
             corruptions: str | list[str] | None = None, severities: str | list[int] | None = None,
             limit: int | None = None, split: str = "test", clean_dataset: str | None = None,
             profile: str = "auto", jpeg: bool = False, seed: int = 0, baseline: str | None = None,
             input_size: int | None = None, mean: tuple[float, float, float] | None = None,
             std: tuple[float, float, float] | None = None, batch_size: int = 128, workers: int = 0,
             shard_size: int | None = None, device: str = "auto", amp: bool = False, channels_last: bool = False,
             gpu_decode: bool = True, on_bad_image: str = "fail", out: str | Path | bool | None = None,
             progress: bool = True,
             command: str = "robustbench_bivol.evaluate()") -> Results | None:
    """Evaluate ``models`` on clean and corrupted images of ``dataset``; returns :class:`Results`
    (None on the ranks > 0 of a torch.distributed job).

    - ``models``: None (every model with bundled weights, on the built-in dataset), a list of CLI
      specs (``"resnet20"``, ``"resnet20=cifar10"``, ``"timm:resnet18"``, ``"torchvision:resnet50"``,
      ``"package.module:factory"``), or ``{name: spec or torch.nn.Module}``. A module is fed
      ``input_size`` px images normalised with ``mean``/``std`` (default: its timm-style
      ``pretrained_cfg``, else the dataset's own size, or 32 px on the built-in dataset and 224 px
      elsewhere, and ImageNet's mean and std); its output must have one logit per class.
    - ``dataset``: ``"builtin"``, a path or CLI dataset spec, or a map-style torch ``Dataset`` of
      (image, label) items (PIL images, uint8 or [0, 1] float tensors).
    - ``out``: None keeps everything in memory and writes nothing (call
      ``results.write_reports(folder)`` later); a folder stores the run there (rerunning resumes)
      and writes its reports; True is the CLI's default folder ``runs/<dataset>-<models>``.

    - ``limit``: a class-balanced subset of that many images; None: every image, but on the
      built-in dataset :data:`BUILTIN_DEFAULT_LIMIT` (a first look in under 2 minutes).
    - ``amp``: bfloat16 autocast; ``channels_last``: models and batches in channels-last memory
      format (faster convolutions on GPUs; the same predictions in float32 on the CPU).
    - ``gpu_decode``: on a CUDA device, decode an image folder's JPEGs there (nvjpeg); False
      decodes them on the CPU, so that the clean images are a CPU run's bit for bit.

    The other options are those of ``bivol-robust evaluate`` (``corruptions`` and ``severities``
    also take lists).
    """
    if isinstance(dataset, Path):
        dataset = str(dataset)
    check_engine_options(batch_size, workers, shard_size, on_bad_image)
    if profile not in PROFILES:
        raise UsageError(f"profile must be one of {', '.join(PROFILES)}, got '{profile}'")
    device = pick_device(device)
    entries = load_models(models, weights, dataset, baseline=baseline, input_size=input_size, mean=mean, std=std)
    keys = [entry.name for entry in entries]
    size = entries[0].meta.input_size
    data = open_for_models(dataset, entries, split=split, seed=seed)
    corruption_names, severity_list = select_cells(data, corruptions, severities)
    extra: dict[str, Any] = {}
    include_clean = True
    if is_prerendered(data):
        if clean_dataset:
            clean = open_dataset(clean_dataset, split=split, size=size, resize=entries[0].meta.resize,
                                 seed=seed if clean_dataset == BUILTIN else 0)
            check_classes(clean, entries)
            data.attach_clean(clean)
        include_clean = data.has_clean
        extra = {"clean_dataset": data.clean_name}
    elif clean_dataset:
        raise UsageError("--clean-dataset applies to pre-rendered datasets (imagenet-c / cifar-c folders) only")
    if limit is None and dataset == BUILTIN:
        limit = BUILTIN_DEFAULT_LIMIT
    plan = EvalPlan(dataset_name=data.name, indices=balanced_subset(dataset_labels(data), limit),
                    corruption_names=corruption_names, severities=severity_list, seed=seed,
                    profile=None if profile == "auto" else profile, jpeg_quality=85 if jpeg else None,
                    extra_config=extra, include_clean=include_clean,
                    **({} if shard_size is None else {"shard_size": shard_size}))
    run_dir = run_folder(out, dataset, keys, limit)
    store = run_on_ranks(plan, entries, data, run_dir, device, batch_size=batch_size, workers=workers, amp=amp,
                         channels_last=channels_last, gpu_decode=gpu_decode, progress=progress,
                         on_bad_image=on_bad_image)
    if store is None:  # rank 0 alone holds the results
        return None
    counts, per_sample, skipped = collect(store, plan.cells, len(plan.shards), keys, plan.indices)
    results = Results(counts=counts, per_sample=per_sample, baseline=baseline or static_baseline(entries),
                      alexnet_normalisation=size >= 224, command=command,
                      skipped=[sample_name(data, i) for i in skipped], clean_absent=not include_clean,
                      run_dir=run_dir)
    if run_dir:
        results.write_reports(run_dir)
    return results

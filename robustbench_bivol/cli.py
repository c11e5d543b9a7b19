"""The ``bivol-robust`` command line: thin wrappers around the Python API.

Every user error (``BivolError``, an unknown corruption, ...) ends as one line on stderr and a
non-zero exit code (2 for usage errors), never a traceback.
"""
from __future__ import annotations

import functools
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .errors import BivolError, UsageError


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the toolkit's user errors into one-line messages with an exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from corruptions.registry import UnknownCorruptionError

        try:
            return command(*args, **kwargs)
        except BivolError as exc:
            _fail(str(exc), exc.exit_code)
        except UnknownCorruptionError as exc:
            _fail(str(exc), 2)
        except KeyboardInterrupt:
            _fail("interrupted; rerun the same command to resume.", 130)

    return wrapper


def _invocation() -> str:
    return "bivol-robust " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])


class OneLineErrorGroup(click.Group):
    """Click's own usage errors (bad option value, missing option, unknown command) also end as one
    line ``error: ...`` with exit code 2, instead of click's usage block."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:  # bare `bivol-robust`: the help text is the answer
            exc.show()
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _fail(" ".join(exc.format_message().split("\n")) + hint, exc.exit_code)
        except click.Abort:
            _fail("aborted.", 1)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=OneLineErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="robustbench_bivol")
def main() -> None:
    """Measure how robust convolution operators are to common image corruptions."""


@main.command()
@click.option("--model", "-m", "models", multiple=True, metavar="NAME[=WEIGHTS]",
              help="Model to evaluate (repeatable): a registered NAME (WEIGHTS: a bundled name, file, URL or "
                   "torchvision:ENUM), timm:NAME[=FILE], torchvision:NAME[=ENUM|FILE] or package.module:factory[=FILE]. "
                   "Default: every bundled model for the dataset.")
@click.option("--weights", "default_weights", default=None, help="Weights for models given without '=WEIGHTS'.")
@click.option("--dataset", default="builtin", show_default=True,
              help="'builtin'; cifar10:ROOT (torchvision CIFAR-10); a folder in ImageFolder layout (e.g. ImageNet "
                   "val); or a pre-rendered ImageNet-C (<corruption>/<severity>/<class>/<file>) or CIFAR-10-C "
                   "(<corruption>.npy + labels.npy) folder, detected from its layout (or say imagenet-c:DIR, "
                   "cifar-c:DIR, folder:DIR).")
@click.option("--clean-dataset", default=None,
              help="Clean images of a pre-rendered dataset (same spec as --dataset); without it the clean cell "
                   "is absent.")
@click.option("--split", default="test", show_default=True, help="Split of the built-in dataset or CIFAR-10.")
@click.option("--limit", type=int, default=None, help="Evaluate a class-balanced subset of N images.")
@click.option("--corruptions", "corruption_spec", default=None,
              help="Names or sets (benchmark, extra, all, noise, blur, weather, digital), comma-separated. "
                   "Default: benchmark; for a pre-rendered dataset, those on disk.")
@click.option("--severities", default=None,
              help="Comma-separated, 1..5. Default: 1,2,3,4,5; for a pre-rendered dataset, those on disk.")
@click.option("--on-bad-image", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="Unreadable images: stop with an error, or leave them out of every cell and model.")
@click.option("--profile", type=click.Choice(["auto", "imagenet", "tinyimagenet", "cifar"]), default="auto",
              show_default=True, help="Corruption parameters; auto picks by image size.")
@click.option("--jpeg/--no-jpeg", default=False, show_default=True,
              help="JPEG quality-85 round trip after corrupting, as the released ImageNet-C files have.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--baseline", default=None, help="Model that normalises CE (default: the static model, if any).")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--workers", type=int, default=0, show_default=True,
              help="Image reading (and, on the CPU, decoding) processes; they read ahead while the models run.")
@click.option("--shard-size", type=int, default=None,
              help="Samples per stored piece (default 512); the unit of resuming and of work per rank.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, ... or auto.")
@click.option("--amp", is_flag=True, help="bfloat16 autocast for inference.")
@click.option("--channels-last", is_flag=True,
              help="Run the models in channels-last memory format (faster convolutions on GPUs, above all with --amp).")
@click.option("--gpu-decode/--no-gpu-decode", default=True, show_default=True,
              help="On a CUDA device, decode an image folder's JPEGs there (nvjpeg); --no-gpu-decode decodes them on "
                   "the CPU, so the clean images are a CPU run's bit for bit.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run folder (default runs/<dataset>-<models>); rerunning resumes it.")
@click.option("--progress/--no-progress", default=True)
@friendly_errors
def evaluate(models: tuple[str, ...], default_weights: str | None, corruption_spec: str | None, out: str | None,
             **options: Any) -> None:
    """Evaluate models on clean and corrupted images and write CSV, Markdown and plot reports."""
    from .api import evaluate as run_evaluation

    started = time.perf_counter()
    results = run_evaluation(list(models), weights=default_weights, corruptions=corruption_spec, out=out or True,
                             command=_invocation(), **options)
    if results is None:  # a rank > 0 of a distributed job: rank 0 reports
        return
    click.echo(str(results))
    if results.skipped:
        click.echo(f"skipped {len(results.skipped)} unreadable image(s) in every cell and model, "
                   f"e.g. {results.skipped[0]}")
    if results.clean_absent:
        click.echo("clean cell: absent (give --clean-dataset to evaluate clean images)")
    click.echo(f"wrote {results.run_dir} in {time.perf_counter() - started:.1f}s")


@main.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Comparison folder (default runs/compare-<run names>).")
@click.option("--baseline", default=None, help="Model that normalises CE (default: the first static model).")
@click.option("--seeds", is_flag=True,
              help="Each RUN holds one training seed of the same models: write seeds.{csv,md,json} (mean ± sd "
                   "across seeds, differences from the baseline with seed + image variance); one RUN is allowed.")
@friendly_errors
def compare_command(runs: tuple[str, ...], out: str | None, baseline: str | None, seeds: bool) -> None:
    """Merge RUN folders of the same dataset and samples into one comparison (CSV, tables, summary, plots)."""
    from .compare import compare_runs, compare_seeds
    from .reports import format_summary, markdown_table

    if seeds:
        target, table = compare_seeds(list(runs), out=out, baseline=baseline, command=_invocation())
        click.echo(markdown_table(table))
    else:
        target, summary = compare_runs(list(runs), out=out, baseline=baseline, command=_invocation())
        click.echo(format_summary(summary))
    click.echo(f"wrote {target}")


def _models_on_clean_images(command: Callable[..., Any]) -> Callable[..., Any]:
    """The model and dataset options of the commands that perturb clean images (sweep, fourier)."""
    options = [
        click.option("--model", "-m", "models", multiple=True, metavar="NAME[=WEIGHTS]",
                     help="Model to evaluate (repeatable), as for evaluate. Default: every bundled model for the dataset."),
        click.option("--weights", "default_weights", default=None, help="Weights for models given without '=WEIGHTS'."),
        click.option("--dataset", default="builtin", show_default=True, help="'builtin', cifar10:ROOT or an ImageFolder."),
        click.option("--split", default="test", show_default=True),
        click.option("--limit", type=int, default=None, help="A class-balanced subset of N images."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command("sweep")
@_models_on_clean_images
@click.option("--corruption", required=True,
              help="gaussian_noise (sigma), shot_noise (photons), impulse_noise (amount), speckle_noise (sigma), "
                   "band_noise_low/_mid/_high (RMS of band-limited noise), comma-separated; band_noise: all "
                   "three bands.")
@click.option("--max", "maximum", type=float, required=True, help="Largest parameter value.")
@click.option("--min", "minimum", type=float, default=None, help="Smallest value (default 0; 1 photon for shot_noise).")
@click.option("--steps", type=int, default=11, show_default=True, help="Number of evenly spaced values.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--workers", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--on-bad-image", type=click.Choice(["fail", "skip"]), default="fail", show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default runs/sweep-<corruptions>-<models>).")
@click.option("--progress/--no-progress", default=True)
@friendly_errors
def sweep_cli(**options: Any) -> None:
    """Accuracy against a continuous corruption parameter: sweep.csv and plots sweep.{png,svg}."""
    from .sweep import sweep_command

    started = time.perf_counter()
    target = sweep_command(**options)
    click.echo(f"wrote {target} in {time.perf_counter() - started:.1f}s")


@main.command("fourier")
@_models_on_clean_images
@click.option("--eps", "eps", default="4", show_default=True,
              help="L2 norm of each channel's perturbation (images in [0, 1]); comma-separated for several. "
                   "4 is Yin et al.'s CIFAR-10 value.")
@click.option("--stride", type=int, default=1, show_default=True,
              help="Evaluate frequencies whose indices are multiples of STRIDE (for large images).")
@click.option("--baseline", default=None, help="Model the difference maps subtract (default: the static model).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--workers", type=int, default=0, show_default=True)
@click.option("--shard-size", type=int, default=None, help="Samples per stored piece (default 512).")
@click.option("--device", default="auto", show_default=True)
@click.option("--amp", is_flag=True, help="bfloat16 autocast for inference.")
@click.option("--on-bad-image", type=click.Choice(["fail", "skip"]), default="fail", show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run folder (default runs/fourier-<dataset>-<models>[-<N>img]); rerunning resumes it.")
@click.option("--progress/--no-progress", default=True)
@friendly_errors
def fourier_cli(models: tuple[str, ...], default_weights: str | None, eps: str, out: str | None,
                **options: Any) -> None:
    """Fourier heat maps (Yin et al. 2019): error under each Fourier basis perturbation; fourier.csv and plots."""
    from .fourier import fourier_heatmap

    try:
        eps_list = [float(value) for value in eps.split(",") if value.strip()]
    except ValueError:
        raise UsageError(f"--eps: give comma-separated numbers, e.g. 4 or 2,4, not '{eps}'") from None
    started = time.perf_counter()
    results = fourier_heatmap(list(models), weights=default_weights, eps=eps_list, out=out or True, **options)
    if results is not None:  # rank 0 reports
        click.echo(f"wrote {results.run_dir} in {time.perf_counter() - started:.1f}s")


@main.command()
@click.option("--model", "-m", required=True, help="Architecture to train (see `bivol-robust models`).")
@click.option("--dataset", default="builtin", show_default=True,
              help="'builtin' or a folder with train/ and test/ in ImageFolder layout (e.g. CIFAR-10 JPEGs).")
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=0.1, show_default=True)
@click.option("--weight-decay", type=float, default=5e-4, show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "onecycle"]), default="cosine", show_default=True)
@click.option("--label-smoothing", type=float, default=0.0, show_default=True)
@click.option("--anneal-epochs", type=int, default=10, show_default=True,
              help="DyConv models: epochs over which the softmax temperature falls from 30 to 1 "
                   "(the paper's 10 suit long schedules; scale it down for short ones).")
@click.option("--warmup-epochs", type=float, default=0.0, show_default=True,
              help="Cosine schedule: linear learning-rate warm-up over this many epochs first.")
@click.option("--generator-lr-scale", type=float, default=1.0, show_default=True,
              help="Involution kernel generators (their input-dependent part) learn at this "
                   "fraction of --lr; involution_resnet20 needs 0.01 to leave chance.")
@click.option("--amp", is_flag=True, help="bfloat16 autocast.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--limit", type=int, default=None, help="Train on a class-balanced subset of N images.")
@click.option("--holdout", type=int, default=0, show_default=True,
              help="Hold out a class-balanced N of the training images as a validation split (logged as "
                   "val_acc) for choosing a recipe without looking at the test split.")
@click.option("--device", default="auto", show_default=True)
@click.option("--workers", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Training folder (default runs/train-<model>); rerunning resumes from its last.pt.")
@click.option("--bundle-as", default=None, metavar="TAG",
              help="Copy the final checkpoint into the package as bundled weights TAG (maintainers).")
@click.option("--progress/--no-progress", default=True)
@friendly_errors
def train(**options: Any) -> None:
    """Train a model (SGD, cosine/one-cycle, DyConv temperature annealing); checkpoints every epoch.

    Under torchrun it trains data-parallel: --batch-size is the global batch."""
    from .evaluation.run import pick_device
    from .training import TrainConfig, train as run_training
    from .weights import bundle_checkpoint

    bundle_as, progress = options.pop("bundle_as"), options.pop("progress")
    options["device"] = pick_device(options["device"])
    options["out"] = options["out"] or f"runs/train-{options['model']}"
    config = TrainConfig(**options)
    final = run_training(config, command=_invocation(), progress=progress)
    if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 alone reports and bundles
        return
    click.echo(f"final checkpoint: {final}")
    if bundle_as:
        click.echo(f"bundled as {bundle_checkpoint(final, bundle_as)}")


@main.command("curves")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Figure file; FILE.png and FILE.svg are written (e.g. --out curves.png).")
@friendly_errors
def curves_command(runs: tuple[str, ...], out: str) -> None:
    """Training loss and test accuracy against epoch of `train` folders (RUNS: folders or log CSVs)."""
    from .curves import plot_curves

    for path in plot_curves(list(runs), out):
        click.echo(f"wrote {path}")


@main.command("models")
@click.option("--operator", default=None, help="Only models of one operator family.")
@click.option("--no-flops", is_flag=True, help="Skip the GFLOPs count (it runs every model once).")
@friendly_errors
def models_command(operator: str | None, no_flops: bool) -> None:
    """List models with input size, parameters, GFLOPs (multiply-adds) and available weights."""
    from .models.profile import models_table
    from .reports import markdown_table

    import pandas as pd

    click.echo(markdown_table(pd.DataFrame(models_table(operator=operator, flops=not no_flops))), nl=False)


@main.command("corrupt")
@click.option("--dataset", default="builtin", show_default=True, help="'builtin' or an ImageFolder folder.")
@click.option("--split", default="test", show_default=True, help="Split of the built-in dataset.")
@click.option("--size", type=int, default=None, help="Image side (default: 32 for builtin, 224 for folders).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (resumable).")
@click.option("--layout", type=click.Choice(["imagenet-c", "cifar-c"]), default="imagenet-c", show_default=True)
@click.option("--corruptions", "corruption_spec", default="benchmark", show_default=True)
@click.option("--severities", default="1,2,3,4,5", show_default=True)
@click.option("--profile", type=click.Choice(["auto", "imagenet", "tinyimagenet", "cifar"]), default="auto",
              show_default=True)
@click.option("--limit", type=int, default=None, help="Render a class-balanced subset of N images.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--progress/--no-progress", default=True)
@friendly_errors
def corrupt_command(dataset: str, split: str, size: int | None, out: str, layout: str, corruption_spec: str,
                    severities: str, profile: str, limit: int | None, seed: int, progress: bool) -> None:
    """Render corrupted copies of a dataset in ImageNet-C or CIFAR-10-C layout."""
    import corruptions

    from .data import BUILTIN, balanced_subset, dataset_labels, open_dataset
    from .evaluation.run import parse_severities
    from .rendering import render_dataset

    size = size or (32 if dataset == BUILTIN else 224)
    data = open_dataset(dataset, split=split, size=size, seed=seed if dataset == BUILTIN else 0)
    written = render_dataset(data, out, corruption_names=corruptions.select(corruption_spec),
                             severities=parse_severities(severities), layout=layout,
                             indices=balanced_subset(dataset_labels(data), limit), seed=seed,
                             profile=None if profile == "auto" else profile, progress=progress)
    click.echo(f"wrote {written} files under {out}")


@main.command("show")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="PNG file (default IMAGE-corruptions.png).")
@click.option("--size", type=int, default=224, show_default=True, help="Resize/crop side before corrupting.")
@click.option("--corruptions", "corruption_spec", default="all", show_default=True)
@click.option("--profile", type=click.Choice(["auto", "imagenet", "tinyimagenet", "cifar"]), default="auto",
              show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@friendly_errors
def show_command(image: str, out: str | None, size: int, corruption_spec: str, profile: str, seed: int) -> None:
    """Write a PNG grid of IMAGE under every corruption (rows) and severity (columns)."""
    import corruptions
    import io

    from PIL import Image

    from .data.folder import default_resize, load_image
    from .io import atomic_write_bytes
    from .rendering import corruption_grid

    if not Path(image).is_file():
        raise UsageError(f"image not found: {image}")
    clean = load_image(image, size, default_resize(size))
    grid = corruption_grid(clean, corruptions.select(corruption_spec), seed=seed,
                           profile=None if profile == "auto" else profile)
    target = Path(out or Path(image).with_suffix("").as_posix() + "-corruptions.png")
    buffer = io.BytesIO()
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    atomic_write_bytes(target, buffer.getvalue())
    click.echo(f"wrote {target}")

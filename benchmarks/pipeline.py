"""The evaluation engine's input pipeline against pure inference, on a folder of JPEGs.

    python benchmarks/pipeline.py                         # CPU, 64 images, batch 16
    python benchmarks/pipeline.py --device cuda --images 4096 --batch-size 256 --amp --channels-last --workers 4

Writes N 224 px JPEGs (2 classes; smooth synthetic images, ``corruption_speed.natural_images``)
into a temporary ImageFolder, then times resnet50 (the registered one, random weights, 2 classes)
on it, at one batch size, precision (``--amp``: bfloat16 autocast) and memory format
(``--channels-last``):

  (a) pipeline:   ``robustbench_bivol.evaluation.engine.evaluate`` on the folder, clean images plus
                  one corruption at one severity (default gaussian_noise 3): reading the files,
                  decoding them (on a GPU with nvjpeg), corrupting, inference, storing the
                  predictions (in memory); 2N images classified;
  (b) inference:  ``ModelEntry.predict`` (the engine's own normalisation, forward and argmax) on a
                  pre-made uint8 batch already on the device, as many full batches as (a) needs;
  (c) input only: (a) without a model: reading, decoding and corrupting alone, i.e. how fast the
                  pipeline could feed the model.

img/s = images classified (or, for (c), produced) / wall time; (a)/(b) is the share of pure
inference speed that evaluation keeps (target on a GPU with --amp: >= 0.70). After a warm-up
(one batch through (a) and (b): cuDNN and nvjpeg set up), --repeats rounds run (a), (b), (c) in
turn, so background load hits all three, and each keeps its best. On a GPU it also checks the
determinism rule for nvjpeg: the folder decoded in batches and image by image must be identical;
it reports how far nvjpeg's images are from Pillow's (the CPU path).
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from corruption_speed import _sync, natural_images
from machine import describe
from torchvision.io import encode_jpeg

from robustbench_bivol.data import ImageFolderDataset
from robustbench_bivol.evaluation.engine import CorruptOnTheFly, EvalPlan, ModelEntry, decode_device, evaluate
from robustbench_bivol.evaluation.loading import module_entry
from robustbench_bivol.evaluation.run import pick_device
from robustbench_bivol.evaluation.store import MemoryStore
from robustbench_bivol.models import create_model

SIZE = 224
CLASSES = ("a", "b")
TARGET = 0.70  # (a)/(b) on a GPU with --amp


def write_folder(root: Path, n: int) -> ImageFolderDataset:
    """``n`` synthetic JPEGs (quality 90), alternating between the two classes."""
    for start in range(0, n, 64):
        for i, image in enumerate(natural_images(min(64, n - start), SIZE, seed=start), start):
            path = root / CLASSES[i % 2] / f"{i:06d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode_jpeg(image, quality=90).numpy().tobytes())
    return ImageFolderDataset(root, size=SIZE)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def decode_agreement(data: ImageFolderDataset, device: torch.device) -> str:
    """nvjpeg in batches against image by image (must be equal: a decoded image may not depend on
    its batch), and against Pillow's decoding (the CPU path)."""
    indices = np.arange(min(len(data), 256))
    batched = CorruptOnTheFly(data).load(indices, device).images
    alone = torch.stack([data.decode_encoded([data.load_encoded(int(i))[0]], device)[0] for i in indices])
    pillow = CorruptOnTheFly(data, gpu_decode=False).load(indices, device).images
    gap = (batched.int() - pillow.int()).abs()
    return (f"nvjpeg, {len(indices)} images: batched vs one at a time "
            f"{'bit-identical' if torch.equal(batched, alone) else '**DIFFERENT** (breaks the determinism rule)'}; "
            f"vs Pillow: {100 * (gap > 0).float().mean().item():.2f}% of pixels differ, by at most {gap.max().item()} "
            f"grey levels (mean {gap.float().mean().item():.4f}).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--images", type=int, default=64, help="JPEGs in the folder (default 64)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast, as evaluate --amp")
    parser.add_argument("--channels-last", action="store_true", help="as evaluate --channels-last")
    parser.add_argument("--workers", type=int, default=0, help="loader processes, as evaluate --workers")
    parser.add_argument("--corruption", default="gaussian_noise")
    parser.add_argument("--severity", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds; each measurement keeps its best")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1; 0: torch's default)")
    parser.add_argument("--out", default="", help="also append the Markdown section to this file")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(pick_device(args.device))  # as evaluate: TF32 off on CUDA
    batch = args.batch_size
    options = dict(device=device, batch_size=batch, workers=args.workers, amp=args.amp,
                   channels_last=args.channels_last, progress=False)

    with tempfile.TemporaryDirectory() as tmp:
        data = write_folder(Path(tmp), args.images)
        torch.manual_seed(0)
        entry = module_entry("resnet50", create_model("resnet50", num_classes=len(CLASSES)), input_size=SIZE)
        entry.prepare(device, args.channels_last)

        def plan(n: int) -> EvalPlan:
            return EvalPlan(dataset_name=data.name, indices=np.arange(n), corruption_names=[args.corruption],
                            severities=[args.severity])

        def pipeline(models: list[ModelEntry], n: int = args.images) -> None:
            evaluate(plan(n), models, data, MemoryStore(plan(n).config(models)), **options)

        premade = natural_images(batch, SIZE, seed=1).to(device)
        calls = math.ceil(len(plan(args.images).cells) * args.images / batch)

        def inference(count: int = calls) -> None:
            for _ in range(count):
                entry.predict(premade, args.amp)

        pipeline([entry], min(batch, args.images))  # warm-up
        inference(1)
        times: dict[str, list[float]] = {"pipeline": [], "inference": [], "input": []}
        for _ in range(args.repeats):
            times["pipeline"].append(timed(lambda: pipeline([entry]), device))
            times["inference"].append(timed(inference, device))
            times["input"].append(timed(lambda: pipeline([]), device))
        on_gpu = decode_device(data, device) is not None
        agreement = decode_agreement(data, device) if on_gpu else ""

    images = len(plan(args.images).cells) * args.images
    counts = {"pipeline": images, "inference": calls * batch, "input": images}
    best = {name: min(values) for name, values in times.items()}
    rate = {name: counts[name] / best[name] for name in best}
    ratio = rate["pipeline"] / rate["inference"]
    given = sys.argv[1:] if argv is None else argv
    rows = (("pipeline", "(a) pipeline: engine.evaluate on the folder"),
            ("inference", "(b) pure inference, pre-made batches on the device"),
            ("input", "(c) input only: read, decode, corrupt (no model)"))
    lines = [
        f"### {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, {device.type}",
        "",
        f"Command: `python benchmarks/pipeline.py{''.join(' ' + a for a in given)}`.  ",
        f"Machine: {describe(device)}.  ",
        f"resnet50 (random weights, 2 classes) on {args.images} synthetic {SIZE} px JPEGs, clean + "
        f"{args.corruption} severity {args.severity}; batch {batch}, {'bfloat16 autocast' if args.amp else 'float32'}, "
        f"{'channels-last' if args.channels_last else 'contiguous (NCHW)'}, {args.workers} loader workers, JPEGs "
        f"decoded {'on the GPU (nvjpeg)' if on_gpu else 'on the CPU (Pillow)'}; best of {args.repeats} interleaved "
        "rounds after a warm-up.",
        "",
        "| measurement | images | best time (s) | img/s |",
        "|---|---:|---:|---:|",
        *[f"| {label} | {counts[name]} | {best[name]:.3f} | {rate[name]:.1f} |" for name, label in rows],
        "",
        f"(a)/(b) = **{ratio:.2f}** (target on a GPU with --amp: >= {TARGET:.2f}). All rounds (s): "
        + "; ".join(f"{name} {', '.join(f'{t:.3f}' for t in values)}" for name, values in times.items()) + ".",
        *(["", agreement] if agreement else []),
        "",
    ]
    section = "\n".join(lines)
    print(section)
    if args.out:
        with open(args.out, "a") as handle:
            handle.write(section + "\n")
        print(f"appended to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

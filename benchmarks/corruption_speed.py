"""Throughput of the corruption engine: reference backend (imagecorruptions, one image at a time on
the CPU) vs the torch backend (batched), in images per second.

    /work/venv/bin/python benchmarks/corruption_speed.py            # full run (a few minutes)
    /work/venv/bin/python benchmarks/corruption_speed.py --quick    # a few images, smoke test

Two resolutions:

* 224 px, imagenet profile for both backends (the reference implements only that profile).
* 32 px: the reference can only run the *imagenet* profile, so the ratio at 32 px compares both
  backends with the imagenet profile (labelled "imagenet profile @32"); the torch backend's own
  CIFAR profile (what a 32 px run really uses) is timed too and shown in its own column.

Method: natural-looking synthetic images (smooth gradients, edges, texture). For every corruption
the two backends are warmed up at every timed severity (this excludes glass_blur's numba compile
and one-off caches such as the per-severity shot-noise tables, built once per run), then
timed interleaved (reference, torch, reference, torch, ...) so background load on a shared
machine hits both alike: --repeats rounds (3) per severity, each backend keeping its fastest
round, as timeit does, since load only ever adds time. img/s = images processed / time spent.
The suite ratio is, over the 15 benchmark corruptions, (total reference time per image) / (total torch time per image), i.e. the
speed-up of corrupting one image under all 15 corruptions. torch runs on one CPU thread by default
(--threads), matching the single-threaded reference. Targets: suite >= 5x, every row >= 2x.

The table goes to stdout and to benchmarks/RESULTS-corruptions.md (date, CPU, torch version, load).
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path


import torch  # noqa: E402
from machine import describe  # noqa: E402

import corruptions as C  # noqa: E402

ROW_TARGET = 2.0
SUITE_TARGET = 5.0
RESULTS = Path(__file__).resolve().parent / "RESULTS-corruptions.md"


def natural_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 3, size, size): gradients + soft blobs + hard edges + mild texture."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out = []
    for i in range(n):
        cx, cy, r = torch.rand(3, generator=g)
        blob = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.05 + 0.1 * r))
        edges = (((xx * (2 + i % 5)).floor() + (yy * 3).floor()) % 2) * 0.25
        base = torch.stack([0.3 + 0.4 * xx, 0.2 + 0.5 * yy, 0.6 - 0.3 * xx * yy])
        tex = torch.rand(3, size, size, generator=g) * 0.1
        out.append((base * 0.7 + blob * 0.3 + edges + tex).clamp(0, 1))
    return (torch.stack(out) * 255).round().to(torch.uint8)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_torch(x: torch.Tensor, name: str, severity: int, profile: str) -> float:
    _sync(x.device)
    start = time.perf_counter()
    C.corrupt(x, name, severity, profile=profile)
    _sync(x.device)
    return time.perf_counter() - start


def time_reference(x: torch.Tensor, name: str, severity: int) -> float:
    start = time.perf_counter()
    C.corrupt(x, name, severity, profile="imagenet", backend="reference")
    return time.perf_counter() - start


def measure(size: int, names: list[str], *, batch: int, n_ref: int, severities: list[int],
            device: torch.device, extra_profile: str | None, repeats: int) -> list[dict]:
    """Interleaved timing of reference (CPU, per image) and torch (batched on ``device``)."""
    cpu = natural_images(max(batch, n_ref), size)
    x_torch = cpu[:batch].to(device)
    x_ref = cpu[:n_ref]
    rows = []
    for name in names:
        row = {"name": name, "ref_t": 0.0, "torch_t": 0.0, "extra_t": 0.0, "error": None}
        try:
            # warm-up at every timed severity (numba compile of glass_blur, lazy imports,
            # allocator, cuDNN/cuFFT plans, per-severity tables such as shot noise's)
            for severity in severities:
                time_reference(x_ref[:2], name, severity)
                time_torch(x_torch[:2], name, severity, "imagenet")
                if extra_profile:
                    time_torch(x_torch[:2], name, severity, extra_profile)
            for severity in severities:  # interleaved: ref, torch, (torch extra profile); best of repeats
                times = [(time_reference(x_ref, name, severity),
                          time_torch(x_torch, name, severity, "imagenet"),
                          time_torch(x_torch, name, severity, extra_profile) if extra_profile else 0.0)
                         for _ in range(repeats)]
                row["ref_t"] += min(t[0] for t in times)
                row["torch_t"] += min(t[1] for t in times)
                row["extra_t"] += min(t[2] for t in times)
        except Exception as exc:  # a broken op must not hide the others
            row["error"] = f"{type(exc).__name__}: {exc}"[:80]
        reps = len(severities)
        row["ref_ips"] = n_ref * reps / row["ref_t"] if row["ref_t"] else float("nan")
        row["torch_ips"] = batch * reps / row["torch_t"] if row["torch_t"] else float("nan")
        row["extra_ips"] = batch * reps / row["extra_t"] if row["extra_t"] else float("nan")
        row["ratio"] = row["torch_ips"] / row["ref_ips"]
        rows.append(row)
        print(f"  {size}px {device.type} {name:18s} ref {row['ref_ips']:8.1f} img/s  torch "
              f"{row['torch_ips']:8.1f} img/s  x{row['ratio']:.2f}"
              + (f"  ({row['error']})" if row["error"] else ""), file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict], title: str, extra_profile: str | None) -> str:
    extra_head = f" | torch img/s ({extra_profile} profile)" if extra_profile else ""
    lines = [f"### {title}", "",
             f"| corruption | ref img/s | torch img/s | ratio | >= {ROW_TARGET:g}x{extra_head} |",
             "|---|---:|---:|---:|:---:|" + ("---:|" if extra_profile else "")]
    for r in rows:
        if r["error"]:
            verdict = f"ERROR ({r['error']})"
        else:
            verdict = "PASS" if r["ratio"] >= ROW_TARGET else "FAIL"
        extra = f" | {r['extra_ips']:.1f}" if extra_profile else ""
        lines.append(f"| {r['name']} | {r['ref_ips']:.1f} | {r['torch_ips']:.1f} | {r['ratio']:.2f}x | "
                     f"{verdict}{extra} |")
    bench = [r for r in rows if r["name"] in C.BENCHMARK and not r["error"]]
    ref_total = sum(1 / r["ref_ips"] for r in bench)
    torch_total = sum(1 / r["torch_ips"] for r in bench)
    suite = ref_total / torch_total if torch_total else float("nan")
    passed = sum(r["ratio"] >= ROW_TARGET for r in rows if not r["error"])
    lines += ["",
              f"Suite ({len(bench)}/15 benchmark corruptions, time per image through all of them): "
              f"reference {ref_total * 1e3:.1f} ms, torch {torch_total * 1e3:.1f} ms -> "
              f"**{suite:.2f}x** (target >= {SUITE_TARGET:g}x: {'PASS' if suite >= SUITE_TARGET else 'FAIL'}); "
              f"rows at >= {ROW_TARGET:g}x: {passed}/{len(rows)}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few images, one severity")
    parser.add_argument("--batch", type=int, default=64, help="torch batch size (default 64)")
    parser.add_argument("--n-ref", type=int, default=None, help="reference images per repetition")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (CPU, plus CUDA if present)")
    parser.add_argument("--corruptions", default="all", help="names or sets, as corruptions.select")
    parser.add_argument("--sizes", default="224,32")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed rounds per severity; each backend keeps its fastest (default 3)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the reference is single-threaded, and on a "
                             "loaded machine extra OpenMP threads mostly wait; 0 keeps torch's default)")
    parser.add_argument("--out", default=str(RESULTS), help="Markdown file ('' to skip)")
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    names = C.select(args.corruptions)
    batch = 4 if args.quick else args.batch
    n_ref = args.n_ref or (2 if args.quick else 16)
    severities = [3] if args.quick else [1, 3, 5]
    repeats = 1 if args.quick else max(1, args.repeats)
    if args.device == "auto":
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    else:
        devices = [torch.device(args.device)]

    sections = []
    for device in devices:
        for size in (int(s) for s in args.sizes.split(",")):
            extra = "cifar" if size <= 45 else None
            rows = measure(size, names, batch=batch, n_ref=n_ref, severities=severities, device=device,
                           extra_profile=extra, repeats=repeats)
            where = f"torch on {device.type.upper()}" + (f" ({torch.cuda.get_device_name(device)})"
                                                          if device.type == "cuda" else "")
            if extra:
                title = (f"{size} px, imagenet profile @{size} for both backends (the reference has no "
                         f"CIFAR profile); {where}, batch {batch}; reference per image on the CPU, "
                         f"{n_ref} images x severities {severities}")
            else:
                title = (f"{size} px, imagenet profile; {where}, batch {batch}; reference per image on "
                         f"the CPU, {n_ref} images x severities {severities}")
            sections.append(table(rows, title, extra))
            print("\n" + sections[-1], flush=True)

    if args.out:
        header = ["# Corruption throughput: reference (imagecorruptions) vs torch backend", "",
                  f"Generated {dt.datetime.now().isoformat(timespec='seconds')} by "
                  f"`python benchmarks/corruption_speed.py{''.join(' ' + a for a in given)}`.", "",
                  f"Machine: {describe()}.", "",
                  f"Reference and torch are timed interleaved per corruption and severity, best of "
                  f"{repeats} rounds each, after a warm-up at every timed severity (numba compile of "
                  "glass_blur and one-off per-severity tables excluded). The machine is shared, so "
                  "absolute img/s are noisy; the ratios are the figures to read.", ""]
        Path(args.out).write_text("\n".join(header + sections))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

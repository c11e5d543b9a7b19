"""Does a corrupted image depend on the device or on the batch? The torch backend on the CPU vs on a
GPU, and on the GPU one batch vs one image at a time, for every corruption, severity and profile.

    python benchmarks/device_agreement.py --device cuda          # on a machine with a GPU
    python benchmarks/device_agreement.py --device cpu --quick   # smoke test of the script itself

Every image's random numbers come from its own Philox stream (corruptions.philox), drawn on the
images' device: the C kernel on the CPU, integer torch ops on the GPU. The "integer draws" column
checks that both give the same 32-bit words for every stream the ops draw (0..2, as many words as
the image has elements). What can differ is float rounding (Box-Muller's log/sin/cos, cuFFT vs
pocketfft, cuDNN vs CPU convolutions, fused multiply-adds, transcendental functions), which the
final truncation to uint8 turns into one-level steps wherever a value lies close to a level
boundary. Reported per profile and corruption, over all severities and images: the share of
pixels that are identical, the share that differ by more than one level, the largest and the mean
absolute difference (grey levels), and the gap in mean PSNR against the clean image (GPU minus
CPU, dB: the "equal in distribution" check). The last column compares, on the GPU, the whole batch
against each image corrupted alone (determinism across batch sizes on that device).
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import torch
from corruption_speed import natural_images
from fidelity import psnr
from machine import describe

import corruptions as C
from corruptions.philox import Streams
from corruptions.profiles import PROFILE_SIZES

RESULTS = Path(__file__).resolve().parent / "RESULTS-device.md"


def compare(profile: str, size: int, name: str, images: int, severities: list[int],
            device: torch.device) -> dict:
    clean = natural_images(images, size, seed=1)
    on_device = clean.to(device)
    diffs, gaps, batch_diffs = [], [], []
    for severity in severities:
        cpu = C.corrupt(clean, name, severity, profile=profile)
        dev = C.corrupt(on_device, name, severity, profile=profile).cpu()
        alone = torch.cat([C.corrupt(on_device[i:i + 1], name, severity, indices=[i], profile=profile)
                           for i in range(images)]).cpu()
        diffs.append((cpu.int() - dev.int()).abs())
        batch_diffs.append((alone.int() - dev.int()).abs())
        gaps.append((psnr(clean, dev) - psnr(clean, cpu)).mean().item())
    streams = [Streams.for_images(0, range(images), name, severity) for severity in severities]
    draws_identical = all(torch.equal(s.words(3 * size * size, stream), s.words(3 * size * size, stream, device).cpu())
                          for s in streams for stream in range(3))
    d = torch.cat([x.flatten() for x in diffs])
    b = torch.cat([x.flatten() for x in batch_diffs])
    return {"profile": profile, "name": name, "identical": (d == 0).double().mean().item(),
            "over_one": (d > 1).double().mean().item(), "max": int(d.max()),
            "mean": d.double().mean().item(), "psnr_gap": sum(gaps) / len(gaps),
            "batch_max": int(b.max()), "batch_identical": (b == 0).double().mean().item(),
            "draws_identical": draws_identical}


def table(rows: list[dict], device: torch.device) -> str:
    if not rows:
        return "No corruption ran."
    lines = ["| profile | corruption | integer draws | identical pixels | > 1 level apart | max diff | mean diff | "
             "PSNR gap (dB) | batch vs alone on the device |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        alone = "identical" if r["batch_max"] == 0 else \
            f"max {r['batch_max']}, {100 * (1 - r['batch_identical']):.4f}% differ"
        draws = "identical" if r["draws_identical"] else "DIFFER"
        lines.append(f"| {r['profile']} | {r['name']} | {draws} | {100 * r['identical']:.3f}% | "
                     f"{100 * r['over_one']:.4f}% | {r['max']} | {r['mean']:.5f} | "
                     f"{r['psnr_gap']:+.4f} | {alone} |")
    same = sum(r["max"] == 0 for r in rows)
    within_one = sum(r["max"] <= 1 for r in rows)
    batch_same = sum(r["batch_max"] == 0 for r in rows)
    worst = max(rows, key=lambda r: r["mean"])
    draws_same = sum(r["draws_identical"] for r in rows)
    lines += ["", f"{device.type.upper()} vs CPU: integer draws identical in {draws_same}/{len(rows)} (profile, "
                  f"corruption) pairs; outputs: {same}/{len(rows)} pairs "
                  f"bit-identical, {within_one}/{len(rows)} within one grey level; largest mean "
                  f"difference {worst['mean']:.5f} levels ({worst['profile']} {worst['name']}); "
                  f"largest PSNR gap {max(abs(r['psnr_gap']) for r in rows):.4f} dB. "
                  f"Batch vs one image at a time on the {device.type.upper()}: "
                  f"{batch_same}/{len(rows)} pairs bit-identical."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=8, help="images per profile (default 8)")
    parser.add_argument("--quick", action="store_true", help="2 images, severity 3, cifar profile only")
    parser.add_argument("--out", default=str(RESULTS), help="Markdown file ('' to skip)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: CUDA is not available on this machine", file=sys.stderr)
        return 2
    images = 2 if args.quick else args.images
    severities = [3] if args.quick else [1, 2, 3, 4, 5]
    profiles = {"cifar": 32} if args.quick else PROFILE_SIZES
    rows, errors = [], []
    for profile, size in profiles.items():
        for name in C.ALL:
            try:
                rows.append(compare(profile, size, name, images, severities, device))
            except Exception as exc:  # one broken op must not hide the others
                print(f"  {profile:12s} {name:18s} ERROR {type(exc).__name__}: {exc}", file=sys.stderr)
                errors.append(f"{profile} {name}: {type(exc).__name__}: {exc}"[:200])
                continue
            r = rows[-1]
            print(f"  {profile:12s} {name:18s} identical {100 * r['identical']:8.3f}%  max {r['max']:3d}  "
                  f"mean {r['mean']:.5f}  batch-vs-alone max {r['batch_max']}", file=sys.stderr, flush=True)
    text = table(rows, device) + "".join(f"\n\nERROR {e}" for e in errors)
    print(text)
    if args.out:
        header = ["# Torch backend: CPU vs GPU outputs, and batch vs one image on the GPU", "",
                  f"Generated {dt.datetime.now().isoformat(timespec='seconds')} by "
                  f"`python benchmarks/device_agreement.py --device {args.device}"
                  f"{' --quick' if args.quick else ''}`.", "", f"Machine: {describe(device)}.", "",
                  f"Images: {images} synthetic natural-looking images per profile (224, 64, 32 px), "
                  f"seed 0, severities {severities}. Differences in grey levels (0..255).", ""]
        Path(args.out).write_text("\n".join(header + [text, ""]))
        print(f"wrote {args.out}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

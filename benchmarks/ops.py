"""Speed and memory of the dynamic operators, and latency of the ResNet-50-sized models.

    /work/venv/bin/python benchmarks/ops.py                  # full run (quiet machine, minutes)
    /work/venv/bin/python benchmarks/ops.py --quick          # small shapes, smoke test (< 3 min)
    /work/venv/bin/python benchmarks/ops.py --device cuda    # on a GPU
    /work/venv/bin/python benchmarks/ops.py --quick --out benchmarks/RESULTS-ops.md
    /work/venv/bin/python benchmarks/ops.py --threads 1 --clock cpu   # on a machine shared with other jobs

1. Operator table at the ImageNet ResNet-50 stage shapes (C@HxW = 64@56, 128@28, 256@14, 512@7,
   batch 32; --quick: C/4, spatial /2 rounded up, batch 2), every operator C -> C, stride 1:
   static 3x3 conv, CondConv2d (E=4), DynamicConv2d (K=4), Involution2d (K=7, G=C/16, as RedNet),
   Bivolution2d (RedNet setting: depth-wise 3x3 static branch + SAKG involution, K=7), and naive
   references written here: CondConv/DyConv as a Python loop of one conv per example with its own
   mixed kernel; involution/Bi-volution aggregating through ``F.unfold`` (the official RedNet
   form: a (B, C, K*K, H, W) unfolded input, multiplied by the kernels and summed). The naive
   versions reuse the fast module's parameters and kernel generator, so only the aggregation
   differs. Forward time: median of timed repeats after warm-up, no_grad, eval mode.

   Peak activation memory of one forward, in two modes: ``infer`` (no_grad: what inference
   needs) and ``train`` (grad enabled, the autograd graph and its saved tensors alive: what a
   training step holds after its forward). Peak = the maximum, during the forward, of the bytes
   allocated since it began (the output included; the input and parameters, allocated before,
   are not). CPU: the allocator's own allocation/free events (``torch.profiler`` with
   ``profile_memory=True``, the raw ``[memory]`` events with their sizes in time order, summed
   to a running total whose maximum is taken), which sees every tensor the CPU allocator hands
   out, including temporaries inside an op (im2col buffers, unfold). CUDA:
   ``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` before the call.
   Ratios: fast/naive (time and memory), and memory / static 3x3 conv of the same shape.
   Target: Involution2d and Bivolution2d peak memory <= 2x the static 3x3 conv's (PASS/FAIL).

2. Model latency: bivol_resnet50, rednet50, dyconv_resnet50, condconv_resnet50 and resnet50
   (eval, no_grad, 224x224, batch 1 and 32; --quick: 112x112, batch 1 and 4), timed interleaved
   (one forward of each model per round) so background load hits all alike; median latency and
   ratio to resnet50. Target: bivol_resnet50 <= 1.5x resnet50 on CPU (PASS/FAIL).

3. Involution aggregation: the fused kernel (C++ on the CPU, Triton with --device cuda) against
   the pure-torch path, forward and forward+backward, fp32 and bf16, at the CIFAR models' shapes
   (K=3, 4 and 16 channels per group, batch 128) and RedNet-50's stages (K=7, batch 32; --quick:
   batch <= 8, spatial /2).

4. CIFAR training throughput: every registered ResNet-20 variant, one SGD step per model per
   round (interleaved), batch 128 (--quick: 16), 32x32, fp32 and bf16 autocast; images/s and
   ratio to resnet20. Target: involution_resnet20 and bivol_resnet20 >= 0.5x (PASS/FAIL).

torch runs on one CPU thread by default (--threads): on a shared machine extra threads thrash.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from machine import describe
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the naive references live with the tests
from _naive import naive_forward

from robustbench_bivol.models import create_model, fused_generator, fused_involution, list_models, model_spec
from robustbench_bivol.models.operators import (
    Bivolution2d,
    CondConv2d,
    DynamicConv2d,
    Involution2d,
    _aggregate_torch,
)

MEMORY_TARGET = 2.0  # involution / Bi-volution peak memory vs a static 3x3 conv
LATENCY_TARGET = 1.5  # bivol_resnet50 latency vs resnet50 (CPU)
MODELS = ("resnet50", "bivol_resnet50", "rednet50", "dyconv_resnet50", "condconv_resnet50")
STAGES = ((64, 56), (128, 28), (256, 14), (512, 7))
KERNEL_SIZE = 7
NAIVE_REPEATS = 3  # timed calls of the (slow) naive references
TRAIN_TARGET = 0.5  # involution_resnet20 / bivol_resnet20 training throughput vs resnet20 (CPU)
TRAIN_TARGETED = ("involution_resnet20", "bivol_resnet20")
TRAIN_BATCH = 128
#: Aggregation shapes (batch, C, size, group_channels, K, stride): the CIFAR models' (gc=4 wide
#: involution, gc=16 involution_resnet20 / bivol_resnet20) and RedNet-50's stages (K=7, batch 32).
AGGREGATION_SHAPES = ((128, 32, 32, 4, 3, 1), (128, 64, 16, 4, 3, 1), (128, 128, 8, 4, 3, 1),
                      (128, 16, 32, 16, 3, 1), (128, 32, 16, 16, 3, 1), (128, 64, 8, 16, 3, 1),
                      (128, 16, 32, 16, 3, 2), (32, 64, 56, 16, 7, 1), (32, 128, 28, 16, 7, 1),
                      (32, 256, 14, 16, 7, 1), (32, 512, 7, 16, 7, 1))


# ----------------------------------------------------------------------------- naive references

class Naive(nn.Module):
    """Wraps a fast operator; forward = the naive reference with the same parameters."""

    def __init__(self, fast: nn.Module) -> None:
        super().__init__()
        self.fast = fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return naive_forward(self.fast, x)


def build_ops(c: int) -> list[tuple[str, nn.Module, str | None]]:
    """(name, module, name of the fast op it is the naive reference of), all C -> C, stride 1."""
    cond, dy = CondConv2d(c, c, 1), DynamicConv2d(c, c, 1)
    inv = Involution2d(c, c, 1, kernel_size=KERNEL_SIZE)
    bi = Bivolution2d(c, c, 1, kernel_size=KERNEL_SIZE, static_groups="depthwise")
    for m in (inv, bi.dynamic):  # position-dependent kernels (the zero init makes them constant)
        nn.init.normal_(m.span.weight, std=0.01)
    ops = [("static 3x3 conv", nn.Conv2d(c, c, 3, padding=1, bias=False), None),
           ("CondConv2d", cond, None), ("CondConv naive (loop)", Naive(cond), "CondConv2d"),
           ("DynamicConv2d", dy, None), ("DyConv naive (loop)", Naive(dy), "DynamicConv2d"),
           ("Involution2d", inv, None), ("Involution naive (unfold)", Naive(inv), "Involution2d"),
           ("Bivolution2d", bi, None), ("Bi-volution naive (unfold)", Naive(bi), "Bivolution2d")]
    return [(name, m.eval(), ref) for name, m, ref in ops]


# ----------------------------------------------------------------------------- measurement

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: Timer of :func:`time_once`: wall clock, or (``--clock cpu``, one thread) this thread's CPU time,
#: which other processes' load on a shared machine does not inflate.
clock: Callable[[], float] = time.perf_counter


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    t0 = clock()
    fn()
    _sync(device)
    return clock() - t0


def median_time(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(time_once(fn, device) for _ in range(repeats))


def _cpu_peak_bytes(fn: Callable[[], object]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")]
    current = peak = 0
    for _, nbytes in sorted(events):
        current += nbytes
        peak = max(peak, current)
    return peak


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated during ``fn()`` above what was allocated before (output included)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del out
        return peak
    return _cpu_peak_bytes(fn)


def mib(nbytes: float) -> str:
    return f"{nbytes / 2 ** 20:.2f}" if nbytes < 100 * 2 ** 20 else f"{nbytes / 2 ** 20:.0f}"


def ms(seconds: float) -> str:
    v = seconds * 1e3
    return f"{v:.2f}" if v < 100 else f"{v:.0f}"


# ----------------------------------------------------------------------------- 1. operators

def operator_table(device: torch.device, quick: bool, warmup: int, repeats: int) -> tuple[str, bool]:
    batch = 2 if quick else 32
    stages = [(c // 4, -(-s // 2)) for c, s in STAGES] if quick else list(STAGES)
    sections, ok = [], True
    for c, s in stages:
        torch.manual_seed(0)
        ops = [(n, m.to(device), r) for n, m, r in build_ops(c)]
        if quick:  # the tiny maps fall under Involution2d.chunk_min_bytes; smoke-test the chunked path measured in full runs
            for _, m, _ in ops:
                for inv in m.modules():
                    if isinstance(inv, Involution2d):
                        inv.chunk_min_bytes = inv.chunk_min_bytes_gpu = 0
        x = torch.randn(batch, c, s, s, device=device)
        rows: dict[str, dict] = {}
        for name, m, ref in ops:
            call = partial(m, x)
            with torch.no_grad():
                t = median_time(call, device, *((1, NAIVE_REPEATS) if ref else (warmup, repeats)))
                infer = peak_bytes(call, device)
            call()  # warm-up of the autograd path
            train = peak_bytes(call, device)
            rows[name] = {"time": t, "infer": infer, "train": train, "ref": ref}
        static = rows["static 3x3 conv"]
        act = batch * c * s * s * x.element_size()  # one activation tensor of this shape
        lines = [f"### C={c} @ {s}x{s}, batch {batch} (one activation tensor = {mib(act)} MiB)",
                 "",
                 "Memory cells are `infer / train`.",
                 "",
                 ("| operator | fwd ms | peak MiB | peak in activations | time fast/naive | mem fast/naive"
                  " | mem / static 3x3 | <= 2x static |"),
                 "|---|---:|---:|---:|---:|---:|---:|:---:|"]
        fast_of = {r["ref"]: n for n, r in rows.items() if r["ref"]}

        def pair(a: float, b: float, fmt: str) -> str:
            return f"{fmt.format(a)} / {fmt.format(b)}"

        for name, r in rows.items():
            naive = rows.get(fast_of.get(name, ""))
            t_ratio = f"{r['time'] / naive['time']:.2f}x" if naive else ""
            m_ratio = pair(r["infer"] / naive["infer"], r["train"] / naive["train"], "{:.2f}x") if naive else ""
            vs_i, vs_t = r["infer"] / static["infer"], r["train"] / static["train"]
            verdict = ""
            if name in ("Involution2d", "Bivolution2d"):
                passed = vs_i <= MEMORY_TARGET and vs_t <= MEMORY_TARGET
                ok &= passed
                verdict = "PASS" if passed else "FAIL"
            lines.append(f"| {name} | {ms(r['time'])} | {mib(r['infer'])} / {mib(r['train'])} | "
                         f"{pair(r['infer'] / act, r['train'] / act, '{:.2f}')} | {t_ratio} | {m_ratio} | "
                         f"{pair(vs_i, vs_t, '{:.2f}x')} | {verdict} |")
        # The floor of RedNet-style involution: the generated kernel map (B, G, K*K, H, W), G = C/16.
        inv = next(m for n, m, _ in ops if n == "Involution2d")
        kernel_map = batch * inv.groups * KERNEL_SIZE ** 2 * s * s * 4
        lines += ["", (f"Involution's generated kernel map alone (B x G x K*K x H x W = K*K/16 activations): "
                       f"{mib(kernel_map)} MiB = {kernel_map / static['infer']:.2f}x the static conv's infer peak.")]
        sections.append("\n".join(lines))
        print(sections[-1] + "\n", flush=True)
    return "\n\n".join(sections), ok


# ----------------------------------------------------------------------------- 2. models

def model_table(device: torch.device, quick: bool, warmup: int, repeats: int) -> tuple[str, bool]:
    size = 112 if quick else 224
    batches = (1, 4) if quick else (1, 32)
    torch.manual_seed(0)
    models = {name: create_model(name).eval().to(device) for name in MODELS}
    lat: dict[tuple[str, int], float] = {}
    with torch.no_grad():
        for b in batches:
            x = torch.randn(b, 3, size, size, device=device)
            for m in models.values():
                for _ in range(warmup):
                    m(x)
            times: dict[str, list[float]] = {n: [] for n in models}
            for _ in range(repeats):  # interleaved rounds
                for n, m in models.items():
                    times[n].append(time_once(partial(m, x), device))
            for n in models:
                lat[n, b] = statistics.median(times[n])
    head = " | ".join(f"batch {b} ms | ratio" for b in batches)
    lines = [f"### {size}x{size}, eval, no_grad, {device.type}",
             "",
             f"| model | {head} |",
             "|---|" + "---:|---:|" * len(batches)]
    for n in models:
        cells = " | ".join(f"{ms(lat[n, b])} | {lat[n, b] / lat['resnet50', b]:.2f}x" for b in batches)
        lines.append(f"| {n} | {cells} |")
    ratios = [lat["bivol_resnet50", b] / lat["resnet50", b] for b in batches]
    ok = all(r <= LATENCY_TARGET for r in ratios)
    cpu_note = "" if device.type == "cpu" else f" (the target is stated for the CPU; this run is on {device.type})"
    per_batch = ", ".join(f"{r:.2f}x at batch {b}" for r, b in zip(ratios, batches, strict=True))
    lines += ["", (f"bivol_resnet50 / resnet50: {per_batch} -> target <= {LATENCY_TARGET}x: "
                   f"**{'PASS' if ok else 'FAIL'}**{cpu_note}")]
    text = "\n".join(lines)
    print(text + "\n", flush=True)
    return text, ok


# ----------------------------------------------------------------------------- 3. aggregation

def aggregation_table(device: torch.device, quick: bool, warmup: int, repeats: int) -> str:
    """The involution aggregation alone, the device's fused kernel against the pure-torch path."""
    shapes = [(min(b, 8), c, -(-s // 2), gc, k, st) for b, c, s, gc, k, st in AGGREGATION_SHAPES] \
        if quick else AGGREGATION_SHAPES
    lines = ["| dtype | B | C@HxW | gc | K | stride | torch fwd ms | fused fwd ms | speed-up | "
             "torch fwd+bwd ms | fused fwd+bwd ms | speed-up |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for dtype in (torch.float32, torch.bfloat16):
        for b, c, s, gc, k, stride in shapes:
            torch.manual_seed(0)
            ho, pad = (s - 1) // stride + 1, (k - 1) // 2
            x = torch.randn(b, c, s, s, dtype=dtype, device=device, requires_grad=True)
            kernels = torch.randn(b, c // gc, k * k, ho, ho, dtype=dtype, device=device, requires_grad=True)
            cells = []
            for fn in (_aggregate_torch, fused_involution.aggregate):
                def forward(fn=fn) -> torch.Tensor:
                    return fn(x, kernels, k, stride, 1, pad, pad)

                def train(forward=forward) -> None:
                    forward().backward(torch.ones(b, c, ho, ho, dtype=dtype, device=device))

                with torch.no_grad():
                    fwd = median_time(forward, device, warmup, repeats)
                cells.append((fwd, median_time(train, device, warmup, repeats)))
            (tf, tt), (ff, ft) = cells
            lines.append(f"| {str(dtype)[6:]} | {b} | {c}@{s}x{s} | {gc} | {k} | {stride} | {ms(tf)} | {ms(ff)} | "
                         f"{tf / ff:.1f}x | {ms(tt)} | {ms(ft)} | {tt / ft:.1f}x |")
            print(lines[-1], flush=True)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- 3b. kernel generator

#: (batch, channels, size, reduced, span outputs): CIFAR ResNet-20 stages (narrow and wide), then
#: RedNet-50's first and third stages: the shapes behind fused_generator's thresholds.
GENERATOR_SHAPES = ((128, 16, 32, 4, 9), (128, 32, 16, 8, 18), (128, 64, 8, 16, 36), (128, 32, 32, 8, 72),
                    (128, 64, 16, 16, 144), (128, 128, 8, 32, 288), (32, 64, 56, 16, 196), (32, 256, 14, 64, 784))


def generator_table(quick: bool, warmup: int, repeats: int) -> str:
    """The kernel generator's two passes, fused C++ against the torch modules (oneDNN), CPU only,
    every shape fused whatever the thresholds say; "used" marks where the thresholds fuse it."""
    shapes = [(min(b, 8), c, s, r, o) for b, c, s, r, o in GENERATOR_SHAPES] if quick else GENERATOR_SHAPES
    lines = ["| dtype | B | C@HxW | reduced | span out | separable train ms torch / fused | infer | used | "
             "ReLU+span train ms torch / fused | infer | used |",
             "|---|---:|---|---:|---:|---|---|:---:|---|---|:---:|"]
    rules = ((fused_generator.SMALL_SEPARABLE_CHANNELS, fused_generator.MAX_SEPARABLE_CHANNELS),
             (fused_generator.SMALL_POINTWISE_MACS, fused_generator.MAX_POINTWISE_MACS))
    thresholds = (fused_generator.MIN_PIXELS, fused_generator.MAX_SEPARABLE_CHANNELS,
                  fused_generator.MAX_POINTWISE_MACS)
    device = torch.device("cpu")
    for dtype in (torch.float32, torch.bfloat16):
        for b, c, size, r, o in shapes:
            torch.manual_seed(0)
            x = torch.randn(b, c, size, size, dtype=dtype, requires_grad=True)
            n = torch.randn(b, r, size, size, dtype=dtype, requires_grad=True)
            depthwise = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False).to(dtype)
            reduce, span, relu = nn.Conv2d(c, r, 1, bias=False).to(dtype), nn.Conv2d(r, o, 1).to(dtype), nn.ReLU()
            passes = ((lambda: fused_generator.separable(x, depthwise, reduce), c, rules[0]),
                      (lambda: fused_generator.relu_pointwise(n, relu, span), r * o, rules[1]))
            cells = []
            for run, work, rule in passes:
                times = {}
                for fused in (False, True):
                    if fused:  # every shape, whatever the thresholds
                        fused_generator.MIN_PIXELS, fused_generator.MAX_SEPARABLE_CHANNELS, \
                            fused_generator.MAX_POINTWISE_MACS = 0, 1 << 30, 1 << 30
                    with contextlib.nullcontext() if fused else fused_involution.torch_path():
                        train = median_time(lambda: run().sum().backward(), device, warmup, repeats)
                        with torch.no_grad():
                            infer = median_time(run, device, warmup, repeats)
                    times[fused] = (train, infer)
                fused_generator.MIN_PIXELS, fused_generator.MAX_SEPARABLE_CHANNELS, \
                    fused_generator.MAX_POINTWISE_MACS = thresholds
                used = fused_generator.pays(size * size, work, *rule)
                cells.append(f"{ms(times[False][0])} / {ms(times[True][0])} | {ms(times[False][1])} / "
                             f"{ms(times[True][1])} | {'yes' if used else 'no'}")
            lines.append(f"| {str(dtype)[6:]} | {b} | {c}@{size}x{size} | {r} | {o} | {cells[0]} | {cells[1]} |")
            print(lines[-1], flush=True)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- 4. CIFAR training

def cifar_family() -> list[str]:
    """Every registered 32 px ResNet-20 variant, resnet20 first (the reference)."""
    names = [n for n in list_models() if model_spec(n).input_size == 32 and n.endswith("resnet20")]
    return ["resnet20"] + [n for n in names if n != "resnet20"]


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> None:
    """One SGD step; bf16: the forward under ``torch.autocast`` (as the CIFAR study trains)."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def training_table(device: torch.device, quick: bool, warmup: int, rounds: int) -> tuple[str, bool]:
    """Training throughput (img/s) of the CIFAR family, interleaved rounds, ratio to resnet20."""
    batch = 16 if quick else TRAIN_BATCH
    names = cifar_family()
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    rate: dict[tuple[str, bool], float] = {}
    for bf16 in (False, True):
        models = {n: create_model(n).train().to(device) for n in names}
        steps = {n: partial(train_step, m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9), x, y, bf16)
                 for n, m in models.items()}
        for step in steps.values():
            for _ in range(warmup):
                step()
        times: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(rounds):
            for n, step in steps.items():
                times[n].append(time_once(step, device))
        for n in names:
            rate[n, bf16] = batch / statistics.median(times[n])
    lines = [f"### CIFAR family: training steps, batch {batch}, 32x32, {device.type}",
             "",
             "| model | fp32 img/s | ratio | bf16 autocast img/s | ratio | target |",
             "|---|---:|---:|---:|---:|:---:|"]
    ok = True
    for n in names:
        ratios = [rate[n, bf16] / rate["resnet20", bf16] for bf16 in (False, True)]
        verdict = ""
        if n in TRAIN_TARGETED:
            passed = all(r >= TRAIN_TARGET for r in ratios)
            ok &= passed
            verdict = f"{'PASS' if passed else 'FAIL'} (>= {TRAIN_TARGET}x)"
        lines.append(f"| {n} | {rate[n, False]:.0f} | {ratios[0]:.2f}x | {rate[n, True]:.0f} | {ratios[1]:.2f}x | "
                     f"{verdict} |")
    lines += ["", f"involution_resnet20 and bivol_resnet20 >= {TRAIN_TARGET}x resnet20 in fp32 and bf16: "
                  f"**{'PASS' if ok else 'FAIL'}**"]
    text = "\n".join(lines)
    print(text + "\n", flush=True)
    return text, ok


# ----------------------------------------------------------------------------- report

METHOD = """Method. Forward time: median of {repeats} timed calls after {warmup} warm-up call(s) ({naive} after 1
for the slow naive references), eval mode, no_grad, one operator at a time. Operators run C -> C at stride 1; CondConv E=4, DyConv K=4,
involution K=7, G=C/16, reduction 4 (RedNet), Bi-volution = depth-wise 3x3 static branch + SAKG
involution (bivol_resnet50's setting). The generators' last conv gets small random weights, so
kernels vary by position. Naive references (tests/_naive.py) use the same modules' parameters and kernel
generators: CondConv/DyConv = Python loop, one conv per example with its own mixed kernel;
involution/Bi-volution = aggregation through F.unfold (the official RedNet form).

Memory: peak bytes allocated during one forward above what was allocated before it (output
included; input and parameters not). `infer` = under no_grad; `train` = grad enabled, so the
autograd graph's saved tensors are alive at the end of the forward. {memory_method}
Ratios "fast/naive" compare an operator with its naive reference (< 1 = the fast one is better);
"/ static" compares with the static 3x3 conv of the same shape; "peak in activations" divides the
peak by the size of one (B, C, H, W) activation tensor. On the CPU the static conv's peak holds,
besides its output, about one weight-sized buffer per call (the sizes match a copy of the weight
in oneDNN's blocked layout): negligible at 56x56, it dominates at the small late stages (e.g.
--quick C=128@4x4: weight 0.56 MiB, output 0.02 MiB), which makes "/ static" flattering there.
CondConv/DyConv likewise hold B mixed kernels. Target: Involution2d and
Bivolution2d <= {target}x the static conv in both modes.

Models: one forward of each model per round, rounds interleaved so that background load hits all
models alike; median over {model_repeats} rounds after {model_warmup} warm-up call(s)."""

GENERATOR_METHOD = """The kernel generator's two passes (`robustbench_bivol/models/fused_generator.py`): `separable` =
depth-wise 3x3 + 1x1 reduction (SAKG's spatial context extractor and the generator's first conv),
`ReLU+span` = ReLU + the span 1x1 (with bias); torch = the `nn.Conv2d` modules (oneDNN), fused =
the C++ passes. train = forward + backward of the sum, infer = forward under no_grad; median of
{repeats} after {warmup} warm-up call(s). `used`: whether `fused_generator.pays` fuses that shape in a model
(at most SMALL_SEPARABLE_CHANNELS input channels / SMALL_POINTWISE_MACS multiply-adds per pixel at
any map size, or at most MAX_SEPARABLE_CHANNELS / MAX_POINTWISE_MACS on maps of at least MIN_PIXELS pixels)."""

AGGREGATION_METHOD = """The aggregation alone (`involution_aggregate`'s two implementations): the pure-torch path
(K*K in-place multiply-adds of strided views, `BIVOL_FUSED=0`) and the fused kernel
(`robustbench_bivol/models/fused_involution.py`, the default: C++ on the CPU, Triton on CUDA), on
random inputs and kernels. fwd: no_grad; fwd+bwd: forward and backward to the input and the kernels. Median of
{repeats} calls after {warmup} warm-up call(s). Shapes: the CIFAR models' (K=3; gc = channels per
group: 4 for the wide involution models, 16 for involution_resnet20 / bivol_resnet20, batch 128)
and RedNet-50's stages (K=7, gc=16, batch 32). bf16 accumulates in fp32 in the fused kernels."""

TRAINING_METHOD = """Training throughput: one SGD step (momentum 0.9, cross-entropy, random 32x32 images and labels,
batch 128, train mode) of each model per round, rounds interleaved so that background load hits
all models alike; images/s from the median step time over {rounds} rounds after {warmup} warm-up
step(s) per model. fp32, then bf16 under `torch.autocast` (weights fp32, as the CIFAR study
trains). Target: involution_resnet20 and bivol_resnet20 >= 0.5x resnet20's throughput in both."""

CPU_MEMORY = ("CPU memory is read from the allocator's own events: torch.profiler with "
              "profile_memory=True records every CPU allocation and free (the raw `[memory]` events "
              "with sizes and timestamps); summed in time order they give the live bytes, whose "
              "maximum is the peak. This includes temporaries inside an op (unfold columns, conv "
              "workspaces that go through the PyTorch allocator); oneDNN-internal scratch not "
              "allocated through it would be missed.")
CUDA_MEMORY = ("CUDA memory: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus "
               "memory_allocated before the call (cuDNN workspaces are included, as they go through "
               "the caching allocator).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes and few repeats (smoke test)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                        help="time by the wall clock or, with --threads 1 on the CPU, by the thread's CPU time")
    parser.add_argument("--out", default="", help="also write the Markdown report here")
    parser.add_argument("--skip-models", action="store_true", help="operator tables only (sections 1 and 3)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    if args.clock == "cpu":
        if args.threads != 1 or device.type != "cpu":
            parser.error("--clock cpu needs --threads 1 on the CPU (other threads' time is not counted)")
        global clock
        clock = time.thread_time
    warmup, repeats = (2, 9) if args.quick else (3, 20)
    model_warmup, model_repeats = (1, 7) if args.quick else (1, 5)
    train_warmup, train_rounds = (1, 3) if args.quick else (2, 5)
    agg_warmup, agg_repeats = (1, 2) if args.quick else (1, 3)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        warmup, model_warmup = warmup + 2, model_warmup + 2

    started = dt.datetime.now().isoformat(timespec="seconds")
    t0 = time.perf_counter()
    ops_text, mem_ok = operator_table(device, args.quick, warmup, repeats)
    mem_line = (f"Involution2d / Bivolution2d peak activation memory <= {MEMORY_TARGET}x static 3x3 conv "
                f"(every shape, infer and train): **{'PASS' if mem_ok else 'FAIL'}**")
    print(mem_line + "\n", flush=True)
    models_text, lat_ok = ("", True) if args.skip_models else model_table(device, args.quick, model_warmup,
                                                                          model_repeats)
    agg_text = aggregation_table(device, args.quick, agg_warmup, agg_repeats)
    gen_text = generator_table(args.quick, agg_warmup, agg_repeats) if device.type == "cpu" else ""
    train_text, train_ok = ("", True) if args.skip_models else training_table(device, args.quick, train_warmup,
                                                                               train_rounds)
    elapsed = time.perf_counter() - t0
    desc = describe(device)
    kind = ("**--quick run** (smoke test: batch 2, C/4, spatial /2 for operators; 112x112, batch 1 and 4 "
            "for models; few repeats) — not the full benchmark" if args.quick else
            "Full run (ResNet-50 stage shapes, batch 32; models 224x224, batch 1 and 32; CIFAR training "
            "batch 128)")
    report = [
        "# Operators and models: speed and memory",
        "",
        (f"Generated {started} by `python benchmarks/ops.py {' '.join(sys.argv[1:] if argv is None else argv)}` "
         f"in {elapsed:.0f} s ({args.clock} clock). {kind}."),
        "",
        f"Machine: {desc} (at end).",
        "",
        METHOD.format(repeats=repeats, warmup=warmup, naive=NAIVE_REPEATS, model_repeats=model_repeats,
                      model_warmup=model_warmup,
                      target=MEMORY_TARGET, memory_method=CUDA_MEMORY if device.type == "cuda" else CPU_MEMORY),
        "",
        "## 1. Operators",
        "",
        ops_text,
        "",
        mem_line,
    ]
    if not args.skip_models:
        report += ["", "## 2. Model latency", "", models_text]
    report += ["", "## 3. Involution aggregation: fused kernel vs pure torch", "",
               AGGREGATION_METHOD.format(repeats=agg_repeats, warmup=agg_warmup), "", agg_text]
    if gen_text:
        report += ["", "## 3b. Kernel generator: fused passes vs the torch modules (CPU)", "",
                   GENERATOR_METHOD.format(repeats=agg_repeats, warmup=agg_warmup), "", gen_text]
    if not args.skip_models:
        report += ["", "## 4. CIFAR training throughput", "",
                   TRAINING_METHOD.format(rounds=train_rounds, warmup=train_warmup), "", train_text]
    print(f"Targets: operator memory {'PASS' if mem_ok else 'FAIL'}"
          + ("" if args.skip_models else f", bivol_resnet50 latency {'PASS' if lat_ok else 'FAIL'}"
                                         f", CIFAR training {'PASS' if train_ok else 'FAIL'}"))
    print(f"Machine: {desc}; {elapsed:.0f} s")
    if args.out:
        Path(args.out).write_text("\n".join(report) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

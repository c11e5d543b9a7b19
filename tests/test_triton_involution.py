"""The Triton involution kernels (CUDA) equal the pure-torch aggregation, forward and backward.

Triton decides when a kernel is decorated, i.e. when ``triton_involution`` is imported, whether
``@triton.jit`` compiles for a GPU or runs in its interpreter (``TRITON_INTERPRET=1``: numpy, on
CPU tensors). In a shared pytest process another module may have imported it already, and setting
the variable here would send every kernel decorated later in the process (torch.compile's too) to
the interpreter. So without a GPU, :func:`test_kernels_in_the_triton_interpreter` runs this file
again in a fresh Python with ``TRITON_INTERPRET=1``, where the kernel tests run on CPU tensors
(here they skip); with a GPU they run on CUDA in this process and the interpreter run is skipped.
The interpreter checks the kernels' index arithmetic, masks and accumulation, not timing, GPU
compilation (:func:`test_kernels_compile_for_sm90_without_spills` compiles them for sm_90 here) or
bf16 rounding: it truncates fp32 to bf16 where GPUs round to nearest.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

from robustbench_bivol.models import fused_involution, triton_involution  # noqa: E402
from robustbench_bivol.models.operators import Involution2d, _aggregate_torch  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETED else "cuda"
kernel_test = pytest.mark.skipif(not INTERPRETED and not torch.cuda.is_available(),
                                 reason="no GPU: run in Triton's interpreter by test_kernels_in_the_triton_interpreter")
#: Error bound relative to the largest magnitude: fp32 sums in another order; fp16 and bf16 round
#: the fp32 result once (bf16: one ulp, as the interpreter truncates).
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 2 ** -7}


def _inputs(b: int, c: int, h: int, w: int, gc: int, k: int, stride: int, dtype: torch.dtype = torch.float64,
            layout: str = "contiguous") -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, C, H, W) in ``layout`` (contiguous, channels_last, or a row band of a taller tensor as
    Involution2d's chunks pass) and random kernels for a stride-``stride`` map, both requiring grad."""
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    x = torch.randn(b, c, h + 3 * (layout == "row band"), w, dtype=dtype, device=DEVICE)
    if layout == "row band":
        x = x[:, :, 2:2 + h]
    elif layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    kernels = torch.randn(b, c // gc, k * k, ho, wo, dtype=dtype, device=DEVICE)
    return x.requires_grad_(), kernels.requires_grad_()


def _run(fn: Callable[..., torch.Tensor], x: torch.Tensor, kernels: torch.Tensor,
         *geometry: int) -> tuple[torch.Tensor, ...]:
    """Output and (input, kernel) gradients for one fixed grad_output, rounded to bf16 so that
    every dtype sees the same values."""
    out = fn(x, kernels, *geometry)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return (out, *torch.autograd.grad(out, (x, kernels), grad_out.bfloat16().to(out)))


def _triton(x: torch.Tensor, kernels: torch.Tensor, *geometry: int) -> torch.Tensor:
    return fused_involution.aggregate(x, kernels, *geometry, fused=triton_involution)


@kernel_test
@pytest.mark.parametrize("k,stride,gc,c,layout", [
    (3, 1, 4, 8, "contiguous"),        # two groups
    (3, 2, 16, 16, "channels_last"),   # one group
    (3, 1, 1, 3, "row band"),          # one channel a group
    (3, 2, 20, 40, "contiguous"),      # two channel blocks of a group, the second partial
    (7, 1, 8, 8, "channels_last"),
    (7, 2, 4, 8, "row band"),
])
def test_forward_and_gradients_equal_the_torch_path(k, stride, gc, c, layout):
    x, kernels = _inputs(2, c, 9, 7, gc, k, stride, layout=layout)  # odd, non-square
    geometry = (k, stride, 1, (k - 1) // 2, (k - 1) // 2)
    for got, want in zip(_run(_triton, x, kernels, *geometry), _run(_aggregate_torch, x, kernels, *geometry),
                         strict=True):
        torch.testing.assert_close(got, want)


@kernel_test
@pytest.mark.parametrize("stride,dilation,pad_top,pad_left", [(1, 1, 0, 1), (1, 2, 2, 2), (2, 2, 1, 0)])
def test_dilation_and_asymmetric_padding_equal_the_torch_path(stride, dilation, pad_top, pad_left):
    """Involution2d's row-band calls pad only where the band meets the border; dilation 2 as well."""
    x, kernels = _inputs(1, 8, 7, 10, 4, 3, stride)
    kernels = kernels.detach()[..., :3, :].requires_grad_()  # 3 output rows: the map need not cover x
    geometry = (3, stride, dilation, pad_top, pad_left)
    for got, want in zip(_run(_triton, x, kernels, *geometry), _run(_aggregate_torch, x, kernels, *geometry),
                         strict=True):
        torch.testing.assert_close(got, want)


@kernel_test
@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
def test_low_precision_within_tolerance(dtype):
    """fp32 accumulation (49 taps, 16 channels for the kernel gradient), output in the input dtype,
    against float64 on the same (rounded) inputs."""
    x, kernels = _inputs(1, 16, 9, 9, 16, 7, 2, dtype=dtype)
    x64, k64 = (t.detach().double().requires_grad_() for t in (x, kernels))
    geometry = (7, 2, 1, 3, 3)
    got = _run(_triton, x, kernels, *geometry)
    assert got[0].dtype == dtype
    for g, w in zip(got, _run(_aggregate_torch, x64, k64, *geometry), strict=True):
        scale, tol = w.abs().max(), TOLERANCE[dtype]
        torch.testing.assert_close(g.double() / scale, w / scale, atol=tol, rtol=tol)


@kernel_test
@pytest.mark.parametrize("k,stride", [(3, 1), (7, 2)])
def test_gradcheck_float64(k, stride):
    """fast_mode: a few random directional derivatives, each a handful of interpreted launches."""
    x, kernels = _inputs(1, 4, 5, 6, 4, k, stride)
    geometry = (k, stride, 1, (k - 1) // 2, (k - 1) // 2)
    assert torch.autograd.gradcheck(lambda a, b: _triton(a, b, *geometry), (x, kernels), fast_mode=True)


@kernel_test
def test_chunked_involution_runs_on_the_triton_kernels(monkeypatch):
    """Through the one dispatch (operators._aggregate): Involution2d's eval chunks, checkpointed under grad."""
    monkeypatch.setattr(fused_involution, "backend", lambda device: triton_involution)  # CPU tensors too
    m = Involution2d(8, stride=2, kernel_size=3, group_channels=4).to(DEVICE).eval()
    torch.nn.init.normal_(m.span.weight, std=0.1)
    m.chunk_min_bytes = m.chunk_min_bytes_gpu = 0
    m.chunk_budget = 1.0  # 3 chunks of 2, 2 and 1 output rows
    x = torch.randn(1, 8, 9, 9, device=DEVICE, requires_grad=True)
    results = {}
    for fused in ("1", "0"):
        monkeypatch.setenv("BIVOL_FUSED", fused)
        out = m(x)
        results[fused] = (out, *torch.autograd.grad(out.square().sum(), x))
    for got, want in zip(results["1"], results["0"], strict=True):
        torch.testing.assert_close(got, want)


def _gpu_capability(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int]) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


def test_cuda_dispatches_to_the_triton_kernels(monkeypatch):
    _gpu_capability(monkeypatch, (9, 0))
    assert fused_involution.backend(torch.device("cuda")) is triton_involution
    _gpu_capability(monkeypatch, (6, 1))  # older than Triton supports
    assert fused_involution.backend(torch.device("cuda")) is None
    assert fused_involution.backend(torch.device("meta")) is None
    x = torch.empty(1, 4, 5, 5, device="meta")
    assert not fused_involution.applies(x, torch.empty(1, 1, 9, 5, 5, device="meta"))
    monkeypatch.setenv("BIVOL_FUSED", "1")
    with pytest.raises(RuntimeError, match="no fused involution kernel for meta"):
        fused_involution.applies(x, torch.empty(1, 1, 9, 5, 5, device="meta"))


def test_missing_triton_falls_back_with_one_warning(monkeypatch):
    _gpu_capability(monkeypatch, (9, 0))
    monkeypatch.delattr(sys.modules["robustbench_bivol.models"], "triton_involution")
    monkeypatch.setitem(sys.modules, "robustbench_bivol.models.triton_involution", None)  # import fails
    fused_involution.triton_kernels.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="fused involution kernel unavailable") as caught:
            assert fused_involution.backend(torch.device("cuda")) is None
            assert fused_involution.backend(torch.device("cuda")) is None
        assert len(caught) == 1
        monkeypatch.setenv("BIVOL_FUSED", "1")
        fused_involution.triton_kernels.cache_clear()
        with pytest.raises(RuntimeError, match="BIVOL_FUSED=1 but the fused involution kernel cannot be imported"):
            fused_involution.backend(torch.device("cuda"))
    finally:
        fused_involution.triton_kernels.cache_clear()


@pytest.mark.skipif(INTERPRETED, reason="interpreted kernels do not compile")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("k", [3, 7])
def test_kernels_compile_for_sm90_without_spills(dtype, k, tmp_path):
    """The GPU compiler path, which the interpreter never takes: each kernel lowers to sm_90
    (H100/H200) machine code here, without a GPU, and ptxas keeps it in registers (no local
    memory; the unrolled K=7 loops once spilled kilobytes a thread). Uses triton.compile's 3.x API."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.exists():
        pytest.skip("triton without its NVIDIA backend tools")
    pointer = {torch.float32: "*fp32", torch.bfloat16: "*bf16"}[dtype]
    constants = triton_involution._constants(dtype, k, 2, 1)
    for kernel, tiling in [(triton_involution._forward_kernel, triton_involution._channel_tiles(16, 99)),
                           (triton_involution._grad_input_kernel, triton_involution._channel_tiles(4, 99)),
                           (triton_involution._grad_kernels_kernel, triton_involution._tap_tiles(k * k, 99))]:
        constexprs = {**constants, **{name: v for name, v in tiling.items() if name.startswith("BLOCK_")}}
        signature = {name: "constexpr" if name in constexprs else pointer if name.endswith("_ptr") else "i32"
                     for name in kernel.arg_names}
        source = ASTSource(kernel, signature, {(kernel.arg_names.index(n),): v for n, v in constexprs.items()})
        cubin = tmp_path / f"{kernel.__name__}.cubin"
        cubin.write_bytes(triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm["cubin"])
        usage = subprocess.run([cuobjdump, "-res-usage", cubin], capture_output=True, text=True, check=True).stdout
        assert re.search(r"STACK:0 .*LOCAL:0 ", usage), usage


@pytest.mark.skipif(INTERPRETED or torch.cuda.is_available(), reason="the kernel tests run in this process")
def test_kernels_in_the_triton_interpreter():
    """The kernel tests of this file, run on CPU tensors by Triton's interpreter in a fresh Python."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
               "-k", "not in_the_triton_interpreter and not compile_for_sm90"]  # the tests that need GPU code
    result = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in summary and "skipped" not in summary, summary  # a skipped kernel test would pass unchecked

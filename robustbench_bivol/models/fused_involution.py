"""Fused involution aggregation on the CPU: one C++ pass (OpenMP via torch's thread pool, SIMD).

Why: the pure-torch aggregation (:func:`operators._aggregate_torch`) makes K*K memory-bound passes
over the output (``addcmul_``); the fused kernel (``csrc/involution_cpu.cpp``) reads each input
row band once per channel, accumulates the K*K taps in fp32 (fp64 for double) and writes the
output once; its backward gives the input gradient as a gather (no atomics) and the kernel
gradient as a reduction over each group's channels.

The extension is compiled at first use with ``torch.utils.cpp_extension`` (ninja and a C++
compiler; ``-O3 -march=native``) into a cache folder, ``$BIVOL_EXT_DIR`` or
``$TORCH_EXTENSIONS_DIR/robustbench_bivol`` or ``~/.cache/robustbench_bivol/ext``. The build
name hashes the source, the flags, the compiler, torch's version and the CPU model and flags, so
a cache shared between machines never loads a binary built for another CPU; torch builds under a
file lock, so concurrent processes compile once. ``BIVOL_FUSED`` chooses: ``auto`` (default: the
fused kernel where it applies, else the torch path, with one warning if the build fails), ``0``
(always the torch path), ``1`` (the fused kernel, raising if it cannot be built or applied).
"""
from __future__ import annotations

import functools
import logging
import os
import warnings
from pathlib import Path
from types import ModuleType

import torch

from corruptions import native

SOURCE = Path(__file__).with_name("csrc") / "involution_cpu.cpp"
CFLAGS = ["-O3", "-march=native", "-fopenmp"]
DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def mode() -> str:
    """``BIVOL_FUSED``: ``auto`` | ``0`` | ``1``."""
    value = os.environ.get("BIVOL_FUSED", "auto").strip().lower()
    if value not in ("auto", "0", "1"):
        raise ValueError(f"BIVOL_FUSED must be auto, 0 or 1, got {value!r}")
    return value


def build_name() -> str:
    """Extension name: a hash of everything that makes a binary valid for this machine."""
    cxx = native.compiler()
    return native.build_name("bivol_involution", SOURCE.read_bytes().decode(), " ".join(CFLAGS),
                             native.compiler_version(cxx), torch.__version__)


def _import_cpp_extension() -> ModuleType:
    """``torch.utils.cpp_extension``, without the line its import logs on CUDA builds of torch
    run without CUDA ("No CUDA runtime is found"): this CPU build never needs CUDA."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)
    return cpp_extension


def _build() -> ModuleType:
    cpp_extension = _import_cpp_extension()

    if not cpp_extension.is_ninja_available():  # the pip package's binary is off PATH without an activated venv
        try:
            import ninja
        except ImportError as err:
            raise RuntimeError("ninja is not installed") from err
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    name = build_name()
    folder = native.cache_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(name, [str(SOURCE)], extra_cflags=CFLAGS, extra_ldflags=["-fopenmp"],
                              build_directory=str(folder), verbose=False)


@functools.cache
def extension() -> ModuleType | None:
    """The compiled extension (built on first call, then cached); None if it cannot be built
    (one warning), unless ``BIVOL_FUSED=1``, which raises."""
    try:
        return _build()
    except Exception as err:  # compiler, ninja or headers missing, build error
        if mode() == "1":
            raise RuntimeError(f"BIVOL_FUSED=1 but the fused involution kernel cannot be built: {err}") from err
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        warnings.warn(f"fused involution kernel unavailable ({first_line}); using the pure-torch aggregation",
                      RuntimeWarning, stacklevel=2)
        return None


def applies(x: torch.Tensor, kernels: torch.Tensor) -> bool:
    """Whether the fused kernel serves this call (``BIVOL_FUSED`` and device/dtype permitting)."""
    choice = mode()
    if choice == "0":
        return False
    dtype = torch.result_type(x, kernels)
    supported = x.device.type == "cpu" and kernels.device.type == "cpu" and dtype in DTYPES
    if choice == "1" and not supported:
        raise RuntimeError(f"BIVOL_FUSED=1: no fused involution kernel for {x.device.type} {dtype}")
    return supported and extension() is not None


class _Aggregate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, kernels: torch.Tensor, geometry: tuple[int, int, int, int, int]) -> torch.Tensor:
        ctx.geometry = geometry
        ctx.save_for_backward(x, kernels)
        return extension().forward(x, kernels, *geometry)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, kernels = ctx.saved_tensors
        grad_x, grad_k = extension().backward(grad_out.contiguous(), x, kernels, *ctx.geometry,
                                              ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return grad_x, grad_k, None


def aggregate(x: torch.Tensor, kernels: torch.Tensor, kernel_size: int, stride: int, dilation: int,
              pad_top: int, pad_left: int) -> torch.Tensor:
    """The fused aggregation (see :func:`operators.involution_aggregate`) of an unpadded ``x``.

    Input row ``s*i + d*u - pad_top`` (column likewise), zero outside ``x``; the output takes the
    kernel map's size. Inputs are promoted to their common dtype (autocast may mix fp32 and bf16).
    """
    dtype = torch.result_type(x, kernels)
    x, kernels = x.to(dtype), kernels.to(dtype).contiguous()
    if x.stride(-1) != 1:  # channels_last or column-strided: the kernel walks rows
        x = x.contiguous()
    return _Aggregate.apply(x, kernels, (kernel_size, stride, dilation, pad_top, pad_left))

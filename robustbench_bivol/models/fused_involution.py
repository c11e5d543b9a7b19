"""Fused involution aggregation: one C++ pass on the CPU, Triton kernels on CUDA; forward and backward.

This module also builds and dispatches the C++ extension for :mod:`.fused_generator` (the
kernel generator's fused CPU passes) and :mod:`.fused_training` (the training-mode nodes), which
live in the same extension.

Why: the pure-torch aggregation (:func:`operators._aggregate_torch`) makes K*K memory-bound passes
over the output (``addcmul_``); the fused kernel (``csrc/involution_cpu.cpp``; on CUDA
:mod:`.triton_involution`) reads each input row band once per channel, accumulates the K*K taps
in fp32 (fp64 for double) and writes the output once; its backward gives the input gradient as a
gather (no atomics) and the kernel gradient as a reduction over each group's channels. In bf16 at
stride 1 on CPUs with AVX512-BF16 it multiplies two taps per instruction (``vdpbf16ps``, still
accumulating in fp32; ``extension().bf16_dot()``). Both backends share this module's dispatch
(:func:`applies`), dtype promotion and autograd Function.

The CPU extension is compiled at first use with ``torch.utils.cpp_extension`` (ninja and a C++
compiler; ``-O3 -march=native``) into a cache folder, ``$BIVOL_EXT_DIR`` or
``$TORCH_EXTENSIONS_DIR/robustbench_bivol`` or ``~/.cache/robustbench_bivol/ext``. The build
name hashes the source, the flags, the compiler, torch's version and the CPU model and flags, so
a cache shared between machines never loads a binary built for another CPU; torch builds under a
file lock, so concurrent processes compile once. The Triton kernels are imported at the first
CUDA call (Triton compiles and caches them per shape class). ``BIVOL_FUSED`` chooses: ``auto``
(default: the fused kernel where it applies, else the torch path, with one warning if the
extension cannot be built or triton imported), ``0`` (always the torch path), ``1`` (the fused
kernel, raising if it cannot be built or applied).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Protocol

import torch

from corruptions import native

CSRC = Path(__file__).with_name("csrc")
#: The extension's translation units (the first holds the bindings) and the headers they share.
SOURCES = (CSRC / "bindings.cpp", CSRC / "involution_cpu.cpp", CSRC / "kernel_generator_cpu.cpp",
           CSRC / "batch_norm_fold.cpp")
HEADERS = (CSRC / "common.h", CSRC / "dot_bf16.h", CSRC / "involution_cpu.h", CSRC / "kernel_generator_cpu.h",
           CSRC / "batch_norm_fold.h")
CFLAGS = ["-O3", "-march=native", "-fopenmp"]
#: The dtypes the fused kernels of each device type serve.
DTYPES = {"cpu": (torch.float32, torch.float64, torch.bfloat16),
          "cuda": (torch.float32, torch.float64, torch.bfloat16, torch.float16)}
Geometry = tuple[int, int, int, int, int]  # kernel_size, stride, dilation, pad_top, pad_left


class Backend(Protocol):
    """The fused kernels' interface: the C++ extension's, which :mod:`.triton_involution` mirrors."""

    def forward(self, x: torch.Tensor, kernels: torch.Tensor, kernel_size: int, stride: int, dilation: int,
                pad_top: int, pad_left: int) -> torch.Tensor: ...

    def backward(self, grad_out: torch.Tensor, x: torch.Tensor, kernels: torch.Tensor, kernel_size: int,
                 stride: int, dilation: int, pad_top: int, pad_left: int, need_input: bool,
                 need_kernels: bool) -> Sequence[torch.Tensor | None]: ...


_TORCH_PATH: contextvars.ContextVar[bool] = contextvars.ContextVar("bivol_torch_path", default=False)


@contextlib.contextmanager
def torch_path() -> Iterator[None]:
    """Run the pure-torch modules inside, whatever ``BIVOL_FUSED`` says: so that FlopCounterMode
    and module hooks see every convolution of the kernel generators (:mod:`.profile`)."""
    token = _TORCH_PATH.set(True)
    try:
        yield
    finally:
        _TORCH_PATH.reset(token)


def mode() -> str:
    """``BIVOL_FUSED``: ``auto`` | ``0`` | ``1`` (``0`` inside :func:`torch_path`)."""
    if _TORCH_PATH.get():
        return "0"
    value = os.environ.get("BIVOL_FUSED", "auto").strip().lower()
    if value not in ("auto", "0", "1"):
        raise ValueError(f"BIVOL_FUSED must be auto, 0 or 1, got {value!r}")
    return value


def build_name() -> str:
    """Extension name: a hash of everything that makes a binary valid for this machine."""
    cxx = native.compiler()
    code = "".join(path.read_text() for path in SOURCES + HEADERS)
    return native.build_name("bivol_involution", code, " ".join(CFLAGS), native.compiler_version(cxx),
                             torch.__version__)


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
    return cpp_extension.load(name, [str(path) for path in SOURCES], extra_cflags=CFLAGS, extra_ldflags=["-fopenmp"],
                              build_directory=str(folder), verbose=False)


@functools.cache
def extension() -> ModuleType | None:
    """The compiled extension (built on first call, then cached); None if it cannot be built
    (one warning), unless ``BIVOL_FUSED=1``, which raises."""
    try:
        return _build()
    except Exception as err:  # compiler, ninja or headers missing, build error
        return _unavailable("built", err)


@functools.cache
def triton_kernels() -> ModuleType | None:
    """The Triton kernels (:mod:`.triton_involution`, imported on first call: triton is only needed
    on CUDA); None if triton cannot be imported (one warning), unless ``BIVOL_FUSED=1``, which raises."""
    try:
        from . import triton_involution
    except Exception as err:  # triton missing (CPU-only and Windows wheels of torch) or broken
        return _unavailable("imported", err)
    return triton_involution


def _unavailable(failed: str, err: Exception) -> None:
    if mode() == "1":
        raise RuntimeError(f"BIVOL_FUSED=1 but the fused involution kernel cannot be {failed}: {err}") from err
    first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    warnings.warn(f"fused involution kernel unavailable ({first_line}); using the pure-torch aggregation",
                  RuntimeWarning, stacklevel=3)


def backend(device: torch.device) -> Backend | None:
    """The fused kernels for ``device``: the C++ extension on the CPU, Triton's on CUDA GPUs of
    compute capability 7.0 or later (Triton's oldest, as torch.compile checks); None for other
    devices or where they cannot be loaded."""
    if device.type == "cpu":
        return extension()
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (7, 0):
        return triton_kernels()
    return None


def applies(x: torch.Tensor, kernels: torch.Tensor) -> bool:
    """Whether a fused kernel serves this call (``BIVOL_FUSED`` and device/dtype permitting)."""
    choice = mode()
    if choice == "0":
        return False
    dtype = torch.result_type(x, kernels)
    serves = (x.device == kernels.device and dtype in DTYPES.get(x.device.type, ())
              and backend(x.device) is not None)
    if choice == "1" and not serves:
        raise RuntimeError(f"BIVOL_FUSED=1: no fused involution kernel for {x.device.type} {dtype}")
    return serves


class _Aggregate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, kernels: torch.Tensor, fused: Backend, geometry: Geometry) -> torch.Tensor:
        ctx.fused, ctx.geometry = fused, geometry
        ctx.save_for_backward(x, kernels)
        return fused.forward(x, kernels, *geometry)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        x, kernels = ctx.saved_tensors
        grad_x, grad_k = ctx.fused.backward(grad_out.contiguous(), x, kernels, *ctx.geometry,
                                            ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return grad_x, grad_k, None, None


def aggregate(x: torch.Tensor, kernels: torch.Tensor, kernel_size: int, stride: int, dilation: int,
              pad_top: int, pad_left: int, fused: Backend | None = None) -> torch.Tensor:
    """The fused aggregation (see :func:`operators.involution_aggregate`) of an unpadded ``x``.

    Input row ``s*i + d*u - pad_top`` (column likewise), zero outside ``x``; the output takes the
    kernel map's size. Inputs are promoted to their common dtype (autocast may mix fp32 and bf16).
    ``fused``: the kernels to run, by default those of x's device (:func:`backend`); the tests pass
    :mod:`.triton_involution` with CPU tensors, which Triton's interpreter runs.
    """
    dtype = torch.result_type(x, kernels)
    x, kernels = x.to(dtype), kernels.to(dtype).contiguous()
    if x.stride(-1) != 1:  # channels_last or column-strided: the kernels walk rows
        x = x.contiguous()
    fused = backend(x.device) if fused is None else fused
    return _Aggregate.apply(x, kernels, fused, (kernel_size, stride, dilation, pad_top, pad_left))

"""Fused involution / SAKG kernel generator on the CPU: two pixel-local C++ passes, forward and backward.

Why: the generator's convolutions have few channels (16 -> 4 -> 9 in a CIFAR ResNet's first
stage), where oneDNN spends its time on layout and per-call overhead rather than arithmetic.
Training bivol_resnet20 (bf16, one thread, batch 128) ran at 0.37x resnet20; with the generator
free it would run at 0.58x, with the aggregation free at 0.44x: the generator was the larger
cost. :func:`separable` computes SAKG's depth-wise 3x3 and the 1x1 reduction (or the reduction
alone, involution's generator) in one pass; :func:`relu_pointwise` the ReLU and the span 1x1.
The batch norm between them stays torch's (it needs the whole batch's statistics in training).

Both run where :func:`applies`: on the CPU, for float32/float64/bfloat16, with the C++ extension
that :mod:`.fused_involution` builds (the same ``BIVOL_FUSED`` switch; ``0`` selects the torch
modules). Elsewhere the modules themselves run: there is no GPU version, since on a GPU these
convolutions are launch-bound rather than layout-bound. Weights stay in float32 (float64 for
double inputs) inside the kernels, activations keep their dtype, and under CPU autocast a float32
input is cast to the autocast dtype, as autocast does for the convolutions it replaces.
"""
from __future__ import annotations

import torch
from torch import nn

from . import fused_involution

DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the fused passes compute ``x`` in: the autocast dtype for a float32 x under CPU autocast."""
    if x.dtype == torch.float32 and torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return x.dtype


#: Where the fused passes beat oneDNN (measured on a 2-core Intel Xeon with AVX-512/AMX and on a
#: 2-core AMD EPYC, one thread, fp32 and bf16, training and inference; `benchmarks/RESULTS-ops*.md`,
#: section 3b). Few channels win at every map size: the CIFAR models' 16 -> 4 at 32x32, 32 -> 8 at
#: 16x16 (batch 128, bf16, separable forward + backward 7.7 vs 13.4 ms oneDNN; 4.6 vs 6.9 ms).
#: Up to 64 input channels win on maps of at least MIN_PIXELS pixels (RedNet-50's 64@56x56: 57 vs
#: 78 ms fp32, a tie in bf16); above that oneDNN's blocked GEMMs win (256 -> 64 at 14x14: 43 vs 13 ms).
MIN_PIXELS = 32 * 32
#: Input channels of :func:`separable` fused at any map size / on maps of at least MIN_PIXELS pixels.
SMALL_SEPARABLE_CHANNELS, MAX_SEPARABLE_CHANNELS = 32, 64
#: Multiply-adds per pixel (outputs x inputs) of :func:`relu_pointwise` fused at any map size (16 -> 36
#: at 8x8: 1.1 vs 1.8 ms fp32) / on maps of at least MIN_PIXELS pixels (RedNet-50's 16 -> 196 at 56x56,
#: batch 32: 105 vs 204 ms fp32; 64 -> 144 at 16x16 is a tie, 32 -> 288 at 8x8 a loss).
SMALL_POINTWISE_MACS, MAX_POINTWISE_MACS = 1024, 4096


def pays(pixels: int, work: int, small: int, limit: int) -> bool:
    """Whether fusing a pass pays: ``work`` per pixel (channels or multiply-adds) at most ``small``,
    or at most ``limit`` on maps of at least :data:`MIN_PIXELS` pixels."""
    return work <= small or (pixels >= MIN_PIXELS and work <= limit)


def applies(x: torch.Tensor) -> bool:
    """Whether the fused generator can serve ``x`` (CPU, a supported dtype, ``BIVOL_FUSED`` not
    ``0``, the extension built; ``BIVOL_FUSED=1`` raises if it cannot be built)."""
    return (fused_involution.mode() != "0" and x.device.type == "cpu" and compute_dtype(x) in DTYPES
            and fused_involution.extension() is not None)


def _pixels(x: torch.Tensor, pool: int) -> int:
    """Pixels of x's planes after an s x s pool (ceil mode)."""
    return -(-x.shape[-2] // pool) * -(-x.shape[-1] // pool)


def separable_pays(x: torch.Tensor, pool: int = 1) -> bool:
    """Whether :func:`separable` fuses its pass for ``x``, pooled ``pool`` x ``pool`` first
    (:func:`applies` and :func:`pays`)."""
    return pays(_pixels(x, pool), x.shape[1], SMALL_SEPARABLE_CHANNELS, MAX_SEPARABLE_CHANNELS) and applies(x)


def pointwise_pays(n: torch.Tensor, in_channels: int, out_channels: int, pool: int = 1) -> bool:
    """Whether :func:`relu_pointwise` fuses its pass for ``n``'s planes, pooled ``pool`` x ``pool``
    (:func:`applies` and :func:`pays`)."""
    return (pays(_pixels(n, pool), in_channels * out_channels, SMALL_POINTWISE_MACS, MAX_POINTWISE_MACS)
            and applies(n))


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the C++ passes accumulate ``dtype`` in, and take their weights in."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class _Separable(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, depthwise: torch.Tensor | None, pointwise: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, depthwise, pointwise)
        return fused_involution.extension().separable_forward(x, depthwise, pointwise, False, False)[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, depthwise, pointwise = ctx.saved_tensors
        gx, gd, gp = fused_involution.extension().separable_backward(
            grad.contiguous(), x, depthwise, pointwise, ctx.needs_input_grad[0], None, None, None)
        return gx, gd if ctx.needs_input_grad[1] else None, gp if ctx.needs_input_grad[2] else None


class _ReluPointwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, n: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(n, weight)
        return fused_involution.extension().relu_pointwise_forward(n, weight, bias, None, None)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        n, weight = ctx.saved_tensors
        gn, gw, gb, _ = fused_involution.extension().relu_pointwise_backward(
            grad.contiguous(), n, weight, ctx.needs_input_grad[0], None, None)
        return gn, gw if ctx.needs_input_grad[1] else None, gb if ctx.needs_input_grad[2] else None


class _AvgPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, stride: int) -> torch.Tensor:
        ctx.stride, ctx.size = stride, x.shape[-2:]
        return fused_involution.extension().avg_pool_forward(x, stride)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return fused_involution.extension().avg_pool_backward(grad.contiguous(), ctx.stride, *ctx.size, None), None


def avg_pool(x: torch.Tensor, pool: nn.Module) -> torch.Tensor:
    """``pool(x)`` for the strided generator's ``nn.AvgPool2d(s, s, ceil_mode=True)`` (or
    ``nn.Identity``): the C++ pass where :func:`applies` (torch's CPU average pool and its backward
    take 3.4 and 3.6 ms on 16@32x32, batch 128, one thread, fp32; the pass 1.2 and 1.4 ms; bf16
    3.9 and 5.3 against 1.3 and 1.3 ms)."""
    if not (isinstance(pool, nn.AvgPool2d) and pool.kernel_size == pool.stride and pool.ceil_mode
            and pool.padding == 0 and applies(x)):
        return pool(x)
    return _AvgPool.apply(x.contiguous(), pool.stride)  # in x's dtype, as the module (autocast leaves pools alone)


def separable(x: torch.Tensor, depthwise: nn.Conv2d | None, pointwise: nn.Conv2d) -> torch.Tensor:
    """``pointwise(depthwise(x))`` (``pointwise(x)`` without ``depthwise``), fused where
    :func:`applies` and the shape is one where fusing pays (:func:`pays`).

    ``depthwise``: 3x3, stride 1, padding 1, one group per channel, no bias (SAKG's spatial
    context extractor); ``pointwise``: 1x1, no bias (the generator's reduction).
    """
    if not separable_pays(x):
        return pointwise(x if depthwise is None else depthwise(x))
    dtype = compute_dtype(x)
    opmath = opmath_dtype(dtype)
    wd = None if depthwise is None else depthwise.weight.to(opmath).reshape(x.shape[1], 9)
    wp = pointwise.weight.to(opmath).reshape(pointwise.out_channels, x.shape[1])
    return _Separable.apply(x.to(dtype).contiguous(), wd, wp)


def relu_pointwise(n: torch.Tensor, relu: nn.Module, pointwise: nn.Conv2d) -> torch.Tensor:
    """``pointwise(relu(n))`` (``pointwise``: 1x1 with bias, the generator's span), fused where
    :func:`applies` and it pays (:func:`pays`); fused, ``n`` is
    left unchanged and ``relu`` (an ``nn.ReLU``) is not called."""
    if not pointwise_pays(n, n.shape[1], pointwise.out_channels):
        return pointwise(relu(n))
    dtype = compute_dtype(n)
    opmath = opmath_dtype(dtype)
    weight = pointwise.weight.to(opmath).reshape(pointwise.out_channels, n.shape[1])
    return _ReluPointwise.apply(n.to(dtype).contiguous(), weight, pointwise.bias.to(opmath))

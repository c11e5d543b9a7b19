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


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if x.dtype == torch.float32 and torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return x.dtype


#: Where the fused passes beat oneDNN (measured on the 2-core AMD EPYC CPU, one thread, fp32 and
#: bf16, training and inference; `benchmarks/RESULTS-ops.md`, section 3b): maps of at least 32x32
#: pixels. There oneDNN's few-channel 1x1 and depth-wise convolutions are slow (16 -> 4 channels
#: at 32x32, batch 128, bf16: separable forward + backward 7.0 ms fused, 9.6 ms oneDNN); on
#: smaller maps with more channels its blocked GEMMs win (256 -> 64 at 14x14: 32.6 vs 7.9 ms).
MIN_PIXELS = 32 * 32
#: ... and at most this many input channels for :func:`separable` (64 at 56x56: a tie) ...
MAX_SEPARABLE_CHANNELS = 64
#: ... and at most this many multiply-adds per pixel (outputs x inputs) for :func:`relu_pointwise`,
#: the largest measured: RedNet-50's first stage, 16 -> 196 at 56x56 (batch 32, forward + backward
#: 107 vs 222 ms fp32, a tie in bf16: 57 vs 52); 8 -> 72 at 32x32 (wide CIFAR models): 12.4 vs
#: 17.4 ms bf16, 14.3 vs 26.7 fp32.
MAX_POINTWISE_MACS = 4096


def applies(x: torch.Tensor) -> bool:
    """Whether the fused generator can serve ``x`` (CPU, a supported dtype, ``BIVOL_FUSED`` not
    ``0``, the extension built; ``BIVOL_FUSED=1`` raises if it cannot be built)."""
    return (fused_involution.mode() != "0" and x.device.type == "cpu" and _compute_dtype(x) in DTYPES
            and fused_involution.extension() is not None)


def _pays(x: torch.Tensor, macs_per_pixel: int, limit: int) -> bool:
    return x.shape[-2] * x.shape[-1] >= MIN_PIXELS and macs_per_pixel <= limit and applies(x)


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class _Separable(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, depthwise: torch.Tensor | None, pointwise: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, depthwise, pointwise)
        return fused_involution.extension().separable_forward(x, depthwise, pointwise)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, depthwise, pointwise = ctx.saved_tensors
        gx, gd, gp = fused_involution.extension().separable_backward(
            grad.contiguous(), x, depthwise, pointwise, ctx.needs_input_grad[0])
        return gx, gd if ctx.needs_input_grad[1] else None, gp if ctx.needs_input_grad[2] else None


class _ReluPointwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, n: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(n, weight)
        return fused_involution.extension().relu_pointwise_forward(n, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        n, weight = ctx.saved_tensors
        gn, gw, gb = fused_involution.extension().relu_pointwise_backward(
            grad.contiguous(), n, weight, ctx.needs_input_grad[0])
        return gn, gw if ctx.needs_input_grad[1] else None, gb if ctx.needs_input_grad[2] else None


def separable(x: torch.Tensor, depthwise: nn.Conv2d | None, pointwise: nn.Conv2d) -> torch.Tensor:
    """``pointwise(depthwise(x))`` (``pointwise(x)`` without ``depthwise``), fused where
    :func:`applies` and the shape is one where fusing pays (:data:`MIN_PIXELS`,
    :data:`MAX_SEPARABLE_CHANNELS`).

    ``depthwise``: 3x3, stride 1, padding 1, one group per channel, no bias (SAKG's spatial
    context extractor); ``pointwise``: 1x1, no bias (the generator's reduction).
    """
    if not _pays(x, x.shape[1], MAX_SEPARABLE_CHANNELS):
        return pointwise(x if depthwise is None else depthwise(x))
    dtype = _compute_dtype(x)
    opmath = _opmath(dtype)
    wd = None if depthwise is None else depthwise.weight.to(opmath).reshape(x.shape[1], 9)
    wp = pointwise.weight.to(opmath).reshape(pointwise.out_channels, x.shape[1])
    return _Separable.apply(x.to(dtype).contiguous(), wd, wp)


def relu_pointwise(n: torch.Tensor, relu: nn.Module, pointwise: nn.Conv2d) -> torch.Tensor:
    """``pointwise(relu(n))`` (``pointwise``: 1x1 with bias, the generator's span), fused where
    :func:`applies` and it pays (:data:`MIN_PIXELS`, :data:`MAX_POINTWISE_MACS`); fused, ``n`` is
    left unchanged and ``relu`` (an ``nn.ReLU``) is not called."""
    if not _pays(n, n.shape[1] * pointwise.out_channels, MAX_POINTWISE_MACS):
        return pointwise(relu(n))
    dtype = _compute_dtype(n)
    opmath = _opmath(dtype)
    weight = pointwise.weight.to(opmath).reshape(pointwise.out_channels, n.shape[1])
    return _ReluPointwise.apply(n.to(dtype).contiguous(), weight, pointwise.bias.to(opmath))

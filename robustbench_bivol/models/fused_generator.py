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
import torch.nn.functional as F
from torch import nn

from . import fused_involution

DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
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
    return (fused_involution.mode() != "0" and x.device.type == "cpu" and _compute_dtype(x) in DTYPES
            and fused_involution.extension() is not None)


def _pays(x: torch.Tensor, work: int, small: int, limit: int) -> bool:
    return pays(x.shape[-2] * x.shape[-1], work, small, limit) and applies(x)


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class _Separable(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, depthwise: torch.Tensor | None, pointwise: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, depthwise, pointwise)
        return fused_involution.extension().separable_forward(x, depthwise, pointwise, False)[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, depthwise, pointwise = ctx.saved_tensors
        gx, gd, gp = fused_involution.extension().separable_backward(
            grad.contiguous(), x, depthwise, pointwise, ctx.needs_input_grad[0], None, None)
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
    :func:`applies` and the shape is one where fusing pays (:func:`pays`).

    ``depthwise``: 3x3, stride 1, padding 1, one group per channel, no bias (SAKG's spatial
    context extractor); ``pointwise``: 1x1, no bias (the generator's reduction).
    """
    if not _pays(x, x.shape[1], SMALL_SEPARABLE_CHANNELS, MAX_SEPARABLE_CHANNELS):
        return pointwise(x if depthwise is None else depthwise(x))
    dtype = _compute_dtype(x)
    opmath = _opmath(dtype)
    wd = None if depthwise is None else depthwise.weight.to(opmath).reshape(x.shape[1], 9)
    wp = pointwise.weight.to(opmath).reshape(pointwise.out_channels, x.shape[1])
    return _Separable.apply(x.to(dtype).contiguous(), wd, wp)


def relu_pointwise(n: torch.Tensor, relu: nn.Module, pointwise: nn.Conv2d) -> torch.Tensor:
    """``pointwise(relu(n))`` (``pointwise``: 1x1 with bias, the generator's span), fused where
    :func:`applies` and it pays (:func:`pays`); fused, ``n`` is
    left unchanged and ``relu`` (an ``nn.ReLU``) is not called."""
    if not _pays(n, n.shape[1] * pointwise.out_channels, SMALL_POINTWISE_MACS, MAX_POINTWISE_MACS):
        return pointwise(relu(n))
    dtype = _compute_dtype(n)
    opmath = _opmath(dtype)
    weight = pointwise.weight.to(opmath).reshape(pointwise.out_channels, n.shape[1])
    return _ReluPointwise.apply(n.to(dtype).contiguous(), weight, pointwise.bias.to(opmath))


def _branch_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The kernel generator's parameters in :class:`_GenerateAggregate`'s input order."""
    convs = [module.spatial, module.reduce]
    linear = [] if module.channel is None else [module.channel.weight, module.channel.bias]
    return ([m.weight for m in convs if m is not None] + linear
            + [module.bn.weight, module.bn.bias, module.span.weight, module.span.bias])


class _GenerateAggregate(torch.autograd.Function):
    """A stride-1 involution's kernel generation and aggregation in training, one autograd node.

    Why: as separate nodes, x's gradient arrives in three pieces (the aggregation's, the
    generator's and, with SAKG's channel term, the global average pool's) that autograd adds with
    two activation-sized passes, and the pool reads x once more. Here the separable pass also sums
    x's planes, and its backward adds the aggregation's gradient and the pool's (per plane) while
    it writes x's: one gradient, no extra pass. The ReLU + span and the aggregation are the fused
    C++ passes; the middle of the generator (channel term, batch norm on batch statistics, which
    updates the running statistics once, in forward) stays torch's: backward recomputes it from
    the saved reduced features (a quarter of an activation; autocast as in forward) and
    differentiates it with autograd.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, module: nn.Module, *params: nn.Parameter) -> torch.Tensor:
        ext = fused_involution.extension()
        opmath = _opmath(x.dtype)
        x = x.contiguous()
        b, c, h, w = x.shape
        wd = None if module.spatial is None else module.spatial.weight.detach().to(opmath).reshape(c, 9)
        wr = module.reduce.weight.detach().to(opmath).reshape(-1, c)
        ws = module.span.weight.detach().to(opmath).reshape(module.span.out_channels, -1)
        r, sums = ext.separable_forward(x, wd, wr, module.channel is not None)
        mean = None if sums is None else sums / (h * w)
        n = module.bn(_channel_term(module, r, mean)).to(x.dtype).contiguous()  # updates the running statistics
        kernels = ext.relu_pointwise_forward(n, ws, module.span.bias.detach().to(opmath))
        kernels = kernels.view(b, module.groups, module.kernel_size ** 2, h, w)
        pad = (module.kernel_size - 1) // 2
        ctx.module, ctx.geometry = module, (module.kernel_size, 1, 1, pad, pad)
        ctx.autocast = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
        ctx.shapes = [p.shape for p in params]
        ctx.save_for_backward(x, wd, wr, ws, r, mean, n, kernels)
        return ext.forward(x, kernels, *ctx.geometry)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        ext = fused_involution.extension()
        x, wd, wr, ws, r, mean, n, kernels = ctx.saved_tensors
        module, need_x = ctx.module, ctx.needs_input_grad[0]
        gx_agg, gk = ext.backward(grad.to(x.dtype).contiguous(), x, kernels, *ctx.geometry, need_x, True)
        gn, gws, gbs = ext.relu_pointwise_backward(gk.view(n.shape[0], -1, *n.shape[2:]), n, ws, True)
        leaves = [r.detach().requires_grad_()] + ([] if mean is None else [mean.detach().requires_grad_()])
        middle = ([] if mean is None else [module.channel.weight, module.channel.bias]) + [module.bn.weight, module.bn.bias]
        with torch.enable_grad(), torch.autocast("cpu", dtype=ctx.autocast[1], enabled=ctx.autocast[0]):
            bn = module.bn
            recomputed = F.batch_norm(_channel_term(module, leaves[0], leaves[-1] if mean is not None else None), None, None,
                                      bn.weight, bn.bias, True, 0.0, bn.eps)  # batch statistics, as in forward
        grads = torch.autograd.grad(recomputed, leaves + middle, gn.to(recomputed.dtype))
        gpool = None if mean is None else (grads[1] / (x.shape[2] * x.shape[3])).to(wr.dtype).contiguous()
        gx, gwd, gwr = ext.separable_backward(grads[0].to(x.dtype).contiguous(), x, wd, wr, need_x, gx_agg, gpool)
        flat = ([] if wd is None else [gwd]) + [gwr] + list(grads[len(leaves):]) + [gws, gbs]
        return (gx if need_x else None, None,
                *(g.reshape(shape) if need else None
                  for g, shape, need in zip(flat, ctx.shapes, ctx.needs_input_grad[2:], strict=True)))


def _channel_term(module: nn.Module, r: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor:
    """SAKG's channel information added to the reduced features (``r`` itself without it)."""
    return r if mean is None else r + module.channel(mean)[:, :, None, None]


def branch_applies(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`generate_and_aggregate` serves this call of an ``Involution2d`` (training-mode
    BN, grad enabled, stride 1, odd K, the fused passes applying and paying at this shape)."""
    return (module.bn.training and torch.is_grad_enabled() and module.stride == 1 and module.kernel_size % 2 == 1
            and all(p.requires_grad for p in _branch_parameters(module))
            and _pays(x, x.shape[1], SMALL_SEPARABLE_CHANNELS, MAX_SEPARABLE_CHANNELS)
            and pays(x.shape[-2] * x.shape[-1], module.reduce.out_channels * module.span.out_channels,
                     SMALL_POINTWISE_MACS, MAX_POINTWISE_MACS)
            and x.dtype == _compute_dtype(x))  # under autocast a float32 x aggregates in float32: not here


def generate_and_aggregate(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``involution_aggregate(x, module.generate_kernels(x), K)`` of an ``Involution2d`` as one fused
    autograd node (see :class:`_GenerateAggregate`); call where :func:`branch_applies`."""
    return _GenerateAggregate.apply(x, module, *_branch_parameters(module))

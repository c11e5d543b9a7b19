"""Training-mode fused autograd nodes on the CPU: an involution's kernel generation and aggregation,
and a whole Bi-volution (static conv, dynamic branch, the dynamic branch's BN and the sum).

Why: as separate autograd nodes, a stride-1 involution's input gradient arrives in three pieces
(the aggregation's, the generator's and, with SAKG's channel term, the global average pool's),
and a Bi-volution adds the static conv's as a fourth; autograd adds them with one
activation-sized pass each, and the pool reads x once more. In one node they are written once:
the separable pass also sums x's planes, and each backward pass adds its gradient to the one
before it while it writes (the static conv's, then the aggregation's, then the generator's with
the pool's). A Bi-volution's forward also saves the dynamic BN's statistics pass, its normalise
pass and the sum's pass: the aggregation sums its outputs and their squares per channel, and one
pass adds the normalised result to the static conv's output.

Strided layers (a ResNet stage's first block) add pieces: the generator reads x average-pooled,
and a Bi-volution that changes the channel count maps the aggregation through a 1x1 (``proj``)
before its BN. As separate nodes, x's gradient there came in four pieces at the input resolution
plus the shortcut's; in the node the pool's backward adds the generator's gradient into the
others as it writes (bivol_resnet20 training, one thread, interleaved A/B: -27 ms per step in
bf16 (16 pairs), -11 ms in fp32 (10 pairs); involution_resnet20 bf16 -8 ms).

The generator's BN (batch statistics, between the separable pass and the ReLU + span pass) is
folded into those passes: they sum what its statistics and its backward need and apply its affine
map as they load, with the channel term's Linear and the BN's own arithmetic done per (example,
channel) in float64 (see :func:`_generate`). That saves its normalise pass, the channel term's add
and, in backward, the recomputed forward and both BN passes (bivol_resnet20 training, one thread,
interleaved A/B: about 30 of ~780 ms per step in fp32, about 12 of ~540 in bf16). That arithmetic,
and the dynamic BN's statistics, run in the extension (``csrc/batch_norm_fold.cpp``): as ~25 small
torch operations per layer and direction from Python they cost 9 ms of the bf16 step, 12 of fp32.

What stays torch's: the convolutions of the static branch and ``proj`` (oneDNN, forward and
``convolution_backward``) and the dynamic BN's backward (``native_batch_norm_backward``). Backward
can run more than once (``retain_graph``). Results equal the separate nodes' up to float rounding
(tests/test_fused_generator.py, tests/test_fused_training.py).

These nodes serve where :func:`involution_applies` / :func:`bivolution_applies` say: training-mode
BN under grad, odd K, a stride whose pool tiles x (the pooled planes' means are then x's, which
the channel term takes), every parameter trainable, and the fused generator passes applying and
paying at the generator's shape (:mod:`.fused_generator`, ``BIVOL_FUSED``; for
a Bi-volution, which saves more passes, up to the larger thresholds at any map size).
"""
from __future__ import annotations

import torch
from torch import nn

from . import fused_generator, fused_involution


def _generator_parameters(module: nn.Module) -> list[nn.Parameter]:
    """An ``Involution2d``'s kernel-generator parameters, in the order the nodes take them."""
    convs = [module.spatial, module.reduce]
    linear = [] if module.channel is None else [module.channel.weight, module.channel.bias]
    return ([m.weight for m in convs if m is not None] + linear
            + [module.bn.weight, module.bn.bias, module.span.weight, module.span.bias])


def _bn_args(bn: nn.BatchNorm2d) -> tuple:
    """A BN's tensors and settings for the extension's batch-norm arithmetic (``csrc/batch_norm_fold.h``),
    which updates its running statistics as ``nn.BatchNorm2d`` does in training."""
    running = (bn.running_mean, bn.running_var, bn.num_batches_tracked) if bn.track_running_stats else (None,) * 3
    return (bn.weight.detach(), bn.bias.detach(), *running, bn.momentum, bn.eps)


def _geometry(module: nn.Module) -> tuple[int, int, int, int, int]:
    pad = (module.kernel_size - 1) // 2
    return module.kernel_size, module.stride, 1, pad, pad


def _generate(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """The kernels of an ``Involution2d`` for a contiguous x, and what backward needs besides x.

    The generator's BN normalises t = r + channel term with batch statistics; it is folded into the
    passes around it: the separable pass sums r and r^2 per example and channel, from which (and
    the channel term) come t's statistics, and the ReLU + span pass reads r and applies the BN's
    per-(example, channel) affine map as it loads, so neither t nor its normalised copy is written."""
    ext = fused_involution.extension()
    opmath = fused_generator.opmath_dtype(x.dtype)
    c = x.shape[1]
    wd = None if module.spatial is None else module.spatial.weight.detach().to(opmath).reshape(c, 9)
    wr = module.reduce.weight.detach().to(opmath).reshape(-1, c)
    ws = module.span.weight.detach().to(opmath).reshape(module.span.out_channels, -1)
    linear = module.channel
    # strided: the generator reads the pooled x, whose plane means are x's (the pool tiles x, see _node_fits)
    pooled = None if module.stride == 1 else ext.avg_pool_forward(x, module.stride)
    r, sums, r_sums = ext.separable_forward(x if pooled is None else pooled, wd, wr, linear is not None, True)
    scale, shift, state, mean = ext.generator_norm_forward(
        r, r_sums, sums, None if linear is None else linear.weight.detach(),
        None if linear is None else linear.bias.detach(), _bn_args(module.bn))
    kernels = ext.relu_pointwise_forward(r, ws, module.span.bias.detach().to(opmath), scale, shift)
    saved = [pooled, wd, wr, ws, r, mean, state, scale, shift]
    return kernels.view(x.shape[0], module.groups, module.kernel_size ** 2, *r.shape[-2:]), saved


def _generate_backward(module: nn.Module, x: torch.Tensor, saved: list[torch.Tensor | None], grad_kernels: torch.Tensor,
                       grad_x: torch.Tensor | None) -> tuple[torch.Tensor | None, list]:
    """Backward of :func:`_generate`: x's gradient added to ``grad_x`` (None: x needs none) and
    the generator's parameter gradients in :func:`_generator_parameters` order. The BN's backward
    (batch statistics) needs per channel the sums of grad n and of grad n * t_hat, which the ReLU +
    span pass returns per example; r's gradient, a * grad n + q * r + c, is formed as the separable
    pass loads it."""
    ext = fused_involution.extension()
    pooled, wd, wr, ws, r, mean, state, scale, shift = saved
    b, _, h, w = r.shape
    gn, gws, gbs, gn_sums = ext.relu_pointwise_backward(grad_kernels.view(b, -1, h, w), r, ws, True, scale, shift)
    linear = module.channel
    a, q, c, pool, grad_gamma, grad_beta, grad_lw, grad_lb = ext.generator_norm_backward(
        r, gn_sums, state, mean, None if linear is None else linear.weight.detach(), module.bn.weight)
    if pooled is None:
        gx, gwd, gwr = ext.separable_backward(gn, x, wd, wr, grad_x is not None, grad_x, pool, [r, a, q, c])
    else:  # the pooled input's gradient (with the channel term's, per pooled plane) through the pool
        gz, gwd, gwr = ext.separable_backward(gn, pooled, wd, wr, grad_x is not None, None, pool, [r, a, q, c])
        gx = None if gz is None else ext.avg_pool_backward(gz, module.stride, *x.shape[-2:], grad_x)
    middle = [grad_gamma, grad_beta] if linear is None else [grad_lw, grad_lb, grad_gamma, grad_beta]
    return gx, ([] if wd is None else [gwd]) + [gwr] + middle + [gws, gbs]


def _shaped(grads: list[torch.Tensor], params: tuple[nn.Parameter, ...], needed: tuple[bool, ...]) -> list:
    return [g.reshape(p.shape) if need else None for g, p, need in zip(grads, params, needed, strict=True)]


class _Involution(torch.autograd.Function):
    """``involution_aggregate(x, module.generate_kernels(x), K, stride)`` of an ``Involution2d``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, module: nn.Module, *params: nn.Parameter) -> torch.Tensor:
        x = x.contiguous()
        kernels, saved = _generate(module, x)
        ctx.module, ctx.params = module, params
        ctx.save_for_backward(x, kernels, *saved)
        return fused_involution.extension().forward(x, kernels, *_geometry(module))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, kernels, *saved = ctx.saved_tensors
        need_x = ctx.needs_input_grad[0]
        gx, gk = fused_involution.extension().backward(grad.to(x.dtype).contiguous(), x, kernels,
                                                       *_geometry(ctx.module), need_x, True)
        gx, grads = _generate_backward(ctx.module, x, saved, gk, gx)
        return gx, None, *_shaped(grads, ctx.params, ctx.needs_input_grad[2:])


class _Bivolution(torch.autograd.Function):
    """A ``Bivolution2d`` in training: ``static(x) + dynamic_bn(proj(involution(x)))`` (no ``proj``
    without a channel change)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, module: nn.Module, *params: nn.Parameter) -> torch.Tensor:
        ext = fused_involution.extension()
        x = x.contiguous()
        static = module.static(x).contiguous()  # autocast casts the weights as it would outside
        kernels, saved = _generate(module.dynamic, x)
        proj = module.dynamic.proj
        if proj is None:  # the aggregation sums what the BN's statistics need
            aggregated, sums = ext.forward_stats(x, kernels, *_geometry(module.dynamic), True)
            normed = aggregated
        else:
            aggregated = ext.forward(x, kernels, *_geometry(module.dynamic))
            normed = proj(aggregated).contiguous()
            sums = ext.channel_sums(normed)
        count = normed.shape[0] * normed.shape[2] * normed.shape[3]
        scale, shift, mean, invstd = ext.batch_norm_fold(sums, count, normed, _bn_args(module.dynamic_bn))
        ext.scale_add_(static, normed, scale, shift)
        ctx.module, ctx.params = module, params
        weights = [m.weight.detach().to(static.dtype) for m in (module.static, proj) if m is not None]
        ctx.save_for_backward(x, kernels, aggregated, normed, mean, invstd, *weights, *saved)
        return static

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        module, need_x = ctx.module, ctx.needs_input_grad[0]
        proj = module.dynamic.proj
        x, kernels, aggregated, normed, mean, invstd, weight, *saved = ctx.saved_tensors
        proj_weight = None if proj is None else saved.pop(0)
        grad = grad.to(x.dtype).contiguous()
        gx, gw = _conv_backward(module.static, grad, x, weight, need_x)
        bn = module.dynamic_bn
        g_agg, g_gamma, g_beta = torch.ops.aten.native_batch_norm_backward(
            grad, normed, bn.weight, None, None, mean, invstd, True, bn.eps, [True, True, True])
        g_proj = []
        if proj is not None:
            g_agg, g_pw = _conv_backward(proj, g_agg, aggregated, proj_weight, True)
            g_proj = [g_pw]
        gx, gk = fused_involution.extension().backward_prior(
            g_agg.contiguous(), x, kernels, *_geometry(module.dynamic), need_x, True,
            gx.contiguous() if need_x else None)
        gx, grads = _generate_backward(module.dynamic, x, saved, gk, gx if need_x else None)
        return gx, None, *_shaped([gw, *grads, *g_proj, g_gamma, g_beta], ctx.params, ctx.needs_input_grad[2:])


def _conv_backward(conv: nn.Conv2d, grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                   need_input: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Gradients of a bias-free ``conv(x)`` for x (None unless ``need_input``) and the weight."""
    gx, gw, _ = torch.ops.aten.convolution_backward(
        grad, x, weight, None, conv.stride, conv.padding, conv.dilation, False, [0, 0], conv.groups,
        [need_input, True, False])
    return gx, gw


def _bivolution_parameters(module: nn.Module) -> list[nn.Parameter]:
    proj = [] if module.dynamic.proj is None else [module.dynamic.proj.weight]
    return [module.static.weight, *_generator_parameters(module.dynamic), *proj, module.dynamic_bn.weight,
            module.dynamic_bn.bias]


def _plain_batchnorm(bn: nn.Module) -> bool:
    """The nodes compute and differentiate batch statistics of this process's batch: a subclass
    such as :class:`..sync_batchnorm.GlobalBatchNorm2d` (statistics over every rank) keeps the
    separate nodes, which call its own forward."""
    return type(bn) is nn.BatchNorm2d


def _node_fits(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether an ``Involution2d``'s generation and aggregation can run as one node for ``x``."""
    s = module.stride  # strided: the pool's windows tile x, so the pooled planes' means are x's (the channel term's)
    return (_plain_batchnorm(module.bn) and module.bn.training and torch.is_grad_enabled()
            and x.shape[-2] % s == 0 and x.shape[-1] % s == 0 and module.kernel_size % 2 == 1
            and all(p.requires_grad for p in _generator_parameters(module))
            and x.dtype == fused_generator.compute_dtype(x))  # under autocast a float32 x aggregates in float32


def involution_applies(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`involution` serves this call of an ``Involution2d``."""
    return (_node_fits(module, x) and fused_generator.separable_pays(x, module.stride)
            and fused_generator.pointwise_pays(x, module.reduce.out_channels, module.span.out_channels, module.stride))


def _bivolution_pays(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether the Bi-volution node pays for ``x``: its generator passes up to the larger
    thresholds of :mod:`.fused_generator` at any map size. The node also saves the separate nodes'
    BN, sum and gradient-sum passes, so it wins where the generator passes alone lose to oneDNN:
    bivol_resnet20's third stage (64@8x8, batch 128, one thread, forward + backward of one layer)
    23.8 vs 25.6 ms fp32, 14.6 vs 16.4 ms bf16."""
    dynamic = module.dynamic
    return (x.shape[1] <= fused_generator.MAX_SEPARABLE_CHANNELS
            and dynamic.reduce.out_channels * dynamic.span.out_channels <= fused_generator.MAX_POINTWISE_MACS
            and fused_generator.applies(x))


def involution(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``involution_aggregate(x, module.generate_kernels(x), K, stride)`` as one fused autograd node
    (before ``module.proj``, which the caller applies)."""
    return _Involution.apply(x, module, *_generator_parameters(module))


def bivolution_applies(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`bivolution` serves this call of a ``Bivolution2d``."""
    bn = module.dynamic_bn
    return (module.static is not None and bn is not None and _plain_batchnorm(bn) and bn.training and bn.affine
            and module.static.bias is None and (module.dynamic.proj is None or module.dynamic.proj.bias is None)
            and _node_fits(module.dynamic, x)
            and _bivolution_pays(module, x)
            and all(p.requires_grad for p in _bivolution_parameters(module)))


def bivolution(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` of a ``Bivolution2d`` as one fused autograd node."""
    return _Bivolution.apply(x, module, *_bivolution_parameters(module))

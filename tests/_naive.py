"""Naive reference operators, kept out of the package: the tests check the fast operators equal
them, and benchmarks/ops.py times them against the fast ones (it imports this file)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_bivol.models.operators import (
    Bivolution2d,
    CondConv2d,
    DynamicConv2d,
    Involution2d,
)


def per_example_conv(x: torch.Tensor, mix: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     stride: int) -> torch.Tensor:
    """One ordinary conv per example, each with its own mixed kernel ``sum_e mix[b, e] W_e``."""
    outs = []
    for i in range(x.shape[0]):
        w = (mix[i].view(-1, 1, 1, 1, 1) * weight).sum(0)
        b = None if bias is None else mix[i] @ bias
        outs.append(F.conv2d(x[i:i + 1], w, b, stride=stride, padding=weight.shape[-1] // 2)[0])
    return torch.stack(outs)


def unfold_aggregate(x: torch.Tensor, kernels: torch.Tensor, k: int, stride: int) -> torch.Tensor:
    """Official RedNet form: unfold x to (B, G, C/G, K*K, Ho, Wo), multiply by the kernels, sum."""
    b, c = x.shape[:2]
    g, _, ho, wo = kernels.shape[1:]
    cols = F.unfold(x, k, 1, (k - 1) // 2, stride).view(b, g, c // g, k * k, ho, wo)
    return (kernels.unsqueeze(2) * cols).sum(3).view(b, c, ho, wo)


def unfold_involution(inv: Involution2d, x: torch.Tensor) -> torch.Tensor:
    """An involution with the module's own generator, aggregated through F.unfold."""
    out = unfold_aggregate(x, inv.generate_kernels(x), inv.kernel_size, inv.stride)
    return out if inv.proj is None else inv.proj(out)


def naive_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The naive reference of a fast operator ``m``, with ``m``'s own parameters."""
    if isinstance(m, CondConv2d):
        return per_example_conv(x, m.routing(x), m.weight, m.bias, m.stride)
    if isinstance(m, DynamicConv2d):
        return per_example_conv(x, m.attention_weights(x), m.weight, m.bias, m.stride)
    if isinstance(m, Involution2d):
        return unfold_involution(m, x)
    if isinstance(m, Bivolution2d):
        out = unfold_involution(m.dynamic, x)
        return out if m.static is None else m.static(x) + m.dynamic_bn(out)
    raise TypeError(type(m).__name__)

"""Batch normalisation over the global batch of a data-parallel training, on any device.

Why: with plain BatchNorm each rank normalises by its own share of the batch, so a training on
N processes is another training than on one (batch statistics over B/N samples). torch's
``nn.SyncBatchNorm`` fixes that on GPUs only; this module does the same with collectives that
every backend has (gloo on the CPU), so ``torchrun`` on CPU processes reproduces the
one-process training up to float rounding. It keeps BatchNorm2d's parameters and buffers, so
checkpoints load into the plain model.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward all-reduces the gradient: every rank's loss reaches
    every rank's inputs through the shared statistics."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        total = tensor.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        total = grad.clone()
        dist.all_reduce(total, group=ctx.group)
        return total, None


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are taken over every rank's samples.

    Two all-reduces per call (sum, then the sum of squared deviations from the global mean, the
    same two-pass variance a single process computes); both carry gradients back to every rank
    (:class:`_SumOverRanks`), so the backward is the one-process
    backward. Running statistics use the unbiased global variance, as BatchNorm2d does.
    Eval mode, or a process without a process group, is plain BatchNorm2d.
    """

    process_group: dist.ProcessGroup | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        group = self.process_group or dist.group.WORLD
        dtype, x = x.dtype, x.to(torch.promote_types(x.dtype, torch.float32))  # bf16 autocast: float32 statistics
        local_count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        count = _SumOverRanks.apply(local_count, group)
        mean = _SumOverRanks.apply(x.sum((0, 2, 3)), group) / count
        centred = x - mean.view(1, -1, 1, 1)
        var = _SumOverRanks.apply(centred.square().sum((0, 2, 3)), group) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (count / (count - 1).clamp(min=1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        out = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return out.to(dtype)


def synchronise_batchnorm(model: nn.Module, device: torch.device,
                          group: dist.ProcessGroup | None = None) -> nn.Module:
    """Replace every BatchNorm2d of ``model`` by one that normalises over the global batch:
    torch's ``SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm2d` elsewhere (same state dict)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model, group)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            replacement = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                            child.track_running_stats, device="meta")
            for key, value in [*child._parameters.items(), *child._buffers.items()]:
                setattr(replacement, key, value)  # the same tensors: dtype, device and optimizer state kept
            replacement.train(child.training)
            replacement.process_group = group
            setattr(model, name, replacement)
        else:
            synchronise_batchnorm(child, device, group)
    return model


__all__ = ["GlobalBatchNorm2d", "synchronise_batchnorm"]

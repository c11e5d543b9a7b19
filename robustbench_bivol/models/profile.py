"""Parameter and multiply-add counts of the registered models, and the table behind ``bivol-robust models``.

GFLOPs here are **multiply-adds** (the convention of the ResNet/RedNet/Bi-volution papers):
``torch.utils.flop_counter.FlopCounterMode`` counts 2 FLOPs per multiply-add of convolutions and
matrix products (including the per-example kernel mixing of CondConv/DyConv and every kernel
generator, since the model really runs), and we divide by 2. Element-wise work (BN, ReLU,
pooling, residual adds) is not counted, as in the papers. Involution's aggregation (a
multiply-and-sum over K*K offsets, done with element-wise ops) is invisible to the counter, so
each :class:`.operators.Involution2d` adds ``B*C*K*K*Ho*Wo`` multiply-adds through a forward hook
(:meth:`.operators.Involution2d.aggregation_macs`). This gives 4.09 for torchvision's ResNet-50
(torchvision's own figure).

``convention="mmcv"`` adds what mmcv's ``get_model_complexity_info`` (used for mmcls/RedNet's
published figures, e.g. ResNet-50 4.12, RedNet-50 2.71) also counts: BN (2 per element, affine),
ReLU (1 per output element), pooling (1 per input element) and conv biases (1 per output element).
RedNet-50 is 2.65 GMACs by the default convention and 2.69 by "mmcv" (published 2.71).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import fused_involution
from .operators import Involution2d
from .registry import list_models, model_spec


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


CONVENTIONS = ("macs", "mmcv")
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


def _elementwise_ops(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    """mmcv's element-wise counts for one module call (0 for modules it does not count)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return inputs[0].numel() * (2 if module.affine else 1)
    if isinstance(module, nn.ReLU):
        return output.numel()
    if isinstance(module, _POOLS):
        return inputs[0].numel()
    if isinstance(module, nn.Conv2d) and module.bias is not None:
        return output.numel()
    return 0


def count_macs(model: nn.Module, input_size: int | tuple[int, int], batch_size: int = 1,
               convention: str = "macs") -> int:
    """Multiply-adds of one forward pass on a ``(batch_size, 3, H, W)`` random input.

    ``convention``: ``"macs"`` (convs, matrix products, involution aggregation) or ``"mmcv"``
    (the same plus mmcv's element-wise counts; see the module docstring).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention}")
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    extra = [0]

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if isinstance(module, Involution2d):
            extra[0] += module.aggregation_macs(inputs[0])
        elif convention == "mmcv":
            extra[0] += _elementwise_ops(module, inputs, output)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, Involution2d) or convention == "mmcv"]
    was_training = model.training
    try:
        model.eval()
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter, fused_involution.torch_path():  # fused generators hide their convs
            model(torch.randn(batch_size, 3, h, w))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return counter.get_total_flops() // 2 + extra[0]


def count_gflops(model: nn.Module, input_size: int | tuple[int, int], convention: str = "macs") -> float:
    """GFLOPs as multiply-adds per image (see the module docstring)."""
    return count_macs(model, input_size, convention=convention) / 1e9


def models_table(names: list[str] | None = None, *, operator: str | None = None,
                 flops: bool = True) -> list[dict[str, Any]]:
    """One row per model: name, operator, input size, params, GFLOPs in both conventions, weights.

    GFLOPs run each model once (at its input size); ``flops=False`` skips that for a quick list.
    """
    from ..weights import bundled_tags

    rows = []
    for name in names or list_models(operator):
        spec = model_spec(name)
        model = spec.builder(num_classes=spec.default_num_classes).eval()
        row: dict[str, Any] = {"name": name, "operator": spec.operator, "input_size": spec.input_size,
                               "params_m": round(count_params(model) / 1e6, 3)}
        if flops:
            row["gflops"] = round(count_gflops(model, spec.input_size), 3)
            row["gflops_mmcv"] = round(count_gflops(model, spec.input_size, convention="mmcv"), 3)
        row["bundled_weights"] = ", ".join(bundled_tags(name)) or "-"
        rows.append(row)
    return rows

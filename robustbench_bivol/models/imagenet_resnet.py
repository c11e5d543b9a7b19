"""ImageNet-style ResNets: torchvision's own classes, and CondConv / DyConv ResNet-50.

``resnet18/50/101`` are ``torchvision.models.resnet.ResNet`` instances (same state_dict keys and
outputs, so ``torchvision:`` weights load unchanged). The dynamic variants take the same
ResNet-50 and replace each bottleneck's 3x3 ``conv2`` (which carries the stride) by the
operator; stem, 1x1 convs and shortcuts stay static.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from .operators import CondConv2d, DynamicConv2d
from .registry import register_model


def replace_bottleneck_conv2(model: ResNet, conv3x3: Callable[[int, int, int], nn.Module]) -> ResNet:
    """Swap every ``Bottleneck.conv2`` for ``conv3x3(width, width, stride)``; returns ``model``."""
    for block in model.modules():
        if isinstance(block, Bottleneck):
            old = block.conv2
            if old.groups != 1 or old.dilation != (1, 1):
                raise ValueError("only plain (groups=1, dilation=1) bottlenecks can be converted")
            block.conv2 = conv3x3(old.in_channels, old.out_channels, old.stride[0])
    return model


@register_model(input_size=224, operator="static", num_classes=1000)
def resnet18(num_classes: int = 1000) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)


@register_model(input_size=224, operator="static", num_classes=1000)
def resnet50(num_classes: int = 1000) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes)


@register_model(input_size=224, operator="static", num_classes=1000)
def resnet101(num_classes: int = 1000) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes=num_classes)


@register_model(input_size=224, operator="condconv", num_classes=1000)
def condconv_resnet50(num_classes: int = 1000) -> ResNet:
    """ResNet-50 with CondConv (E=4) in place of every bottleneck 3x3 conv."""
    return replace_bottleneck_conv2(resnet50(num_classes), lambda i, o, s: CondConv2d(i, o, s))


@register_model(input_size=224, operator="dyconv", num_classes=1000)
def dyconv_resnet50(num_classes: int = 1000) -> ResNet:
    """ResNet-50 with DyConv (K=4) in place of every bottleneck 3x3 conv."""
    return replace_bottleneck_conv2(resnet50(num_classes), lambda i, o, s: DynamicConv2d(i, o, s))

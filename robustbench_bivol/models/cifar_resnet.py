"""CIFAR-style ResNets (He et al. 2016, section 4.2): 3 stages of 16/32/64 channels, 32x32 input.

ResNet-20 and ResNet-56 use ``6n+2`` layers with basic blocks. The 3x3 convolution inside each
block comes from a ``conv3x3`` factory, so every operator family shares this one backbone. The
stem and the shortcut stay static convolutions for all operators, as in the papers that
replace only the blocks' spatial convolution.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from .registry import register_model

#: ``conv3x3(in_channels, out_channels, stride) -> module``
ConvFactory = Callable[[int, int, int], nn.Module]


def static_conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Module:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, conv3x3: ConvFactory) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels, 1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:  # option B: projection shortcut
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, conv3x3: ConvFactory = static_conv3x3,
                 widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        layers, in_channels = [], widths[0]
        for stage, width in enumerate(widths):
            stage_blocks = []
            for b in range(blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                stage_blocks.append(BasicBlock(in_channels, width, stride, conv3x3))
                in_channels = width
            layers.append(nn.Sequential(*stage_blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if hasattr(m, "reset_generator"):  # dynamic kernel generators start neutral
                m.reset_generator()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model(input_size=32, operator="static", num_classes=10)
def resnet20(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(20, num_classes)


@register_model(input_size=32, operator="static", num_classes=10)
def resnet56(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(56, num_classes)


# --- dynamic operators: the same backbone with another ``conv3x3`` factory -------------------
#: Involution / Bi-volution kernel size in the CIFAR drop-ins: 3, the receptive field of the 3x3
#: conv they replace, so all five operator families see the same neighbourhood (RedNet's 7 is
#: used by the ImageNet models in :mod:`.rednet`).
CIFAR_INVOLUTION_KERNEL = 3


def condconv_conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Module:
    from .operators import CondConv2d
    return CondConv2d(in_channels, out_channels, stride)


def dyconv_conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Module:
    from .operators import DynamicConv2d
    return DynamicConv2d(in_channels, out_channels, stride)


def involution_conv3x3(in_channels: int, out_channels: int, stride: int = 1, group_channels: int = 16,
                       sakg: bool = False) -> nn.Module:
    """Involution followed by a 1x1 conv.

    Involution mixes no channels (its kernel is shared by the channels of a group), so two
    of them in a basic block would leave the network almost no channel mixing: at 16 channels
    there is one group and the block has no learnable filters across channels. RedNet surrounds
    involution with 1x1 convs in its bottleneck; the pointwise conv here plays that role.
    ``sakg=True`` generates the kernels with Bi-volution's SAKG (spatial and channel context):
    this is Bi-volution's dynamic branch alone, the paper's "without static branch" ablation.
    """
    from .operators import Involution2d
    return nn.Sequential(Involution2d(in_channels, in_channels, stride, kernel_size=CIFAR_INVOLUTION_KERNEL,
                                      group_channels=group_channels, spatial_context=sakg, channel_context=sakg),
                         nn.Conv2d(in_channels, out_channels, 1, bias=False))


def bivolution_conv3x3(in_channels: int, out_channels: int, stride: int = 1, sakg: bool = True) -> nn.Module:
    """Full 3x3 static conv + involution branch (see :class:`.operators.Bivolution2d`); ``sakg=False``
    generates the dynamic kernels with involution's 1x1 generator (the "without SAKG" ablation)."""
    from .operators import Bivolution2d
    return Bivolution2d(in_channels, out_channels, stride, kernel_size=CIFAR_INVOLUTION_KERNEL, sakg=sakg)


#: Capacity-matched involution ResNet-20s: twice resnet20's widths and 4-channel groups (G = C/4)
#: bring the multiply-adds to 0.90x resnet20's (0.98x with SAKG) and the parameters to 0.85x (0.99x),
#: where the 16-channel groups at resnet20's widths give 0.20x. Width alone cannot do it: with
#: 16-channel groups, widths x2 give 0.72x and x3 1.56x. (Bi-volution needs no such change: its
#: static branch already is resnet20's conv, and its involution branch adds 12% multiply-adds.)
WIDE_WIDTHS, WIDE_GROUP_CHANNELS = (32, 64, 128), 4

@register_model(input_size=32, operator="condconv", num_classes=10)
def condconv_resnet20(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(20, num_classes, conv3x3=condconv_conv3x3)


@register_model(input_size=32, operator="condconv", num_classes=10)
def condconv_resnet56(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(56, num_classes, conv3x3=condconv_conv3x3)


@register_model(input_size=32, operator="dyconv", num_classes=10)
def dyconv_resnet20(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(20, num_classes, conv3x3=dyconv_conv3x3)


@register_model(input_size=32, operator="dyconv", num_classes=10)
def dyconv_resnet56(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(56, num_classes, conv3x3=dyconv_conv3x3)


@register_model(input_size=32, operator="involution", num_classes=10)
def involution_resnet20(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(20, num_classes, conv3x3=involution_conv3x3)


@register_model(input_size=32, operator="involution", num_classes=10)
def involution_resnet56(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(56, num_classes, conv3x3=involution_conv3x3)


@register_model(input_size=32, operator="involution", num_classes=10)
def involution_wide_resnet20(num_classes: int = 10) -> CifarResNet:
    """Involution ResNet-20 at resnet20's multiply-adds (see :data:`WIDE_WIDTHS`)."""
    return CifarResNet(20, num_classes, widths=WIDE_WIDTHS,
                       conv3x3=partial(involution_conv3x3, group_channels=WIDE_GROUP_CHANNELS))


@register_model(input_size=32, operator="bivolution", num_classes=10)
def bivol_resnet20(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(20, num_classes, conv3x3=bivolution_conv3x3)


@register_model(input_size=32, operator="bivolution", num_classes=10)
def bivol_resnet56(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(56, num_classes, conv3x3=bivolution_conv3x3)


# --- Bi-volution ablations (the paper's section on its two branches and SAKG) ----------------
# The static branch alone is resnet20 itself: a full 3x3 conv followed by the block's BN.

@register_model(input_size=32, operator="bivolution", num_classes=10)
def bivol_nosakg_resnet20(num_classes: int = 10) -> CifarResNet:
    """Bi-volution without SAKG: static branch + involution's own 1x1 kernel generator."""
    return CifarResNet(20, num_classes, conv3x3=partial(bivolution_conv3x3, sakg=False))


@register_model(input_size=32, operator="bivolution", num_classes=10)
def bivol_nostatic_wide_resnet20(num_classes: int = 10) -> CifarResNet:
    """Bi-volution without its static branch: the SAKG involution alone, capacity-matched like
    :func:`involution_wide_resnet20` (from which it differs only by SAKG)."""
    return CifarResNet(20, num_classes, widths=WIDE_WIDTHS,
                       conv3x3=partial(involution_conv3x3, group_channels=WIDE_GROUP_CHANNELS, sakg=True))

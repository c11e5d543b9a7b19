"""RedNet (Li et al., CVPR 2021): ResNet with involution, and Bi-volution ResNet-50 on its skeleton.

Structure as the official mmcls backbone (d-li14/involution, ``backbones/rednet.py``):

* stem: 3x3 conv s2 (3 -> 32) + BN + ReLU, involution K=3 on 32 channels + BN + ReLU,
  3x3 conv (32 -> 64) + BN + ReLU; then 3x3 max-pool s2;
* 4 stages of bottlenecks (1x1 -> BN/ReLU -> involution K=7, G=C/16, carries the stride ->
  BN/ReLU -> 1x1 -> BN, + shortcut), widths 64/128/256/512, expansion 4; projection shortcut
  (1x1 conv with stride + BN) on each stage's first block;
* depths: 26 (1,2,4,1), 38 (2,3,5,2), 50 (3,4,6,3), 101 (3,4,23,3);
* head (mmcls GlobalAveragePooling + LinearClsHead): global average pool, ``fc``.

Names follow the official ones (``stem.N``, ``layerN.M.conv1/bn1/...``, ``downsample.0/1``) so
:func:`.convert.convert_rednet_checkpoint` only renames the involution internals and drops
the ``backbone.``/``head.`` prefixes. Init as the official: Kaiming (fan_out) convs, BN 1/0,
zero-initialised last BN of each block.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .operators import Bivolution2d, Involution2d
from .registry import register_model

#: ``make_operator(channels, kernel_size, stride) -> module`` keeping the channel count.
OperatorFactory = Callable[[int, int, int], nn.Module]

ARCH = {26: (1, 2, 4, 1), 38: (2, 3, 5, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def involution(channels: int, kernel_size: int, stride: int) -> nn.Module:
    return Involution2d(channels, channels, stride, kernel_size=kernel_size)


def bivolution(channels: int, kernel_size: int, stride: int) -> nn.Module:
    """Bi-volution for the RedNet skeleton: depth-wise 3x3 static branch (keeps ~2.7 GFLOPs)."""
    return Bivolution2d(channels, channels, stride, kernel_size=kernel_size, static_groups="depthwise")


class ConvModule(nn.Sequential):
    """conv (no bias) -> BN -> ReLU, named ``conv``/``bn``/``activate`` like mmcv's ConvModule."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)


class RedBottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, out_channels: int, stride: int, make_operator: OperatorFactory,
                 kernel_size: int = 7) -> None:
        super().__init__()
        mid = out_channels // self.expansion
        self.conv1 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = make_operator(mid, kernel_size, stride)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class RedNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 1000, make_operator: OperatorFactory = involution,
                 kernel_size: int = 7, stem_kernel_size: int = 3) -> None:
        super().__init__()
        if depth not in ARCH:
            raise ValueError(f"RedNet depth must be one of {sorted(ARCH)}, got {depth}")
        self.stem = nn.Sequential(ConvModule(3, 32, 3, 2), make_operator(32, stem_kernel_size, 1),
                                  nn.BatchNorm2d(32), nn.ReLU(inplace=True), ConvModule(32, 64, 3))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_channels, out_channels = 64, 256
        for i, blocks in enumerate(ARCH[depth]):
            stride = 1 if i == 0 else 2
            layer = [RedBottleneck(in_channels, out_channels, stride, make_operator, kernel_size)]
            layer += [RedBottleneck(out_channels, out_channels, 1, make_operator, kernel_size)
                      for _ in range(blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            in_channels, out_channels = out_channels, out_channels * 2
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, RedBottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, Bivolution2d):
                m.reset_generator()  # its dynamic-branch gate starts closed (the loop above set it to 1)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.stem(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model(input_size=224, operator="involution", num_classes=1000)
def rednet26(num_classes: int = 1000) -> RedNet:
    return RedNet(26, num_classes)


@register_model(input_size=224, operator="involution", num_classes=1000)
def rednet38(num_classes: int = 1000) -> RedNet:
    return RedNet(38, num_classes)


@register_model(input_size=224, operator="involution", num_classes=1000)
def rednet50(num_classes: int = 1000) -> RedNet:
    return RedNet(50, num_classes)


@register_model(input_size=224, operator="involution", num_classes=1000)
def rednet101(num_classes: int = 1000) -> RedNet:
    return RedNet(101, num_classes)


@register_model(input_size=224, operator="bivolution", num_classes=1000)
def bivol_resnet50(num_classes: int = 1000) -> RedNet:
    """RedNet-50 skeleton with Bi-volution in place of every involution (stem included)."""
    return RedNet(50, num_classes, make_operator=bivolution)

"""The built-in backbones: plain PyTorch ResNets, made searchable by the same conversion as any
user's model (every residual block a choice point, its inner channels the width).

ImageNet ResNet-18/34 are the paper's backbones; ``resnet_small`` is the 3-stage ResNet of He et
al. for 28x28/32x32 inputs (depth = 6n + 2).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qspos.models._registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """A ResNet of BasicBlocks; ``stem`` is 'imagenet' (7x7/2 + maxpool) or 'small' (3x3/1)."""

    def __init__(self, stage_blocks: list[int], stage_widths: list[int], num_classes: int, in_channels: int,
                 stem: str):
        super().__init__()
        first = stage_widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, first, 7, 2, 3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_channels, first, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(first)
        self.relu = nn.ReLU(inplace=True)
        in_planes = first
        self.stage_names = []
        for i, (n, planes) in enumerate(zip(stage_blocks, stage_widths)):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, planes, 2 if i > 0 and j == 0 else 1))
                in_planes = planes
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.stage_names.append(f"layer{i + 1}")
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # zero-init the last BN of each block: every path starts close to its shortcut
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model
def resnet18(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ImageNet ResNet-18 (the paper's backbone)."""
    return ResNet([2, 2, 2, 2], [64, 128, 256, 512], num_classes, in_channels, "imagenet")


@register_model
def resnet34(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ImageNet ResNet-34 (the paper's backbone)."""
    return ResNet([3, 4, 6, 3], [64, 128, 256, 512], num_classes, in_channels, "imagenet")


@register_model
def resnet_small(
    depth: int = 20, widths: tuple[int, int, int] = (16, 32, 64), num_classes: int = 10, in_channels: int = 3
) -> ResNet:
    """3-stage ResNet for 28x28/32x32 inputs (He et al. CIFAR form): depth = 6n + 2."""
    if isinstance(depth, bool) or not isinstance(depth, int) or (depth - 2) % 6 or depth < 8:
        raise ValueError(f"depth must be 6n+2 with n >= 1, got {depth!r}")
    if not (isinstance(widths, (list, tuple)) and len(widths) == 3
            and all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths)):
        raise ValueError(f"widths must be 3 positive integers, one per stage, got {widths!r}")
    n = (depth - 2) // 6
    return ResNet([n, n, n], list(widths), num_classes, in_channels, "small")

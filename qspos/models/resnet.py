"""ResNet supernets: ImageNet ResNet-18/34 (the paper's space) and a 3-stage small-input ResNet.

Every residual block is a choice point: its convs' bits (tied, or per layer) and a multiplier on
its inner channels (the output of its first conv). Residual shapes never change.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qspos.core.backbone import SearchBlock, WidthSlot
from qspos.core.layers import SearchableConv2d, SearchableLayer, SearchableLinear, SlicedBatchNorm2d, channels
from qspos.models._registry import register_model


class ResNetBackbone(nn.Module):
    """torchvision's ResNet layout as a supernet backbone, shared by the built-in ResNets and
    converted torchvision-style ones: stem ``conv1/bn1/relu/maxpool``, the stages named in
    ``stage_names``, ``avgpool``, ``fc``. Every block is a search block; the outputs of each of
    its convs but the last (``conv{i}``, channel counts at multiplier 1.0 in
    ``inner_base[block path]``) take the width multiplier; the stem conv and ``fc`` are fixed."""

    stage_names: list[str]
    # plain ints: a deep copy of the net (extract() makes one) must not hold on to searchable layers
    inner_base: dict[str, list[int]]

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def search_blocks(self) -> list[SearchBlock]:
        blocks = []
        for name, bases in self.inner_base.items():
            block = self.get_submodule(name)
            layers = {n: m for n, m in block.named_modules() if isinstance(m, SearchableLayer)}
            slots = [WidthSlot(base, [getattr(block, f"conv{i}")], [getattr(block, f"bn{i}")],
                               [getattr(block, f"conv{i + 1}")]) for i, base in enumerate(bases, 1)]
            blocks.append(SearchBlock(name, layers, slots))
        return blocks

    def fixed_layers(self) -> dict[str, SearchableLayer]:
        return {"first": self.conv1, "last": self.fc}


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, max_width: float):
        super().__init__()
        self.planes = planes
        inner = channels(planes, max_width)
        self.conv1 = SearchableConv2d(in_planes, inner, 3, stride, 1)
        self.bn1 = SlicedBatchNorm2d(inner)
        self.conv2 = SearchableConv2d(inner, planes, 3, 1, 1)
        self.bn2 = SlicedBatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                SearchableConv2d(in_planes, planes, 1, stride), SlicedBatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet(ResNetBackbone):
    """A ResNet of BasicBlocks at max width; ``stem`` is 'imagenet' (7x7/2 + maxpool) or 'small'."""

    def __init__(
        self,
        stage_blocks: list[int],
        stage_widths: list[int],
        num_classes: int,
        in_channels: int,
        max_width: float,
        stem: str,
    ):
        super().__init__()
        first = stage_widths[0]
        if stem == "imagenet":
            self.conv1 = SearchableConv2d(in_channels, first, 7, 2, 3, input_signed=True)
            self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = SearchableConv2d(in_channels, first, 3, 1, 1, input_signed=True)
            self.maxpool = nn.Identity()
        self.bn1 = SlicedBatchNorm2d(first)
        self.relu = nn.ReLU(inplace=True)
        in_planes = first
        self.stage_names, self.inner_base = [], {}
        for i, (n, planes) in enumerate(zip(stage_blocks, stage_widths)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if j == 0 else 1, max_width))
                in_planes = planes
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            self.inner_base.update({f"{name}.{j}": [planes] for j in range(n)})
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = SearchableLinear(in_planes, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, SearchableConv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                m.init_weight_thresholds()
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # zero-init the last BN of each block: every path starts close to its shortcut
        for name in self.stage_names:
            for block in getattr(self, name):
                nn.init.zeros_(block.bn2.weight)


@register_model
def resnet18(num_classes: int = 1000, in_channels: int = 3, max_width: float = 1.0) -> ResNet:
    """ImageNet ResNet-18 (the paper's backbone)."""
    return ResNet([2, 2, 2, 2], [64, 128, 256, 512], num_classes, in_channels, max_width, "imagenet")


@register_model
def resnet34(num_classes: int = 1000, in_channels: int = 3, max_width: float = 1.0) -> ResNet:
    """ImageNet ResNet-34 (the paper's backbone)."""
    return ResNet([3, 4, 6, 3], [64, 128, 256, 512], num_classes, in_channels, max_width, "imagenet")


@register_model
def resnet_small(
    depth: int = 20,
    widths: tuple[int, int, int] = (16, 32, 64),
    num_classes: int = 10,
    in_channels: int = 3,
    max_width: float = 1.0,
) -> ResNet:
    """3-stage ResNet for 28x28/32x32 inputs (He et al. CIFAR form): depth = 6n + 2."""
    if isinstance(depth, bool) or not isinstance(depth, int) or (depth - 2) % 6 or depth < 8:
        raise ValueError(f"depth must be 6n+2 with n >= 1, got {depth!r}")
    if not (isinstance(widths, (list, tuple)) and len(widths) == 3
            and all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths)):
        raise ValueError(f"widths must be 3 positive integers, one per stage, got {widths!r}")
    n = (depth - 2) // 6
    return ResNet([n, n, n], list(widths), num_classes, in_channels, max_width, "small")

"""Users' own torchvision-style ResNets as supernet backbones.

``searchable_from_torchvision(model)`` swaps the Conv2d/BatchNorm2d/Linear layers of a ResNet
built like torchvision's (stem ``conv1/bn1/relu/maxpool``, stages ``layer1..``, ``avgpool``,
``fc``; BasicBlock or Bottleneck blocks) for searchable ones, copies the weights, and declares
the space as our own ResNets do: every block is a choice point, its inner channels take the
width multiplier (for a Bottleneck both inner convs, the 3x3's input and output), the stem conv
and the classifier are fixed. Blocks are recognised by their layer names, so copies of
torchvision's classes work too. The registered model ``torchvision_resnet`` makes it a config
choice: ``model: {name: torchvision_resnet, args: {arch: resnet50, weights: r50.pt}}``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from qspos.core.layers import SearchableConv2d, SearchableLinear, SlicedBatchNorm2d, channels
from qspos.errors import QsposError
from qspos.models._registry import register_model
from qspos.models.resnet import ResNetBackbone


class ConvertedResNet(ResNetBackbone):
    """A converted torchvision-style ResNet: the user's modules under their own names."""

    def __init__(self, model: nn.Module, max_width: float = 1.0):
        super().__init__()
        missing = [n for n in ("conv1", "bn1", "relu", "maxpool", "avgpool", "fc") if not hasattr(model, n)]
        if missing:
            raise QsposError(f"not a torchvision-style ResNet: no {', '.join(missing)}")
        for name, child in model.named_children():
            self.add_module(name, child)
        self.stage_names = [n for n, _ in model.named_children() if n.startswith("layer")]
        self.conv1 = _conv(model.conv1, model.conv1.in_channels, model.conv1.out_channels, input_signed=True)
        self.bn1 = _bn(model.bn1, model.bn1.num_features)
        self.fc = _linear(model.fc)
        self.inner_base = {
            f"{stage}.{j}": _convert_block(block, max_width)
            for stage in self.stage_names
            for j, block in enumerate(getattr(self, stage))
        }


def searchable_from_torchvision(model: nn.Module, max_width: float = 1.0) -> ConvertedResNet:
    """A supernet backbone from a torchvision-style ResNet (the model itself is consumed: its
    blocks are rebuilt in place). Inner channels grow to ``max_width`` times their count; the
    user's weights fill the first channels, the extra ones keep a fresh PyTorch initialisation."""
    return ConvertedResNet(model, max_width)


def _convert_block(block: nn.Module, max_width: float) -> list[int]:
    """Swap one block's layers in place; return its inner channel counts (conv1's output, and
    conv2's for a Bottleneck) at multiplier 1.0."""
    n_convs = 3 if hasattr(block, "conv3") else 2  # Bottleneck or BasicBlock
    if not all(hasattr(block, f"{kind}{i}") for kind in ("conv", "bn") for i in range(1, n_convs + 1)):
        raise QsposError(f"unsupported block {type(block).__name__}: expected conv1/bn1/conv2/bn2 (+conv3/bn3)")
    inner = range(1, n_convs)  # the outputs of every conv but the last are inner channels
    base = [getattr(block, f"conv{i}").out_channels for i in inner]
    for i in range(1, n_convs + 1):
        ref: nn.Conv2d = getattr(block, f"conv{i}")
        cin = channels(ref.in_channels, max_width) if i - 1 in inner else ref.in_channels
        cout = channels(ref.out_channels, max_width) if i in inner else ref.out_channels
        setattr(block, f"conv{i}", _conv(ref, cin, cout))
        setattr(block, f"bn{i}", _bn(getattr(block, f"bn{i}"), cout))
    if getattr(block, "downsample", None) is not None:
        conv, bn = block.downsample[0], block.downsample[1]
        block.downsample[0] = _conv(conv, conv.in_channels, conv.out_channels)
        block.downsample[1] = _bn(bn, bn.num_features)
    return base


@torch.no_grad()
def _conv(ref: nn.Conv2d, cin: int, cout: int, input_signed: bool = False) -> SearchableConv2d:
    if not isinstance(ref, nn.Conv2d) or ref.groups != 1 or ref.dilation != (1, 1) or isinstance(ref.padding, str):
        raise QsposError(f"cannot convert {ref}: only plain Conv2d (groups=1, no dilation) is searchable")
    layer = SearchableConv2d(cin, cout, ref.kernel_size, ref.stride, ref.padding, bias=ref.bias is not None,
                             input_signed=input_signed)
    layer.weight[: ref.out_channels, : ref.in_channels].copy_(ref.weight)
    if ref.bias is not None:
        layer.bias[: ref.out_channels].copy_(ref.bias)
    return layer


@torch.no_grad()
def _bn(ref: nn.BatchNorm2d, n: int) -> SlicedBatchNorm2d:
    bn = SlicedBatchNorm2d(n, ref.eps, ref.momentum)
    c = ref.num_features
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(bn, name)[:c].copy_(getattr(ref, name))
    bn.num_batches_tracked.copy_(ref.num_batches_tracked)
    return bn


@torch.no_grad()
def _linear(ref: nn.Linear) -> SearchableLinear:
    layer = SearchableLinear(ref.in_features, ref.out_features, bias=ref.bias is not None)
    layer.weight.copy_(ref.weight)
    if ref.bias is not None:
        layer.bias.copy_(ref.bias)
    return layer


@register_model
def torchvision_resnet(
    arch: str = "resnet18",
    num_classes: int = 1000,
    in_channels: int = 3,
    max_width: float = 1.0,
    weights: Mapping | None = None,
) -> ConvertedResNet:
    """Any torchvision ResNet by name (``resnet18`` .. ``resnet152``, ``wide_resnet50_2``),
    converted; ``weights`` is its float state_dict (a config names a local file, which the
    runtime loads: nothing is downloaded)."""
    import torchvision

    if not arch.startswith(("resnet", "wide_resnet")):
        raise QsposError(f"model.args.arch: {arch!r} is not a torchvision ResNet")
    model = torchvision.models.get_model(arch, num_classes=num_classes)
    if weights is not None:
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:
            raise QsposError(f"model.args.weights: does not fit {arch}: {str(e).splitlines()[0]}") from None
    if in_channels != model.conv1.in_channels:
        c = model.conv1
        model.conv1 = nn.Conv2d(in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, bias=False)
    return searchable_from_torchvision(model, max_width)

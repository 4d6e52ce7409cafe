"""``analyse``: channel groups, what pins them, and which layer inputs are provably >= 0, on tiny
hand-written models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qspos.errors import QsposError
from qspos.models.graph import GraphInfo, analyse


def _group(info: GraphInfo, layer: str, side: str = "out"):
    node = info.layers[layer]
    return info.groups[node.out_group if side == "out" else node.in_group]


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.bn1(self.conv1(x))))


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.conv, self.block, self.fc = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1), _Block(), nn.Linear(8, 10)

    def forward(self, x):
        x = self.block(self.conv(torch.relu(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_a_residual_add_pins_its_stream_and_leaves_the_inner_channels_shrinkable():
    info = analyse(_Residual(), (3, 12, 12))
    assert list(info.layers) == ["stem", "conv", "block.conv1", "block.conv2", "fc"]
    assert (info.first, info.last) == (["stem"], ["fc"])
    stream = _group(info, "conv")
    assert stream is _group(info, "block.conv2") is _group(info, "fc", "in")  # flatten of 1 pixel keeps it
    assert stream.producers == ["conv", "block.conv2"] and stream.consumers == ["block.conv1", "fc"]
    assert stream.pinned == ["feeds the residual add in block"] and not stream.shrinkable
    inner = _group(info, "block.conv1")
    assert (inner.channels, inner.producers, inner.norms, inner.consumers) == (16, ["block.conv1"], ["block.bn1"],
                                                                                 ["block.conv2"])
    assert inner.shrinkable and inner.pinned == []
    assert _group(info, "stem", "in").pinned == ["network input"]
    assert _group(info, "stem").pinned == ["output of the fixed first layer stem"]
    assert _group(info, "fc").pinned == ["network output"]


class _SE(nn.Module):
    """Expand, squeeze-excitation gate, project: the gate's channels are the expanded ones."""

    def __init__(self, act: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.expand, self.bn = nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.act = act()
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.reduce, self.gate = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.project, self.fc = nn.Conv2d(16, 8, 1), nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(self.act(self.bn(self.expand(x))))
        s = torch.sigmoid(self.gate(F.relu(self.reduce(F.adaptive_avg_pool2d(y, 1)))))
        x = self.project(y * s)
        return self.fc(x.mean((2, 3)))


def test_a_squeeze_excitation_multiply_merges_the_gate_with_its_channels_and_stays_shrinkable():
    info = analyse(_SE(), (3, 10, 10))
    expanded = _group(info, "expand")
    assert expanded is _group(info, "dw") is _group(info, "gate") is _group(info, "project", "in")
    assert expanded.producers == ["expand", "dw", "gate"]  # the depthwise conv and the gate keep its channels
    assert expanded.consumers == ["reduce", "project"] and expanded.norms == ["bn"]
    assert expanded.shrinkable
    assert info.layers["dw"].depthwise and info.layers["dw"].in_group == info.layers["dw"].out_group
    assert _group(info, "reduce").shrinkable and _group(info, "reduce").channels == 4
    # a global mean into the Linear keeps the projected channels
    assert _group(info, "project") is _group(info, "fc", "in") and _group(info, "project").shrinkable


def test_a_flatten_of_one_pixel_keeps_the_group_and_of_many_pins_it():
    class Net(nn.Module):
        def __init__(self, pixels: int, flatten):
            super().__init__()
            self.pixels, self.flatten = pixels, flatten
            self.stem, self.conv = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 6, 3)
            self.fc = nn.Linear(6 * pixels * pixels, 2)

        def forward(self, x):
            return self.fc(self.flatten(F.adaptive_max_pool2d(self.conv(self.stem(x)), self.pixels)))

    for flatten in (nn.Flatten(), lambda t: t.view(t.size(0), -1), lambda t: t.reshape(t.shape[0], -1)):
        one = analyse(Net(1, flatten), (1, 9, 9))
        assert _group(one, "conv") is _group(one, "fc", "in") and _group(one, "conv").shrinkable
        many = analyse(Net(3, flatten), (1, 9, 9))
        conv = _group(many, "conv")
        assert len(conv.pinned) == 1 and conv.pinned[0].startswith("flattened with 3x3 pixels ")
        assert _group(many, "fc", "in") is not conv and _group(many, "fc", "in").channels == 54


def test_concatenation_grouped_convs_and_unknown_ops_pin_their_channels():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3)
            self.a, self.b = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)
            self.grouped = nn.Conv2d(8, 8, 3, groups=2)
            self.c = nn.Conv2d(8, 8, 1)
            self.shuffle = nn.PixelShuffle(2)
            self.d = nn.Conv2d(2, 4, 1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x = self.stem(x)
            x = self.grouped(torch.cat([self.a(x), self.b(x)], dim=1))
            x = torch.roll(self.c(x), 1, dims=2)
            x = self.d(self.shuffle(x))
            return self.fc(x.mean((2, 3)))

    info = analyse(Net(), (3, 12, 12))
    assert _group(info, "a").pinned == ["concatenated at cat"] and _group(info, "b").pinned == ["concatenated at cat"]
    cat = _group(info, "grouped", "in")
    assert cat.pinned == ["concatenated at cat", "read by grouped conv grouped (2 groups)"]
    assert _group(info, "grouped").pinned == ["output of grouped conv grouped"]
    assert _group(info, "c").pinned == ["passes through roll() at roll"]
    assert _group(info, "d", "in").pinned == ["passes through PixelShuffle shuffle"]
    assert _group(info, "d").shrinkable  # a width where nothing forbids it


def test_a_one_channel_map_broadcast_in_a_multiply_stays_one_channel_and_a_sub_is_a_residual():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.conv, self.attn, self.other = nn.Conv2d(1, 4, 1), nn.Conv2d(4, 6, 1), nn.Conv2d(6, 1, 1), \
                nn.Conv2d(4, 6, 1)
            self.fc = nn.Linear(6, 2)

        def forward(self, x):
            x = self.stem(x)
            y = self.conv(x)
            y = y * torch.sigmoid(self.attn(y)) - self.other(x)
            return self.fc(y.mean((2, 3)))

    info = analyse(Net(), (1, 5, 5))
    # the one-channel map keeps its channel (grown to 2 at width 1.5, it would no longer broadcast)
    assert _group(info, "attn").pinned == ["broadcast at mul"]
    y = _group(info, "conv")
    assert y is _group(info, "other") and y.pinned == ["feeds the residual add at sub"]


@pytest.mark.parametrize("act, nonneg", [
    (lambda x: F.relu(x), True),
    (lambda x: torch.relu(x), True),
    (lambda x: x.relu(), True),
    (lambda x: F.relu6(x), True),
    (lambda x: torch.clamp(x, min=0), True),
    (lambda x: torch.clamp(x, 0, 6), True),
    (lambda x: torch.clip(x, min=0.5), True),
    (lambda x: x.clamp(min=0), True),
    (lambda x: x.clamp(0.0, 6.0), True),
    (lambda x: torch.sigmoid(x), True),
    (lambda x: F.max_pool2d(F.relu(x), 2), True),  # pooling keeps the sign
    (lambda x: F.relu(x) + F.relu6(x), True),
    (lambda x: F.relu(x) * 2.0, True),
    (lambda x: torch.clamp(x, min=-1), False),
    (lambda x: torch.clamp(x, max=6), False),
    (lambda x: x.clamp(max=6), False),
    (lambda x: F.relu(x) * -1.0, False),
    (lambda x: F.relu(x) - F.relu6(x), False),
    (lambda x: F.relu(x) + x, False),
    (lambda x: F.silu(x), False),  # SiLU and hard-swish dip below zero
    (lambda x: F.hardswish(x), False),
    (lambda x: torch.tanh(x), False),
    (lambda x: x, False),
])
def test_a_layer_input_is_unsigned_only_where_the_graph_proves_it_non_negative(act, nonneg):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.conv = nn.Conv2d(2, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.conv(act(self.stem(x)))

    info = analyse(Net(), (2, 4, 4))
    assert info.layers["conv"].input_nonneg is nonneg
    assert info.layers["stem"].input_nonneg is False  # the network input


@pytest.mark.parametrize("module, nonneg", [
    (nn.ReLU(), True), (nn.ReLU6(inplace=True), True), (nn.Sigmoid(), True), (nn.Hardsigmoid(), True),
    (nn.Sequential(nn.ReLU(), nn.MaxPool2d(2), nn.Dropout()), True), (nn.Hardswish(), False), (nn.SiLU(), False),
    (nn.GELU(), False), (nn.Identity(), False),
])
def test_activation_modules_prove_non_negative_inputs(module, nonneg):
    net = nn.Sequential(nn.Conv2d(1, 3, 1), module, nn.Conv2d(3, 3, 1))
    assert analyse(net, (1, 4, 4)).layers["2"].input_nonneg is nonneg


class _MyConv(nn.Conv2d):
    """A subclass that keeps Conv2d's forward: still a layer to convert."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tag = "mine"


class _ScaledConv(nn.Conv2d):
    def forward(self, x):
        return 2 * F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


def test_conv_subclasses_are_layers_unless_they_bring_their_own_forward():
    info = analyse(nn.Sequential(_MyConv(1, 4, 3), nn.ReLU(), _MyConv(4, 4, 3)), (1, 8, 8))
    assert list(info.layers) == ["0", "2"]
    with pytest.raises(QsposError, match=r"cannot convert 1: .*_ScaledConv subclasses Conv2d with its own forward"):
        analyse(nn.Sequential(nn.Conv2d(1, 4, 3), _ScaledConv(4, 4, 3)), (1, 8, 8))


def test_a_layer_whose_weight_the_forward_reads_is_refused():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4, 4)

        def forward(self, x):
            x = self.conv(x).mean((2, 3))
            return self.fc(x) @ self.fc.weight  # a tied output projection

    with pytest.raises(QsposError, match="cannot convert fc: the forward reads its weight directly"):
        analyse(Tied(), (1, 6, 6))


def test_a_forward_that_branches_on_values_is_refused_in_one_line():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 1)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(QsposError, match="torch.fx cannot trace Net: .*control flow") as e:
        analyse(Net(), (1, 4, 4))
    assert "\n" not in str(e.value)


def test_a_forward_that_fails_on_the_input_shape_is_refused():
    with pytest.raises(QsposError, match=r"a forward of a \(3, 8, 8\) input failed"):
        analyse(nn.Sequential(nn.Conv2d(1, 2, 1)), (3, 8, 8))


@pytest.mark.parametrize("model, message", [
    (nn.Sequential(nn.Flatten(2), nn.Conv1d(3, 4, 3)), "cannot convert 1: Conv1d"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(4, 4, 2)), "cannot convert 1: ConvTranspose2d"),
    (nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(2), nn.Linear(64, 8)),
     r"cannot convert 2: a Linear on a 3-D input \(2, 4, 64\)"),
])
def test_layers_without_a_searchable_form_are_refused_not_left_in_float(model, message):
    """A layer qspos cannot quantize would be missing from every BitOps budget: refused, named."""
    with pytest.raises(QsposError, match=message):
        analyse(model, (3, 8, 8))

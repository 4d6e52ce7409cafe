"""``analyse``: channel groups, what pins them, and which layer inputs are provably >= 0, on tiny
hand-written models."""

from __future__ import annotations

import collections

import pytest
import torch
import torch.nn.functional as F
import torchvision
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
    assert _group(info, "attn").pinned == ["broadcast at mul", "one channel"]
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
     r"cannot convert 2: a Linear applied to a 3-D input \(2, 4, 64\) .*write it as a 1x1 Conv2d"),
    # ConvNeXt's block: a Linear over the channels of a channels-last (N, H, W, C) tensor
    (nn.Sequential(nn.Conv2d(3, 4, 1), torchvision.ops.Permute([0, 2, 3, 1]), nn.Linear(4, 8)),
     r"cannot convert 2: a Linear applied to a 4-D input \(2, 8, 8, 4\) \(as in ConvNeXt's channels-last blocks\)"),
])
def test_layers_without_a_searchable_form_are_refused_not_left_in_float(model, message):
    """A layer qspos cannot quantize would be missing from every BitOps budget: refused, named."""
    with pytest.raises(QsposError, match=message):
        analyse(model, (3, 8, 8))


# ---------------------------------------------------------------------------- issue 29

_Out = collections.namedtuple("_Out", "logits aux")


class _AuxHead(nn.Module):
    """GoogLeNet's pattern: an auxiliary classifier whose logits come out in train mode only."""

    def __init__(self, pack=_Out):
        super().__init__()
        self.pack = pack
        self.stem, self.body = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 3)
        self.aux, self.fc = nn.Linear(8, 10), nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        aux = self.aux(x.mean((2, 3))) if self.training else None
        y = self.fc(F.relu(self.body(x)).mean((2, 3)))
        return self.pack(y, aux) if self.training else y


@pytest.mark.parametrize("pack, what", [(_Out, r"2 values \(_Out\)"), (lambda y, a: (y, a), r"2 values \(tuple\)"),
                                        (lambda y, a: {"out": y, "aux": a}, r"2 values \(dict\)")])
@pytest.mark.parametrize("training", [True, False])
def test_a_model_with_extra_train_mode_outputs_is_refused_in_one_line(pack, what, training):
    """Its classifier was searched as an inner layer (5 logits for 10 classes at width 0.5), then
    cost and train failed on a KeyError: refused, in whichever mode it is given."""
    model = _AuxHead(pack).train(training)
    with pytest.raises(QsposError, match=f"_AuxHead's forward returns {what} in train mode, not one tensor") as e:
        analyse(model, (3, 12, 12))
    assert "\n" not in str(e.value) and "aux_logits=False" in str(e.value)
    assert model.training is training


def test_the_output_layers_are_found_from_the_graph_output():
    """A classifier followed by an op the analysis does not model is still the fixed last layer."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 10), nn.LogSoftmax(1))
    info = analyse(net, (3, 9, 9))
    assert (info.first, info.last) == (["0"], ["5"])
    assert info.groups[info.layers["5"].out_group].pinned == ["passes through LogSoftmax 6"]


class _Split(nn.Module):
    """A conv whose 16 output channels go through ``split`` into two 8-channel branches."""

    def __init__(self, split):
        super().__init__()
        self.split = split
        self.stem, self.conv = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 1)
        self.a, self.b = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        p, q = self.split(self.conv(F.relu(self.stem(x))))
        return self.fc(torch.cat([self.a(p), self.b(q)], 1).mean((2, 3)))


@pytest.mark.parametrize("split, op", [
    (lambda y: torch.chunk(y, 2, dim=1), "chunk()"),
    (lambda y: y.chunk(2, 1), ".chunk()"),
    (lambda y: torch.split(y, 8, dim=1), "split()"),
    (lambda y: y.split([8, 8], 1), ".split()"),
    (lambda y: y.view(y.size(0), 2, 8, y.size(2), y.size(3)).unbind(1), ".view()"),
    (lambda y: y.reshape(y.shape[0], 2, 8, y.shape[2], y.shape[3]).unbind(1), ".reshape()"),
    (lambda y: torch.unbind(y.unflatten(1, (2, 8)), 1), ".unflatten()"),
    (lambda y: (y[:, :8], y[:, 8:]), "getitem()"),
])
def test_a_channel_split_pins_its_channels(split, op):
    """Any op the analysis does not model exactly keeps its channels (a chunk of a shrunk conv
    used to crash every path at width 0.5)."""
    conv = _group(analyse(_Split(split), (3, 8, 8)), "conv")
    assert not conv.shrinkable and any(r.startswith(f"passes through {op}") for r in conv.pinned), conv.pinned


@pytest.mark.parametrize("op, out", [
    (lambda y: F.pad(y, (0, 0, 0, 0, 0, 2)), 8),  # pads the channels
    (lambda y: y.sum(1, keepdim=True).expand_as(y), 6),  # a reduction over the channels
    (lambda y: y.mean(1, keepdim=True) * y, 6),
    (lambda y: y.amax(1, keepdim=True), 1),
    (lambda y: y * y.mean((2, 3)).view(-1).mean(), 6),  # a flatten to 1-D mixes the batch in
    (lambda y: y + y.mean((0, 2, 3)).view(1, -1, 1, 1), 6),  # a mean over the batch
    (lambda y: y.permute(0, 1, 3, 2) + y, 6),
    (lambda y: y.transpose(1, 2), 3),
])
def test_ops_on_channels_the_analysis_does_not_model_pin_them(op, out):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.conv, self.fc = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 6, 1), nn.Linear(out, 2)

        def forward(self, x):
            return self.fc(op(self.conv(self.stem(x))).mean((2, 3)))

    assert _group(analyse(Net(), (3, 3, 3)), "conv").pinned


def test_a_lower_rank_operand_broadcast_over_the_last_dims_pins_both():
    """A (N, C) tensor times an (N, C, H, W) one lines up with (H, W), not the channels."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.conv, self.gate = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.Linear(4, 4)

        def forward(self, x):
            y = self.conv(self.stem(x))
            return (y * self.gate(y.mean((2, 3)))).mean((2, 3))

    info = analyse(Net(), (3, 2, 4))
    assert _group(info, "conv").pinned == ["broadcast with a 2-D tensor at mul", "network output"]
    assert _group(info, "gate").pinned == ["broadcast at mul"]


class _Denoiser(nn.Module):
    """A residual denoiser: the output conv predicts the noise, subtracted from the 1-channel input."""

    def __init__(self):
        super().__init__()
        self.head, self.body, self.out = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), \
            nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x):
        return x - self.out(F.relu(self.body(F.relu(self.head(x)))))


def test_a_one_channel_output_conv_in_a_residual_subtraction_is_the_fixed_last_layer():
    info = analyse(_Denoiser(), (1, 8, 8))
    assert (info.first, info.last) == (["head"], ["out"])
    out = _group(info, "out")
    assert out is _group(info, "head", "in")  # coupled with the network input
    assert out.pinned == ["network input", "feeds the residual add at sub", "network output", "one channel"]
    assert _group(info, "body").shrinkable


def test_a_group_of_one_channel_keeps_it():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 1, 1), nn.ReLU(), nn.Conv2d(1, 4, 1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    assert analyse(net, (3, 4, 4)).groups[analyse(net, (3, 4, 4)).layers["2"].out_group].pinned == ["one channel"]


class _Counting(nn.Module):
    """A module outside torch.nn that counts its train-mode calls in a buffer, as timm's
    BatchNormAct2d does (fx traces through it, keeping the train-mode branch)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        if self.training:
            self.calls.add_(1)
        return x


def test_analyse_leaves_the_model_buffers_and_mode_as_they_were():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), _Counting(), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for training in (True, False):
        net.train(training)
        analyse(net, (3, 4, 4))
        assert net.training is training and all(m.training is training for m in net.modules())
        assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())

"""Any CNN becomes a supernet (issue 12): torchvision's zoo, a plain nn.Sequential CNN and a timm
model, with random weights on 32x32 inputs.

For each model: the conversion succeeds and covers every Conv2d/Linear; the max-width 16-bit path
computes the float model's output; random archs run forward and backward; the extracted Brevitas
net computes its supernet path; the BitOps of uniform archs equal a count made with hooks on the
float model. Each model is built and converted once for the module (``case``).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from qspos.core.arch import Choice
from qspos.core.cost import CostModel
from qspos.core.layers import SearchableLayer, SlicedBatchNorm2d, channels
from qspos.core.supernet import Supernet
from qspos.models import Converted, build_model, convert
from qspos.runtime.config import load_config
from quant_kernels import best_backend

SIZE = 32
SPACE = load_config({"space": {
    "weight_bits": [1, 4, 16], "act_bits": [2, 16], "width_multipliers": [0.5, 1.0, 1.5],
    # unlike each other, so that a first/last mix-up shows in the BitOps
    "first": {"w_bits": 8, "a_bits": 6}, "last": {"w_bits": 5, "a_bits": 7},
}}).space


def sequential_cnn() -> nn.Sequential:
    """A plain CNN as users write them: a depthwise conv, a flatten of 8x8 pixels, a hidden Linear."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
        nn.Conv2d(32, 24, 1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(24 * 8 * 8, 48), nn.ReLU(), nn.Dropout(0.2), nn.Linear(48, 10),
    )


def slim_vgg11_bn() -> nn.Module:
    """torchvision's vgg11_bn, its classifier slimmed to 64 hidden units on a 2x2 pool (the
    102M-parameter head would take most of this file's time); still a flatten of several pixels."""
    with torch.device("meta"):  # skip initialising the head that is thrown away
        model = torchvision.models.vgg11_bn(num_classes=10)
    model.avgpool = nn.AdaptiveAvgPool2d(2)
    model.classifier = nn.Sequential(nn.Linear(512 * 4, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, 64),
                                     nn.ReLU(True), nn.Dropout(), nn.Linear(64, 10))
    model.to_empty(device="cpu")
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return model


# id -> (spec, args); every model is built by build_model, as a config would name it
MODELS = {
    "resnet18": ("torchvision:resnet18", {}),
    "resnet50": ("torchvision:resnet50", {}),
    "mobilenet_v2": ("torchvision:mobilenet_v2", {}),
    "mobilenet_v3_small": ("torchvision:mobilenet_v3_small", {}),
    "efficientnet_b0": ("torchvision:efficientnet_b0", {}),
    "vgg11_bn": ("tests.models.test_conversion:slim_vgg11_bn", {}),
    "squeezenet1_1": ("torchvision:squeezenet1_1", {}),
    "resnext50_32x4d": ("torchvision:resnext50_32x4d", {}),
    "sequential": ("tests.models.test_conversion:sequential_cnn", {}),
    # timm's own layers: a Linear subclass as the classifier, BatchNormAct2d, SqueezeExcite, hard-swish
    "timm_mobilenetv3": ("timm:create_model", {"model_name": "mobilenetv3_small_050", "num_classes": 10}),
}


HEAVY = {"resnet50", "resnext50_32x4d", "efficientnet_b0"}  # one random arch each, not two


@dataclass
class Case:
    name: str
    model: nn.Module  # the float model, eval mode, BN statistics of the warm-up batch
    x: torch.Tensor
    converted: Converted
    supernet: Supernet
    macs: dict[str, int]  # hook-counted MACs of every Conv2d/Linear of the float model, in run order
    top: dict[str, float]  # max |input| of every Conv2d/Linear on x


def _count(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, int], dict[str, float]]:
    """MACs (from each layer's output shape and groups) and max |input| of every Conv2d/Linear."""
    macs, top = {}, {}

    def hook(m: nn.Module, inputs: tuple, out: torch.Tensor, name: str) -> None:
        top[name] = float(inputs[0].abs().max())
        per_sample = out[0].numel()  # C_out * H_out * W_out (Linear: out_features)
        if isinstance(m, nn.Conv2d):
            macs[name] = per_sample * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            macs[name] = per_sample * m.in_features

    hooks = [m.register_forward_hook(lambda m, i, o, n=n: hook(m, i, o, n))
             for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return macs, top


def _build(name: str) -> Case:
    """The model ``name`` built, its BN statistics warmed up, converted."""
    spec, args = MODELS[name]
    torch.manual_seed(0)
    model, notes = build_model(spec, 10, 3, args)
    assert notes == []
    # BN statistics of a warm-up batch (a fresh BN's unit variance would blow activations up)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    warm = torch.randn(32, 3, SIZE, SIZE)
    with torch.no_grad():
        model.train()(warm)
    model.eval()
    x = warm[:2]
    macs, top = _count(model, x)
    converted = convert(model, (3, SIZE, SIZE), max(SPACE.width_multipliers), SPACE.tie)
    supernet = Supernet(converted.net, converted.declaration, SPACE)
    supernet.set_quant_backend(best_backend("cpu"))
    return Case(name, model, x, converted, supernet, macs, top)


@pytest.fixture(scope="module", params=list(MODELS))
def case(request) -> Case:
    """Each model once for the module (pytest runs a model's tests together, the models one after
    the other; the tests of one model below ask for it with ``indirect``)."""
    return _build(request.param)


def _fixed_bits(supernet: Supernet, role: str, bits: tuple[int, int]) -> None:
    for layer in supernet.fixed.get(role, []):
        layer.configure_bits((bits[0],), (bits[1],))
        layer.set_active(*bits)


def test_conversion_makes_every_layer_searchable(case):
    """Every Conv2d/Linear the forward runs is a searchable layer under its own name (none left
    in float), in a block or fixed; the first layer and the classifier are fixed."""
    net, entries = case.converted.net, case.converted.layers
    assert [e.name for e in entries] == list(case.macs)
    layers = dict(case.supernet.layer_items())
    assert list(layers) == list(case.macs)
    assert not [n for n, m in net.named_modules()
                if isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(m, SearchableLayer)]
    first, *_, last = case.macs
    roles = {e.name: e.role for e in entries}
    assert roles[first] == "first" and roles[last] == "last"
    assert [n for n, r in roles.items() if r == "first"] == [first]
    for e in entries:
        assert (e.choice_point is None) == (e.role != "searched")
        assert e.choice_point is None or e.choice_point in case.supernet.space.names
        assert (e.width_point is None) == bool(e.width_note)
    assert isinstance(case.supernet.net, type(case.model))  # converted in place: the model's own class


def test_max_width_16_bit_path_is_the_float_model(case):
    """Every choice point at 16-bit weights and activations and width 1.0 (the model's channels,
    the first of the max-width kernels), activation thresholds at each layer's max |input|."""
    supernet = case.supernet.eval()
    try:
        for role in ("first", "last"):
            _fixed_bits(supernet, role, (16, 16))
        with torch.no_grad():
            for name, layer in supernet.layer_items():
                layer.input_quant.threshold.fill_(case.top[name] * 1.001)
            supernet.set_arch(supernet.space.uniform(16, 16))
            expected, got = case.model(case.x), supernet(case.x)
    finally:
        _fixed_bits(supernet, "first", (SPACE.first.w_bits, SPACE.first.a_bits))
        _fixed_bits(supernet, "last", (SPACE.last.w_bits, SPACE.last.a_bits))
    assert got.shape == expected.shape == (2, 10)
    assert float((got - expected).abs().max()) <= 2e-2 * float(expected.abs().max())


def test_extract_computes_the_supernet_path(case):
    """The extracted Brevitas net of a random arch computes the supernet's path, from the first k
    output and input channels of each max-width kernel."""
    supernet = case.supernet.eval()
    arch = supernet.space.sample(random.Random(1))
    net = supernet.extract(arch).eval()
    assert not any(isinstance(m, (SearchableLayer, SlicedBatchNorm2d)) for m in net.modules())
    for name, layer in supernet.layer_items():  # (before a forward: Brevitas clips binary weights in place)
        static, (k_in, k_out) = net.get_submodule(name), layer.active[:2]
        if getattr(layer, "depthwise", False):  # its input channels follow its output channels
            k_in = k_out
        assert getattr(static, "in_channels", getattr(static, "in_features", None)) == k_in, name
        assert static.weight.shape[0] == k_out, name
        assert torch.equal(static.weight, layer.weight[:k_out, : static.weight.shape[1]]), name
    with torch.no_grad():
        supernet.set_arch(arch)
        expected = supernet(case.x)
        got = net(case.x)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_uniform_bitops_equal_a_hook_count_on_the_float_model(case):
    costs = CostModel(case.supernet, (3, SIZE, SIZE))
    roles = {e.name: e.role for e in case.converted.layers}
    fixed = {"first": (SPACE.first.w_bits, SPACE.first.a_bits), "last": (SPACE.last.w_bits, SPACE.last.a_bits)}
    for bits in [(2, 4), (16, 16), (1, 2)]:
        cost = costs.cost(case.supernet.space.uniform(*bits))
        expected = {n: (macs, *fixed.get(roles[n], bits)) for n, macs in case.macs.items()}
        assert {lc.name: (lc.macs, lc.w_bits, lc.a_bits) for lc in cost.layers} == expected
        assert cost.macs == sum(case.macs.values())
        assert cost.bitops == sum(m * w * a for m, w, a in expected.values())


def test_a_width_choice_cuts_its_channel_group_by_the_same_first_k_everywhere(case):
    """Width 0.5 at every choice point: each group's producers, BatchNorms and consumers all keep
    the same first k channels, and the forward runs at those shapes."""
    supernet = case.supernet.eval()
    arch = supernet.space.uniform(4, 16)
    arch = arch.replace(**{p.name: Choice(4, 16, 0.5) for p in supernet.space.points if p.widths})
    supernet.set_arch(arch)
    slots = [s for b in case.converted.declaration.blocks for s in b.widths]
    assert slots or case.name == "resnext50_32x4d"  # its inner channels are all read by grouped convs
    for slot in slots:
        k = channels(slot.base, 0.5)
        assert [layer.active[1] for layer in slot.producers] == [k] * len(slot.producers)
        assert [int(bn.num_active) for bn in slot.norms] == [k] * len(slot.norms)
        assert [layer.active[0] for layer in slot.consumers] == [k] * len(slot.consumers)
    outputs = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: outputs.__setitem__(n, o.shape[1]))
             for n, m in supernet.layer_items()]
    with torch.no_grad():
        supernet(case.x)
    for h in hooks:
        h.remove()
    cut = {id(layer): channels(s.base, 0.5) for s in slots for layer in s.producers}
    for name, layer in supernet.layer_items():
        assert outputs[name] == cut.get(id(layer), layer.out_max), name


def test_random_archs_run_forward_and_backward(case):
    supernet = case.supernet
    buffers = {k: v.clone() for k, v in supernet.state_dict().items()}  # train mode moves BN statistics
    rng = random.Random(0)
    try:
        supernet.train()
        for _ in range(1 if case.name in HEAVY else 2):
            arch = supernet.space.sample(rng)
            supernet.set_arch(arch)
            supernet.zero_grad(set_to_none=True)
            out = supernet(case.x)
            assert out.shape == (2, 10) and torch.isfinite(out).all()
            out.square().mean().backward()
            for name, layer in supernet.layer_items():
                assert layer.weight.grad is not None, name
                assert torch.isfinite(layer.weight.grad).all(), name
    finally:
        supernet.eval().load_state_dict(buffers)
        supernet.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------- what the graph decides


@pytest.mark.parametrize("case", ["mobilenet_v2"], indirect=True)
def test_mobilenet_v2_quantizes_the_linear_bottleneck_signed(case):
    """Unsigned inputs only after ReLU6: the project conv's output (no activation) feeding the next
    block's expand conv, and the last 1x1 conv, are read signed."""
    entries = {e.name: e for e in case.converted.layers}
    expand = {f"features.{i}.conv.0.0" for i in range(2, 18)}
    signed = {n for n, e in entries.items() if e.input_signed}
    assert signed == {"features.0.0", "features.18.0"} | expand  # the network input, bottleneck outputs
    assert not entries["features.3.conv.1.0"].input_signed  # depthwise, after ReLU6
    assert not entries["features.3.conv.2"].input_signed  # project, after ReLU6
    assert not entries["classifier.1"].input_signed  # pooled ReLU6 output
    assert entries["features.3.conv.1.0"].kind == "depthwise conv"
    # the expansion channels (expand conv, depthwise conv, their BNs) are the width; the
    # bottleneck channels are pinned by the residual adds
    e = entries["features.3.conv.0.0"]
    assert e.width_point == "features.3" and entries["features.3.conv.1.0"].width_point == "features.3"
    assert entries["features.3.conv.2"].width_point is None
    assert "residual add in features.3" in entries["features.3.conv.2"].width_note


@pytest.mark.parametrize("case", ["squeezenet1_1"], indirect=True)
def test_squeezenet_fire_squeeze_gets_a_width_but_not_the_concatenated_expands(case):
    built = case
    entries = {e.name: e for e in built.converted.layers}
    fires = [n for n, m in built.model.named_modules() if type(m).__name__ == "Fire"]
    assert fires == [f"features.{i}" for i in (3, 4, 6, 7, 9, 10, 11, 12)]
    for fire in fires:
        squeeze = entries[f"{fire}.squeeze"]
        assert squeeze.width_point == fire and squeeze.width_note == ""
        for branch in ("expand1x1", "expand3x3"):
            e = entries[f"{fire}.{branch}"]
            assert e.choice_point == fire and e.width_point is None
            assert "concatenated" in e.width_note
    assert all(p.widths for p in built.supernet.space.points)


class _ScaledResNet(torchvision.models.ResNet):
    """A ResNet subclass whose forward changes the output: the conversion must keep it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3.0 * super().forward(x) - 1.0


def test_a_converted_model_keeps_its_own_forward():
    torch.manual_seed(0)
    model = _ScaledResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=10).eval()
    converted = convert(model, (3, SIZE, SIZE), max(SPACE.width_multipliers))
    assert type(converted.net) is _ScaledResNet
    supernet = Supernet(converted.net, converted.declaration, SPACE).eval()
    _fixed_bits(supernet, "first", (16, 16))
    _fixed_bits(supernet, "last", (16, 16))
    x = torch.randn(2, 3, SIZE, SIZE)
    top = _count(model, x)[1]
    with torch.no_grad():
        for name, layer in supernet.layer_items():
            layer.input_quant.threshold.fill_(top[name] * 1.001)
        supernet.set_arch(supernet.space.uniform(16, 16))
        expected, got = model(x), supernet(x)
        plain = torchvision.models.ResNet.forward(model, x)
    torch.testing.assert_close(expected, 3.0 * plain - 1.0)
    assert float((got - expected).abs().max()) <= 1e-2 * float(expected.abs().max())


@pytest.mark.parametrize("case", ["resnext50_32x4d"], indirect=True)
def test_grouped_convs_keep_their_channels_and_say_why(case):
    entries = {e.name: e for e in case.converted.layers}
    assert entries["layer1.0.conv2"].kind == "grouped conv"
    assert re.search(r"grouped conv layer1\.0\.conv2 \(32 groups\)", entries["layer1.0.conv1"].width_note)
    assert entries["layer1.0.conv2"].width_note == "output of grouped conv layer1.0.conv2"
    assert entries["conv1"].kind == "conv" and entries["fc"].kind == "linear"
    assert all(p.widths is None for p in case.supernet.space.points)  # bits only, every block


@pytest.mark.parametrize("case", ["resnet50"], indirect=True)
def test_a_grown_model_keeps_its_weights_and_statistics_in_the_first_channels(case):
    """At max width 1.5 the model's weights and BN statistics fill the first channels; the added
    BN channels start at scale 1, shift 0; a bottleneck's two inner groups share its choice point."""
    built = case
    block, ref = built.converted.net.layer1[0], built.model.layer1[0]
    assert block.conv2.weight.shape[:2] == (96, 96) and block.conv3.weight.shape[:2] == (256, 96)
    assert torch.equal(block.conv2.weight[:64, :64], ref.conv2.weight)
    assert torch.equal(block.conv3.weight[:, :64], ref.conv3.weight)
    assert torch.equal(block.downsample[0].weight, ref.downsample[0].weight)
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(block.bn1, name)[:64], getattr(ref.bn1, name)), name
    assert (block.bn1.weight[64:] == 1).all() and (block.bn1.bias[64:] == 0).all()
    slots = built.supernet.bindings["layer1.0"].slots
    assert [(s.base, s.producers) for s in slots] == [(64, [block.conv1]), (64, [block.conv2])]
    arch = built.supernet.space.uniform(4, 16).replace(**{"layer1.0": Choice(4, 16, 0.5)})
    built.supernet.set_arch(arch)
    assert [block.conv1.active[:2], block.conv2.active[:2], block.conv3.active[:2]] == [(64, 32), (32, 32), (32, 256)]


class _SpatialAttention(nn.Module):
    """A one-channel map gating every channel (CBAM-style)."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv, self.attn = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 1, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = F.relu(self.conv(F.relu(self.stem(x))))
        y = y * torch.sigmoid(self.attn(y))
        return self.fc(y.mean((2, 3)))


def test_a_one_channel_map_broadcast_over_the_channels_survives_max_width():
    converted = convert(_SpatialAttention(), (3, 12, 12), 1.5)
    entries = {e.name: e for e in converted.layers}
    assert entries["conv"].width_point == "conv" and entries["attn"].width_note == "broadcast at mul; one channel"
    supernet = Supernet(converted.net, converted.declaration, SPACE)
    assert supernet.net.attn.out_max == 1
    for arch in supernet.space.extremes():
        supernet.set_arch(arch)
        assert supernet(torch.randn(2, 3, 12, 12)).shape == (2, 10)

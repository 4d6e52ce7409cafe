import copy
import random

import pytest
import torch
from brevitas.nn import QuantConv2d, QuantLinear
from torch import nn

from qspos.core.arch import Choice
from qspos.core.backbone import SearchBlock, SpaceDeclaration
from qspos.core.layers import BitChoiceQuantizer, SearchableConv2d, SearchableLayer, SearchableLinear, SlicedBatchNorm2d
from qspos.core.supernet import Supernet
from qspos.errors import QsposError
from qspos.models import convert
from qspos.runtime.build import build_supernet
from qspos.runtime.config import load_config

RESNET18_32 = {
    "model": {"name": "resnet18", "num_classes": 10, "in_channels": 3, "input_size": 32},
    "space": {"pairs": [[1, 2], [2, 2], [1, 4], [2, 4], [3, 4], [4, 4]], "width_multipliers": [0.5, 1.0, 1.5]},
}
SMALL_LAYER_TIE = {
    "model": {"name": "resnet_small", "num_classes": 10, "in_channels": 1, "input_size": 16,
              "args": {"depth": 8, "widths": [8, 16, 32]}},
    "space": {"weight_bits": [1, 2, 3, 8], "act_bits": [1, 2, 4], "width_multipliers": [0.25, 0.5, 1.0, 1.5],
              "tie": "layer"},
}
DYNAMIC = (SearchableLayer, SlicedBatchNorm2d, BitChoiceQuantizer)


@pytest.mark.parametrize("config, n_archs", [
    (RESNET18_32, 3),
    ("small", 4),
    (SMALL_LAYER_TIE, 4),
    ("small-per-bits-bn", 4),
], ids=["resnet18-block", "resnet_small-block", "resnet_small-layer", "resnet_small-per-bits-bn"])
def test_extract_computes_exactly_the_supernet_path(config, n_archs, small_cfg, perturb):
    if isinstance(config, str):
        cfg = small_cfg if config == "small" else load_config(small_cfg, ["space.batchnorm=per_bits"])
    else:
        cfg = load_config(config)
    torch.manual_seed(0)
    supernet = perturb(build_supernet(cfg)).eval()
    x = torch.randn(4, *cfg.input_shape)
    rng = random.Random(0)
    archs = [*supernet.space.extremes(), *(supernet.space.sample(rng) for _ in range(n_archs - 2))]
    for arch in archs:
        net = supernet.extract(arch).eval()
        with torch.no_grad():
            supernet.set_arch(arch)
            expected = supernet(x)
            got = net(x)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        assert not any(isinstance(m, DYNAMIC) for m in net.modules())
        layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        assert all(type(m) in (QuantConv2d, QuantLinear) for m in layers)
        assert len(layers) == len(list(supernet.layer_items()))


def test_extract_is_independent_of_the_supernet(small_cfg, perturb):
    supernet = perturb(build_supernet(small_cfg)).eval()
    arch = supernet.space.sample(random.Random(3))
    net = supernet.extract(arch).eval()
    x = torch.randn(2, *small_cfg.input_shape)
    with torch.no_grad():
        before = net(x)
        for p in supernet.parameters():
            p.add_(1.0)
        supernet.set_arch(supernet.space.extremes()[0])
        torch.testing.assert_close(net(x), before, rtol=0, atol=0)


def test_extracted_channels_follow_the_width_choice(small_cfg):
    supernet = build_supernet(small_cfg)
    lo, hi = supernet.space.extremes()
    arch = hi.replace(**{"layer2.0": Choice(2, 4, 0.5)})
    net = supernet.extract(arch)
    block = net.layer2[0]
    assert block.conv1.out_channels == 8 and block.bn1.num_features == 8 and block.conv2.in_channels == 8
    assert block.conv2.out_channels == 16  # the residual shape never changes
    assert net.layer1[0].conv1.out_channels == 8  # width 1.0 of 8 planes


def test_block_tie_gives_the_shortcut_the_block_bits(small_cfg):
    """DESIGN: bits tied in a block apply to all its convs, the shortcut's included."""
    supernet = build_supernet(small_cfg)
    assert supernet.space.names == ["layer1.0", "layer2.0", "layer3.0"]
    block = supernet.net.layer2[0]
    assert supernet.bindings["layer2.0"].layers == [block.conv1, block.conv2, block.downsample[0]]
    arch = supernet.space.extremes()[1].replace(**{"layer2.0": Choice(2, 4, 0.5)})
    supernet.set_arch(arch)
    assert block.conv1.active == (8, 8, 2, 4)
    assert block.conv2.active == (8, 16, 2, 4)
    assert block.downsample[0].active == (8, 16, 2, 4)
    assert int(block.bn1.num_active) == 8
    assert supernet.net.conv1.active[2:] == (8, 8) and supernet.net.fc.active[2:] == (8, 8)  # fixed


def test_layer_tie_makes_one_choice_point_per_layer():
    supernet = build_supernet(load_config(SMALL_LAYER_TIE))
    space = supernet.space
    assert space.names == [
        "layer1.0.conv1", "layer1.0.conv2",
        "layer2.0.conv1", "layer2.0.conv2", "layer2.0.downsample.0",
        "layer3.0.conv1", "layer3.0.conv2", "layer3.0.downsample.0",
    ]
    assert space["layer1.0.conv1"].widths == (0.25, 0.5, 1.0, 1.5)  # the width goes with conv1
    assert space["layer1.0.conv2"].widths is None and space["layer2.0.downsample.0"].widths is None
    pairs, widths = 4 * 3, 4
    assert space.size == (pairs * widths * pairs) * (pairs * widths * pairs * pairs) ** 2
    block = supernet.net.layer2[0]
    arch = space.extremes()[1].replace(**{
        "layer2.0.conv1": Choice(1, 2, 0.25), "layer2.0.downsample.0": Choice(3, 1)})
    supernet.set_arch(arch)
    assert block.conv1.active == (8, 4, 1, 2)
    assert block.conv2.active == (4, 16, 8, 4)
    assert block.downsample[0].active == (8, 16, 3, 1)


def test_set_arch_rejects_archs_outside_the_space(small_cfg):
    supernet = build_supernet(small_cfg)
    hi = supernet.space.extremes()[1]
    with pytest.raises(QsposError, match="not in its domain"):
        supernet.set_arch(hi.replace(**{"layer1.0": Choice(3, 3, 1.0)}))
    with pytest.raises(QsposError, match="missing"):
        supernet.set_arch(hi.replace(**{"layer9.0": Choice(2, 2, 1.0)}))


def test_supernet_runs_every_path_in_training_mode(small_cfg):
    supernet = build_supernet(small_cfg).train()
    rng = random.Random(0)
    x = torch.randn(4, *small_cfg.input_shape)
    for _ in range(3):
        supernet.set_arch(supernet.space.sample(rng))
        supernet(x).sum().backward()
    assert all(p.grad is not None for p in supernet.parameters())


class _Stray(nn.Module):
    """A network with a searchable layer (``mid``) that its declaration puts in no block and
    does not fix."""

    def __init__(self):
        super().__init__()
        self.first, self.last = SearchableConv2d(1, 4, 3), SearchableLinear(4, 2)
        self.mid, self.block = SearchableConv2d(4, 4, 3), SearchableConv2d(4, 4, 3)


def test_a_layer_in_no_block_is_an_error(small_cfg):
    net = _Stray()
    declaration = SpaceDeclaration([SearchBlock("block", {"": net.block})], {"first": [net.first], "last": [net.last]})
    with pytest.raises(QsposError, match=r"in no block and not fixed: \['mid'\]"):
        Supernet(net, declaration, small_cfg.space)
    declaration.blocks.append(SearchBlock("mid", {"": net.mid}))
    assert Supernet(net, declaration, small_cfg.space).space.names == ["block", "mid"]


def test_a_declaration_with_nothing_to_search_is_refused(small_cfg):
    net = _Stray()
    fixed = SpaceDeclaration([], {"first": [net.first, net.mid, net.block], "last": [net.last]})
    with pytest.raises(QsposError, match="the model has nothing to search: every layer is fixed"):
        Supernet(net, fixed, small_cfg.space)
    # a model whose only layers are the fixed first and last ones
    converted = convert(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 2)),
                        (1, 16, 16))
    assert converted.declaration.blocks == []
    with pytest.raises(QsposError, match="nothing to search"):
        Supernet(converted.net, converted.declaration, small_cfg.space)


@pytest.mark.parametrize("batchnorm", ["shared", "per_bits"])
def test_masked_compute_equals_the_sliced_path(small_cfg, perturb, batchnorm):
    """Max-width compute with channel masks (what torch.compile trains) gives every path the
    values, BN statistics and gradients of the sliced compute, up to float summation order."""
    import random

    torch.manual_seed(0)
    sliced = perturb(build_supernet(load_config(small_cfg, [f"space.batchnorm={batchnorm}"]), "cpu")).train()
    masked = copy.deepcopy(sliced)
    masked.set_masked(True)
    x = torch.randn(8, 1, 16, 16)
    rng = random.Random(0)
    for _ in range(6):
        arch = sliced.space.sample(rng)
        for net in (sliced, masked):
            net.set_arch(arch)
            net.zero_grad()
            net(x).square().mean().backward()
        torch.testing.assert_close(masked(x), sliced(x), rtol=1e-4, atol=1e-5)
        for (name, a), b in zip(sliced.named_buffers(), masked.buffers()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
        parts = sliced.active_slices()
        for (name, p), q in zip(sliced.named_parameters(), masked.parameters()):
            grad_p = torch.zeros_like(p) if p.grad is None else p.grad
            grad_q = torch.zeros_like(q) if q.grad is None else q.grad
            index = parts.get(p, (...,))
            torch.testing.assert_close(grad_q[index], grad_p[index], rtol=1e-3, atol=1e-6, msg=name)
            outside = torch.ones_like(grad_q, dtype=torch.bool)
            outside[index] = False
            assert not grad_q[outside].any(), f"{name}: gradient outside the active path"
    masked.set_masked(False)
    assert isinstance(masked.extract(arch).layer1[0].conv1, torch.nn.Module)


def test_per_bit_width_batchnorm_follows_the_weight_bits_of_the_layer_it_reads(small_cfg):
    """Each BatchNorm after a searched conv keeps one affine per weight bit-width of that conv, all
    equal to the shared one at the start; a fixed-bit layer's BatchNorm stays shared."""
    cfg = load_config(small_cfg, ["space.batchnorm=per_bits"])
    shared, per_bits = build_supernet(small_cfg).eval(), build_supernet(cfg).eval()
    missing, unexpected = per_bits.load_state_dict(shared.state_dict(), strict=False)
    assert not unexpected and all(k.endswith(("_offsets", "bits_index", "num_active")) for k in missing)
    two, four = per_bits.space.uniform(2, 2), per_bits.space.uniform(4, 2)
    x = torch.randn(4, *cfg.input_shape)
    bn, conv = per_bits.net.layer1[0].bn2, per_bits.net.layer1[0].conv2  # bn2: its weight starts at 0
    with torch.no_grad():
        for arch in (two, four):  # zero offsets: the shared net
            shared.set_arch(arch)
            per_bits.set_arch(arch)
            torch.testing.assert_close(per_bits(x), shared(x), rtol=0, atol=0)
        per_bits.set_arch(two)
        assert bn.weight_offsets.shape == (len(conv.weight_quant.bit_choices), bn.num_features)
        assert bn.bits_active == conv.weight_quant.bit_choices.index(2) and not bn.weight.requires_grad
        assert per_bits.net.bn1.weight_offsets is None  # the stem: fixed 8-bit weights
        bn.bias_offsets[bn.bits_active].fill_(5.0)
        shared.set_arch(two)
        assert not torch.equal(per_bits(x), shared(x))
        for net in (per_bits, shared):  # the 4-bit row is still the shared affine
            net.set_arch(four)
        torch.testing.assert_close(per_bits(x), shared(x), rtol=0, atol=0)
    static = per_bits.extract(two).layer1[0].bn2
    torch.testing.assert_close(static.bias, bn.bias + 5.0)

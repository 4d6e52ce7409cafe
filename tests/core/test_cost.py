import random

import pytest
import torch
import torchvision
from torch import nn

from qspos.core.arch import Choice
from qspos.core.cost import CostModel, _price
from qspos.runtime.build import build_supernet
from qspos.runtime.config import load_config


def hook_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """MACs per Conv2d/Linear, counted from the shapes of one real forward (independent of qspos)."""
    macs: dict[str, int] = {}

    def hook(name):
        def count(m, _inputs, out):
            if isinstance(m, nn.Conv2d):
                kh, kw = m.kernel_size
                macs[name] = out[0].numel() * (m.in_channels // m.groups) * kh * kw
            else:
                macs[name] = m.in_features * m.out_features
        return count

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_shape))
    for h in handles:
        h.remove()
    return macs


@pytest.fixture(scope="module")
def resnet18_cost():
    cfg = load_config("configs/imagenet_resnet18.yaml")
    return CostModel(build_supernet(cfg), cfg.input_shape)


@pytest.fixture(scope="module")
def torchvision_macs():
    return hook_macs(torchvision.models.resnet18(), (3, 224, 224))


def test_resnet18_macs_match_torchvision(resnet18_cost, torchvision_macs):
    cost = resnet18_cost.uniform(8, 8)
    ours = {lc.name: lc.macs for lc in cost.layers}
    assert ours == torchvision_macs  # same layer names, same MACs, layer by layer
    residual = sum(m for n, m in torchvision_macs.items() if n.startswith("layer"))
    assert round(sum(torchvision_macs.values()) / 1e9, 3) == 1.814
    assert round(residual / 1e9, 3) == 1.696  # downsample 1x1 convs included
    assert cost.macs == sum(torchvision_macs.values())


@pytest.mark.parametrize("k", [1, 2, 3, 4, 8])
def test_resnet18_uniform_bitops(resnet18_cost, torchvision_macs, k):
    """Uniform kWkA: residual stages at k*k bits per MAC, the fixed 8-bit first conv and
    classifier at 64 on top."""
    residual = sum(m for n, m in torchvision_macs.items() if n.startswith("layer"))
    fixed = torchvision_macs["conv1"] + torchvision_macs["fc"]
    cost = resnet18_cost.uniform(k, k)
    assert cost.searched_bitops == residual * k * k
    assert cost.bitops == residual * k * k + 64 * fixed
    assert resnet18_cost.metrics(resnet18_cost.space.uniform(k, k)) == {
        "macs": cost.macs, "bitops": cost.bitops, "size_bits": cost.size_bits, "searched_bitops": cost.searched_bitops}


def test_resnet18_size_bits(resnet18_cost):
    tv = torchvision.models.resnet18()
    weights = {n[: -len(".weight")]: p.numel() for n, p in tv.named_parameters()
               if n.endswith(".weight") and p.dim() > 1}
    cost = resnet18_cost.uniform(2, 4)
    fixed = weights.pop("conv1") + weights.pop("fc")
    assert cost.size_bits == 2 * sum(weights.values()) + 8 * fixed
    assert cost.bias_params == 1000 and cost.size_bytes == cost.size_bits / 8


def test_width_multipliers_by_hand(small_cfg):
    """ResNet-8, widths 4/8/16 on 8x8 inputs; layer1.0 at 0.5 halves its conv1's output and its
    conv2's input; layer3.0 at 0.5 takes conv1 from 16 to 8 outputs. Numbers worked out by hand."""
    cfg = load_config(small_cfg, ["model.input_size=8", "model.args={depth: 8, widths: [4, 8, 16]}"])
    model = CostModel(build_supernet(cfg), cfg.input_shape)
    arch = model.space.validate(model.space.extremes()[1].replace(**{
        "layer1.0": Choice(2, 4, 0.5), "layer2.0": Choice(4, 2, 1.0), "layer3.0": Choice(2, 2, 0.5)}))
    cost = model.cost(arch)
    # name: (in, out, MACs = H*W*out*in*k*k, w_bits, a_bits)
    expected = {
        "conv1": (1, 4, 8 * 8 * 4 * 1 * 9, 8, 8),
        "layer1.0.conv1": (4, 2, 8 * 8 * 2 * 4 * 9, 2, 4),
        "layer1.0.conv2": (2, 4, 8 * 8 * 4 * 2 * 9, 2, 4),
        "layer2.0.conv1": (4, 8, 4 * 4 * 8 * 4 * 9, 4, 2),
        "layer2.0.conv2": (8, 8, 4 * 4 * 8 * 8 * 9, 4, 2),
        "layer2.0.downsample.0": (4, 8, 4 * 4 * 8 * 4, 4, 2),
        "layer3.0.conv1": (8, 8, 2 * 2 * 8 * 8 * 9, 2, 2),
        "layer3.0.conv2": (8, 16, 2 * 2 * 16 * 8 * 9, 2, 2),
        "layer3.0.downsample.0": (8, 16, 2 * 2 * 16 * 8, 2, 2),
        "fc": (16, 10, 16 * 10, 8, 8),
    }
    got = {lc.name: (lc.in_channels, lc.out_channels, lc.macs, lc.w_bits, lc.a_bits) for lc in cost.layers}
    assert got == expected
    assert cost.macs == sum(v[2] for v in expected.values())
    assert cost.bitops == sum(m * w * a for _, _, m, w, a in expected.values())
    assert cost.searched_bitops == cost.bitops - (2304 + 160) * 64
    params = {"conv1": 36, "layer1.0.conv1": 72, "layer1.0.conv2": 72, "layer2.0.conv1": 288,
              "layer2.0.conv2": 576, "layer2.0.downsample.0": 32, "layer3.0.conv1": 576,
              "layer3.0.conv2": 1152, "layer3.0.downsample.0": 128, "fc": 160}
    assert {lc.name: lc.params for lc in cost.layers} == params
    assert cost.size_bits == sum(params[n] * expected[n][3] for n in params)
    assert cost.bias_params == 10


@pytest.mark.parametrize("tie", ["block", "layer"])
def test_cost_matches_hooks_on_extracted_nets(small_cfg, tie):
    cfg = load_config(small_cfg, [f"space.tie={tie}", "space.width_multipliers=[0.25,0.5,1.0]"])
    supernet = build_supernet(cfg)
    model = CostModel(supernet, cfg.input_shape)
    rng = random.Random(0)
    for _ in range(3):
        arch = supernet.space.sample(rng)
        net = supernet.extract(arch)
        counted = hook_macs(net, cfg.input_shape)
        cost = model.cost(arch)
        assert {lc.name: lc.macs for lc in cost.layers} == counted
        bits = {n: (int(m.weight_quant.bit_width()), int(m.input_quant.bit_width()))
                for n, m in net.named_modules() if n in counted}
        assert {lc.name: (lc.w_bits, lc.a_bits) for lc in cost.layers} == bits


def test_metrics_equal_the_full_report_and_the_memo_is_exact(small_cfg):
    """Group costs are memoised per combination of choices: many archs priced by one model must
    equal pricing each arch from scratch."""
    cfg = load_config(small_cfg, ["space.tie=layer"])
    supernet = build_supernet(cfg)
    model = CostModel(supernet, cfg.input_shape)
    rng = random.Random(1)
    archs = [supernet.space.sample(rng) for _ in range(300)]
    for arch in archs:
        model.metrics(arch)
    for arch in archs[::15]:
        c = model.cost(arch)
        assert c.layers == _price(list(model.plan), arch).layers
        assert model.metrics(arch) == {
            "macs": c.macs, "bitops": c.bitops, "size_bits": c.size_bits, "searched_bitops": c.searched_bitops}


def test_float_operand_counts_32_bits(small_cfg):
    cfg = load_config(small_cfg, ["space.last.a_bits=null", "space.first.w_bits=null"])
    model = CostModel(build_supernet(cfg), cfg.input_shape)
    layers = {lc.name: lc for lc in model.uniform(2, 2).layers}
    assert (layers["fc"].w_bits, layers["fc"].a_bits) == (8, 32)
    assert layers["fc"].bitops == layers["fc"].macs * 8 * 32
    assert (layers["conv1"].w_bits, layers["conv1"].a_bits) == (32, 8)


def test_trace_leaves_the_supernet_as_it_was(small_cfg):
    supernet = build_supernet(small_cfg).train()
    arch = supernet.space.sample(random.Random(2))
    supernet.set_arch(arch)
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    CostModel(supernet, small_cfg.input_shape)
    assert supernet.training
    for k, v in supernet.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_cost_to_dict_is_json_ready(resnet18_cost):
    d = resnet18_cost.uniform(2, 2).to_dict()
    assert {"macs", "bitops", "size_bits", "searched_bitops", "size_bytes", "layers"} <= set(d)
    assert len(d["layers"]) == 21
    assert {"name", "macs", "w_bits", "a_bits", "bitops"} <= set(d["layers"][0])

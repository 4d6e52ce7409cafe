import random

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from qspos.core.cost import CostModel
from qspos.core.layers import SearchableLayer, SlicedBatchNorm2d
from qspos.core.supernet import Supernet
from qspos.errors import QsposError
from qspos.models.convert import searchable_from_torchvision
from qspos.runtime.build import build_supernet
from qspos.runtime.checkpoint import atomic_save
from qspos.runtime.config import load_config

SPACE = {"pairs": [[8, 8], [2, 4], [1, 2]], "width_multipliers": [0.5, 1.0]}


def _cfg(name: str, **args):
    return load_config({"model": {"name": name, "num_classes": 10, "in_channels": 3, "input_size": 64, "args": args},
                        "space": SPACE})


def test_converted_resnet18_costs_like_ours():
    ours, tv = _cfg("resnet18"), _cfg("torchvision_resnet", arch="resnet18")
    ours_net, tv_net = build_supernet(ours), build_supernet(tv)
    assert tv_net.space.names == ours_net.space.names and tv_net.space.size == ours_net.space.size
    ours_cost, tv_cost = CostModel(ours_net, ours.input_shape), CostModel(tv_net, tv.input_shape)
    assert tv_cost.uniform(8, 8) == ours_cost.uniform(8, 8)
    rng = random.Random(0)
    for _ in range(5):
        arch = ours_net.space.sample(rng)
        assert tv_cost.cost(arch) == ours_cost.cost(arch)


def test_weights_and_statistics_are_copied_into_the_first_channels():
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(num_classes=10)
    with torch.no_grad():
        tv.layer2[0].bn1.running_mean.uniform_()
    reference = {k: v.clone() for k, v in tv.state_dict().items()}
    net = searchable_from_torchvision(tv, max_width=1.5)
    block = net.layer2[0]
    assert isinstance(block.conv1, SearchableLayer) and isinstance(block.bn1, SlicedBatchNorm2d)
    assert block.conv1.weight.shape[:2] == (192, 64) and block.conv2.weight.shape[:2] == (128, 192)
    assert torch.equal(block.conv1.weight[:128], reference["layer2.0.conv1.weight"])
    assert torch.equal(block.conv2.weight[:, :128], reference["layer2.0.conv2.weight"])
    assert torch.equal(block.bn1.running_mean[:128], reference["layer2.0.bn1.running_mean"])
    assert torch.equal(block.downsample[0].weight, reference["layer2.0.downsample.0.weight"])
    assert torch.equal(net.fc.bias, reference["fc.bias"]) and torch.equal(net.conv1.weight, reference["conv1.weight"])


def _bottleneck_resnet() -> ResNet:
    return ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10)


@pytest.mark.parametrize("make", [lambda: ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10), _bottleneck_resnet],
                         ids=["basic", "bottleneck"])
def test_extract_of_a_converted_net_computes_the_supernet_path(make, small_cfg, perturb):
    torch.manual_seed(0)
    space = load_config(small_cfg, ["space.width_multipliers=[0.5,1.0,1.5]"]).space
    supernet = perturb(Supernet(searchable_from_torchvision(make(), max_width=1.5), space)).eval()
    x = torch.randn(2, 3, 32, 32)
    rng = random.Random(0)
    for arch in (supernet.space.extremes()[0], supernet.space.sample(rng)):
        net = supernet.extract(arch).eval()
        with torch.no_grad():
            supernet.set_arch(arch)
            torch.testing.assert_close(net(x), supernet(x), rtol=0, atol=1e-6)
        assert not any(isinstance(m, (SearchableLayer, SlicedBatchNorm2d)) for m in net.modules())


def test_bottleneck_width_scales_both_inner_convs(small_cfg):
    supernet = Supernet(searchable_from_torchvision(_bottleneck_resnet(), max_width=1.0), small_cfg.space)
    block = supernet.net.layer1[0]
    assert list(supernet.bindings["layer1.0"].layers) == [block.conv1, block.conv2, block.conv3, block.downsample[0]]
    arch = supernet.space.extremes()[1].replace(**{"layer1.0": supernet.space["layer1.0"].domain[0]})
    supernet.set_arch(arch)  # width 0.5 of 64 inner channels
    assert block.conv1.active[:2] == (64, 32) and block.conv2.active[:2] == (32, 32)
    assert block.conv3.active[:2] == (32, 256)


def test_weights_file_other_input_channels_and_bad_models(tmp_path):
    tv = torchvision.models.resnet18(num_classes=10)
    atomic_save(tv.state_dict(), tmp_path / "r18.pt")
    cfg = load_config(_cfg("torchvision_resnet", arch="resnet18", weights=str(tmp_path / "r18.pt")),
                      ["model.in_channels=1"])
    supernet = build_supernet(cfg).eval()
    assert torch.equal(supernet.net.layer4[1].conv2.weight, tv.layer4[1].conv2.weight)
    assert supernet.net.conv1.weight.shape == (64, 1, 7, 7)  # a new stem for 1-channel inputs
    with torch.no_grad():
        assert supernet(torch.randn(1, 1, 32, 32)).shape == (1, 10)
    with pytest.raises(QsposError, match="does not fit resnet18"):
        build_supernet(load_config(cfg, ["model.num_classes=5"]))
    with pytest.raises(QsposError, match="not a torchvision ResNet"):
        build_supernet(_cfg("torchvision_resnet", arch="vgg11"))
    with pytest.raises(QsposError, match="not a torchvision-style ResNet"):
        searchable_from_torchvision(nn.Sequential(nn.Conv2d(3, 8, 3)))
    grouped = ResNet(Bottleneck, [1, 1, 1, 1], groups=2, width_per_group=32)
    with pytest.raises(QsposError, match="groups=1"):
        searchable_from_torchvision(grouped)


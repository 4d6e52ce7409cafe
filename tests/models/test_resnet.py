"""The built-in ResNets: plain float models, made searchable by the same conversion as any model."""

import pytest
import torch
import torchvision

from qspos.core.layers import SearchableLayer, SlicedBatchNorm2d
from qspos.errors import QsposError
from qspos.models import build_model, list_models
from qspos.models.resnet import BasicBlock, ResNet
from qspos.runtime.build import build_supernet
from qspos.runtime.config import load_config


def test_registry_lists_the_resnets():
    assert {"resnet18", "resnet34", "resnet_small"} <= set(list_models())
    with pytest.raises(QsposError, match="model.name: unknown model 'resnet99'.*resnet18"):
        build_model("resnet99", 10, 3)


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_imagenet_resnets_are_plain_models_with_torchvisions_shapes(name):
    ours, notes = build_model(name, 1000, 3)
    assert type(ours) is ResNet and notes == []
    assert not any(isinstance(m, (SearchableLayer, SlicedBatchNorm2d)) for m in ours.modules())
    tv = getattr(torchvision.models, name)()
    tv_shapes = {k: v.shape for k, v in tv.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == tv_shapes


def _supernet(name: str, widths: list[float], **args):
    return build_supernet(load_config({
        "model": {"name": name, "num_classes": 10, "in_channels": 3, "input_size": 32, "args": args},
        "space": {"weight_bits": [2, 4], "act_bits": [2, 4], "width_multipliers": widths},
    }))


def test_the_converted_resnet18_has_torchvisions_shapes_at_width_1():
    supernet = _supernet("resnet18", [0.5, 1.0])
    tv = torchvision.models.resnet18(num_classes=10)
    tv_shapes = {k: v.shape for k, v in tv.state_dict().items() if k.endswith(("weight", "bias", "running_mean"))}
    assert {k: v.shape for k, v in supernet.net.state_dict().items() if k in tv_shapes} == tv_shapes


def test_max_width_scales_only_the_inner_channels():
    net = _supernet("resnet18", [0.5, 1.0, 1.5]).net
    block = net.layer2[1]
    assert block.conv1.weight.shape[:2] == (192, 128)  # 1.5 x 128 inner channels
    assert block.conv2.weight.shape[:2] == (128, 192)  # residual width unchanged
    assert block.bn1.num_features == 192 and block.bn2.num_features == 128
    assert net.layer2[0].downsample[0].weight.shape[:2] == (128, 64)
    assert net.conv1.weight.shape[:2] == (64, 3) and net.fc.weight.shape == (10, 512)
    # the residual stream's BatchNorms stay torchvision's; only the inner ones are sliced
    assert type(block.bn2) is torch.nn.BatchNorm2d and isinstance(block.bn1, SlicedBatchNorm2d)


def test_every_residual_block_is_a_choice_point_and_its_inner_channels_the_width():
    supernet = _supernet("resnet34", [0.5, 1.0])
    blocks = supernet.declaration.blocks
    assert [b.name for b in blocks][:4] == ["layer1.0", "layer1.1", "layer1.2", "layer2.0"]
    assert supernet.space.names == [b.name for b in blocks] and len(blocks) == 3 + 4 + 6 + 3
    assert list(blocks[3].layers) == ["conv1", "conv2", "downsample.0"]  # first block of a stage
    assert list(blocks[4].layers) == ["conv1", "conv2"]
    (slot,) = blocks[3].widths
    block = supernet.net.layer2[0]
    assert (slot.base, slot.producers, slot.norms, slot.consumers) == (128, [block.conv1], [block.bn1], [block.conv2])
    assert {role: [id(m) for m in ms] for role, ms in supernet.fixed.items()} == {
        "first": [id(supernet.net.conv1)], "last": [id(supernet.net.fc)]}
    covered = {id(m) for b in blocks for m in b.layers.values()} | {id(m) for ms in supernet.fixed.values() for m in ms}
    assert covered == {id(m) for _, m in supernet.layer_items()}
    entries = {e.name: e for e in supernet.layer_entries}
    assert entries["layer2.0.conv1"].width_point == "layer2.0"
    assert "feeds the residual add in layer2.0" in entries["layer2.0.conv2"].width_note


@pytest.mark.parametrize("depth, blocks", [(8, 1), (14, 2), (20, 3)])
def test_resnet_small_depths(depth, blocks):
    model, _ = build_model("resnet_small", 10, 1, {"depth": depth, "widths": (8, 16, 32)})
    assert [len(getattr(model, s)) for s in model.stage_names] == [blocks] * 3
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    supernet = build_supernet(load_config({
        "model": {"name": "resnet_small", "num_classes": 10, "in_channels": 1, "input_size": 16,
                  "args": {"depth": depth, "widths": [8, 16, 32]}},
        "space": {"weight_bits": [2], "act_bits": [2], "width_multipliers": [0.5, 1.0]}}))
    assert len(supernet.space.names) == 3 * blocks
    assert all(isinstance(m, SearchableLayer) for m in supernet.net.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))


@pytest.mark.parametrize("kwargs, message", [
    ({"depth": 9}, "depth must be 6n\\+2"),
    ({"depth": 2}, "depth must be 6n\\+2"),
    ({"widths": (8, 16)}, "widths must be 3 positive integers"),
    ({"widths": (8, 16, 32), "bogus": 1}, "bad arguments for resnet_small"),
])
def test_bad_factory_arguments(kwargs, message):
    with pytest.raises(QsposError, match=message):
        build_model("resnet_small", 10, 1, kwargs)


def test_imagenet_forward_shape_small_input():
    model, _ = build_model("resnet18", 7, 3)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 7)


def test_each_block_starts_as_its_shortcut():
    """Zero-initialised last BN per block: every block of a fresh model starts as its shortcut."""
    model, _ = build_model("resnet_small", 10, 3, {"depth": 8})
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 3 and all(torch.count_nonzero(b.bn2.weight) == 0 for b in blocks)
    assert all(torch.count_nonzero(b.bn1.weight) > 0 for b in blocks)
    # ... and so does its supernet, at every width
    supernet = _supernet("resnet_small", [0.5, 1.0, 1.5], depth=8)
    assert all(torch.count_nonzero(supernet.net.get_submodule(f"layer{i}")[0].bn2.weight) == 0 for i in (1, 2, 3))

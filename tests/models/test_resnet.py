import pytest
import torch
import torchvision

from qspos.core.layers import SearchableLayer, SlicedBatchNorm2d
from qspos.errors import QsposError
from qspos.models import create_model, list_models


def test_registry_lists_the_resnets():
    assert {"resnet18", "resnet34", "resnet_small"} <= set(list_models())
    with pytest.raises(QsposError, match="model.name: unknown model 'resnet99'.*resnet18"):
        create_model("resnet99")


@pytest.fixture(scope="module")
def resnet34():
    return create_model("resnet34", num_classes=1000, in_channels=3, max_width=1.0)


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_imagenet_resnets_have_torchvisions_shapes_at_width_1(name, resnet34):
    """At multiplier 1.0 the supernet is torchvision's ResNet: same names, same weight shapes."""
    ours = resnet34 if name == "resnet34" else create_model(name, num_classes=1000, in_channels=3, max_width=1.0)
    tv = getattr(torchvision.models, name)()
    tv_shapes = {k: v.shape for k, v in tv.state_dict().items() if k.endswith(("weight", "bias", "running_mean"))}
    our_shapes = {k: v.shape for k, v in ours.state_dict().items() if k in tv_shapes}
    assert our_shapes == tv_shapes


def test_max_width_scales_only_the_inner_channels():
    net = create_model("resnet18", num_classes=10, max_width=1.5)
    block = net.layer2[1]
    assert block.conv1.weight.shape[:2] == (192, 128)  # 1.5 x 128 inner channels
    assert block.conv2.weight.shape[:2] == (128, 192)  # residual width unchanged
    assert block.bn1.num_features == 192 and block.bn2.num_features == 128
    assert net.layer2[0].downsample[0].weight.shape[:2] == (128, 64)


def test_search_blocks_and_fixed_layers_cover_every_layer(resnet34):
    net = resnet34
    blocks = net.search_blocks()
    assert [b.name for b in blocks][:4] == ["layer1.0", "layer1.1", "layer1.2", "layer2.0"]
    assert len(blocks) == 3 + 4 + 6 + 3
    assert list(blocks[3].layers) == ["conv1", "conv2", "downsample.0"]  # first block of a stage
    assert list(blocks[4].layers) == ["conv1", "conv2"]
    slot = blocks[3].widths[0]
    block = net.layer2[0]
    assert (slot.base, slot.producers, slot.norms, slot.consumers) == (128, [block.conv1], [block.bn1], [block.conv2])
    covered = {id(m) for b in blocks for m in b.layers.values()} | {id(m) for m in net.fixed_layers().values()}
    assert covered == {id(m) for m in net.modules() if isinstance(m, SearchableLayer)}


@pytest.mark.parametrize("depth, blocks", [(8, 1), (14, 2), (20, 3)])
def test_resnet_small_depths(depth, blocks):
    net = create_model("resnet_small", depth=depth, widths=(8, 16, 32), num_classes=10, in_channels=1)
    assert len(net.search_blocks()) == 3 * blocks
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert all(isinstance(m, SlicedBatchNorm2d) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))


@pytest.mark.parametrize("kwargs, message", [
    ({"depth": 9}, "depth must be 6n\\+2"),
    ({"depth": 2}, "depth must be 6n\\+2"),
    ({"widths": (8, 16, 32), "bogus": 1}, "bad arguments for resnet_small"),
])
def test_bad_factory_arguments(kwargs, message):
    with pytest.raises(QsposError, match=message):
        create_model("resnet_small", **kwargs)


def test_imagenet_forward_shape_small_input():
    net = create_model("resnet18", num_classes=7, max_width=1.0).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 7)


def test_each_block_starts_as_its_shortcut():
    """Zero-initialised last BN per block: every path of a fresh supernet starts near identity."""
    net = create_model("resnet_small", depth=8)
    assert all(torch.count_nonzero(net.get_submodule(f"layer{i}")[0].bn2.weight) == 0 for i in (1, 2, 3))

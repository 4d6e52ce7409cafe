"""``build_model``: the three kinds of model spec, float weights from a state dict, and the stem
and head fitted to the task, every change said in a note."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from qspos.errors import QsposError
from qspos.models import build_model
from qspos.models.resnet import ResNet
from qspos.runtime.build import build_supernet
from qspos.runtime.config import load_config


def tiny_net(width: int = 4, classes: int = 10) -> nn.Module:
    """A factory as a user's package has them (``tests.models.test_builder:tiny_net``)."""
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, classes))


def not_a_model() -> str:
    return "a string"


def test_a_built_in_name():
    model, notes = build_model("resnet_small", 7, 1, {"depth": 8, "widths": [4, 8, 8]})
    assert type(model) is ResNet and notes == []
    assert model.conv1.in_channels == 1 and model.fc.out_features == 7
    assert [len(getattr(model, s)) for s in model.stage_names] == [1, 1, 1]


def test_a_torchvision_name():
    model, notes = build_model("torchvision:squeezenet1_1", 5, 3)
    assert isinstance(model, torchvision.models.SqueezeNet) and notes == []
    assert model.classifier[1].out_channels == 5  # a conv head
    model, notes = build_model("torchvision:squeezenet1_1", 5, 1)
    assert model.features[0].in_channels == 1
    assert notes == ["stem features.0: 1 input channel(s) instead of 3"]
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 5)


def test_a_factory_is_called_with_its_args_and_fitted():
    model, notes = build_model("tests.models.test_builder:tiny_net", 10, 3, {"width": 6})
    assert model[0].out_channels == 6 and notes == []
    model, notes = build_model("tests.models.test_builder:tiny_net", 3, 1, {"width": 6, "classes": 10})
    assert model[0].in_channels == 1 and model[4].out_features == 3
    assert notes == ["stem 0: 1 input channel(s) instead of 3", "head 4: replaced by a fresh 3-class layer (it had 10)"]


@pytest.fixture(scope="module")
def imagenet_weights() -> dict[str, torch.Tensor]:
    """A float state dict as a user downloads it: 3 input channels, a 1000-class head."""
    torch.manual_seed(0)
    return torchvision.models.resnet18().state_dict()


def test_weights_with_a_1000_class_head_load_into_a_10_class_model(imagenet_weights):
    model, notes = build_model("torchvision:resnet18", 10, 3, weights=imagenet_weights)
    assert notes == ["head fc: the weights' 1000 classes not loaded; 10 fresh ones instead"]
    assert model.fc.weight.shape == (10, 512)
    assert not torch.equal(model.fc.weight, imagenet_weights["fc.weight"][:10])
    for key in ("conv1.weight", "layer4.1.conv2.weight", "layer2.0.downsample.1.running_var"):
        assert torch.equal(model.state_dict()[key], imagenet_weights[key]), key


def test_weights_load_into_a_model_that_checks_its_state_format_version():
    """A weights file holds a plain dict, without the versions of the state's formats; MNASNet
    refused it ('version should be set to 1 or 2 instead of None')."""
    torch.manual_seed(0)
    weights = dict(torchvision.models.mnasnet0_5().state_dict())
    model, notes = build_model("torchvision:mnasnet0_5", 10, 3, weights=weights)
    assert notes == ["head classifier.1: the weights' 1000 classes not loaded; 10 fresh ones instead"]
    assert torch.equal(model.layers[0].weight, weights["layers.0.weight"])


def test_rgb_stem_weights_are_summed_for_one_input_channel(imagenet_weights):
    model, notes = build_model("torchvision:resnet18", 10, 1, weights=imagenet_weights)
    rgb = imagenet_weights["conv1.weight"]
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    torch.testing.assert_close(model.conv1.weight, rgb[:, 0:1] + rgb[:, 1:2] + rgb[:, 2:3], rtol=1e-6, atol=0)
    assert notes == [
        "stem conv1: 1 input channel(s) instead of 3",
        "stem conv1: the weights' 3 input channels summed over 1",
        "head fc: the weights' 1000 classes not loaded; 10 fresh ones instead",
    ]
    # a grey image gives the stem what the RGB stem gave the same image in every channel
    grey = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.conv1(grey), nn.functional.conv2d(grey.expand(1, 3, 16, 16), rgb,
                                                                           stride=2, padding=3))


def test_rgb_stem_weights_are_averaged_for_two_input_channels(imagenet_weights):
    model, notes = build_model("torchvision:resnet18", 10, 2, weights=imagenet_weights)
    expected = imagenet_weights["conv1.weight"].sum(1, keepdim=True) / 2
    torch.testing.assert_close(model.conv1.weight, expected.repeat(1, 2, 1, 1))
    assert "stem conv1: the weights' 3 input channels averaged and repeated over 2" in notes


@pytest.mark.parametrize("key, change", [
    ("layer2.0.downsample.0.weight", lambda v: v[:, :32]),
    ("layer3.1.bn2.running_mean", lambda v: v[:100]),
])
def test_a_mismatched_weight_names_its_full_key(imagenet_weights, key, change):
    weights = dict(imagenet_weights)
    weights[key] = change(weights[key])
    with pytest.raises(QsposError) as e:
        build_model("torchvision:resnet18", 10, 3, weights=weights)
    assert key in str(e.value) and f"{tuple(weights[key].shape)}" in str(e.value)
    assert str(imagenet_weights[key].shape[0]) in str(e.value)


def test_missing_and_unexpected_weights_are_named(imagenet_weights):
    weights = dict(imagenet_weights)
    del weights["layer4.1.bn2.weight"]
    weights["layer5.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(QsposError, match=r"missing keys \['layer4\.1\.bn2\.weight'\], "
                                         r"unexpected keys \['layer5\.0\.conv1\.weight'\]"):
        build_model("torchvision:resnet18", 10, 3, weights=weights)


@pytest.mark.parametrize("name, message", [
    ("resnet99", r"model\.name: unknown model 'resnet99'; give a built-in \(resnet18, resnet34, resnet_small\)"),
    ("torchvision:resnet99", r"model\.name: torchvision has no model 'resnet99'"),
    ("no_such_package.models:build", r"model\.name: cannot import 'no_such_package\.models:build': No module"),
    ("tests.models.test_builder:no_such_factory", r"cannot import 'tests\.models\.test_builder:no_such_factory'"),
    ("tests.models.test_builder:not_a_model", r"returned a str, not an nn\.Module"),
])
def test_unknown_models_are_refused_in_one_line(name, message):
    with pytest.raises(QsposError, match=message) as e:
        build_model(name, 10, 3)
    assert "\n" not in str(e.value)


def test_bad_factory_arguments_are_refused():
    with pytest.raises(QsposError, match="model: bad arguments for resnet_small: .*bogus"):
        build_model("resnet_small", 10, 1, {"bogus": 1})
    with pytest.raises(QsposError, match="depth must be 6n\\+2"):
        build_model("resnet_small", 10, 1, {"depth": 9})


def test_a_weights_file_named_in_the_config_is_loaded_and_its_head_replaced(tmp_path):
    """``model.args.weights``: a local state-dict file with a 1000-class head, for a 10-class task."""
    torch.manual_seed(0)
    model, _ = build_model("resnet_small", 1000, 1, {"depth": 8, "widths": [4, 8, 8]})
    torch.save(model.state_dict(), tmp_path / "float.pt")
    cfg = load_config({
        "model": {"name": "resnet_small", "num_classes": 10, "in_channels": 1, "input_size": 16,
                  "args": {"depth": 8, "widths": [4, 8, 8], "weights": str(tmp_path / "float.pt")}},
        "space": {"weight_bits": [2, 4], "act_bits": [2, 4], "width_multipliers": [0.5, 1.0]},
    })
    supernet = build_supernet(cfg)
    assert supernet.notes == ["head fc: the weights' 1000 classes not loaded; 10 fresh ones instead"]
    assert torch.equal(supernet.net.layer2[0].conv1.weight, model.layer2[0].conv1.weight)
    assert torch.equal(supernet.net.layer3[0].bn2.running_var, model.layer3[0].bn2.running_var)
    assert supernet.net.fc.weight.shape == (10, 8)

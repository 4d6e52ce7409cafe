"""The deployment net: BatchNorm folded with the integer codes kept, biases int32 at the
accumulator's scale, conv outputs quantized where no quantizer follows them."""

from __future__ import annotations

import copy

import pytest
import torch
from brevitas.nn import QuantConv2d, QuantIdentity
from torch import nn

from qspos.core.fold import (
    conv_bn_pairs,
    deployment_net,
    exact_zero_channel_biases,
    float_bias_convs,
    fold_batchnorm,
    int8_weight_codes,
    int16_pairs_exact,
    int16_pairs_fit,
    output_quantized_convs,
    quantize_biases,
)
from qspos.formats.check import quant_layers
from tests.formats.conftest import tiny_net


def test_folding_keeps_every_integer_code_and_leaves_no_batchnorm():
    _, model, _ = tiny_net(2, 4)
    with torch.no_grad():  # one channel with a negative gamma: its codes are negated, exactly
        model.layer1[0].bn1.weight[0] = -0.7
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert len(conv_bn_pairs(model)) == 9  # ResNet-8: the stem, two convs a block, two shortcuts
    for (name, layer), (_, twin) in zip(quant_layers(model), quant_layers(folded)):
        codes, folded_codes = layer.quant_weight().int(), twin.quant_weight().int()
        sign = torch.ones(len(codes), dtype=codes.dtype)
        if name == "layer1.0.conv1":
            sign[0] = -1
        assert torch.equal(folded_codes, codes * sign.view(-1, 1, 1, 1) if codes.dim() == 4 else codes), name
    conv = quantize_biases(folded).layer1[0].conv1
    x = torch.rand(2, 4, 12, 12)
    qx = conv.input_quant(x)
    bias = conv.bias_quant(conv.bias, qx, conv.quant_weight())  # int32 at input scale times weight scale
    assert torch.allclose(bias.scale.flatten(), (qx.scale * conv.quant_weight().scale).flatten())
    assert torch.equal(bias.int(), bias.int().round()) and bias.bit_width == 32


def test_a_channel_whose_codes_are_all_zero_keeps_its_bias_exactly_and_the_others_are_rounded():
    _, model, _ = tiny_net(2, 4)
    folded, name = fold_batchnorm(model), "layer1.0.conv1"
    conv = folded.get_submodule(name)
    with torch.no_grad():  # a channel whose codes are all zero, its folded scale huge (BN variance near 0)
        conv.weight[0] = 0
        conv.weight_quant.tensor_quant.scaling_impl.value[0] *= 1e4
        conv.bias[0] = 0.3
    assert float_bias_convs(folded)[:2] == ["conv1", name]
    rounded = quantize_biases(copy.deepcopy(folded))
    exact = exact_zero_channel_biases(quantize_biases(copy.deepcopy(folded)), float_bias_convs(folded))
    x = torch.rand(8, 4, 12, 12)
    with torch.no_grad():
        out_float, out_rounded, out_exact = (net.get_submodule(name)(x) for net in (folded, rounded, exact))
    assert torch.all(out_rounded[:, 0] == 0)  # the bias is under half a step: rounded away
    assert torch.allclose(out_exact[:, 0], torch.tensor(0.3)) and torch.allclose(out_float[:, 0], torch.tensor(0.3))
    assert torch.equal(out_exact[:, 1:], out_rounded[:, 1:])  # every other channel as it was
    layer = exact.get_submodule(name)
    assert torch.equal(layer.quant_weight().int(), rounded.get_submodule(name).quant_weight().int())
    bias = layer.bias_quant(layer.bias, layer.input_quant(x), layer.quant_weight())
    assert bias.int()[0] == 1 and torch.allclose(bias.value / bias.scale.flatten(), bias.int().float())


@pytest.mark.parametrize("w_bits", [1, 2, 4])
def test_int8_weight_codes_keep_every_weight_and_make_the_bias_steps_finer(w_bits):
    _, model, _ = tiny_net(w_bits, 2)
    folded = fold_batchnorm(model)
    names = float_bias_convs(folded)
    coded = int8_weight_codes(copy.deepcopy(folded), names)
    x = torch.rand(8, 4, 12, 12)
    for name in names:
        low, high = folded.get_submodule(name), coded.get_submodule(name)
        codes, wide = low.quant_weight().int(), high.quant_weight().int()
        k = (wide.flatten(1).abs().amax(1) / codes.flatten(1).abs().amax(1).clamp_min(1)).round()
        shape = (-1,) + (1,) * (codes.dim() - 1)
        assert torch.equal(wide, codes * k.view(shape).int()), name  # each channel's codes times a whole k
        assert torch.allclose(high.quant_weight().value, low.quant_weight().value, rtol=1e-6, atol=0), name
        assert int(high.quant_weight().bit_width) == 8 and int16_pairs_exact(high) == int16_pairs_exact(low), name
        if name != "conv1":  # the stem's 8-bit weights stay as they are
            assert int(k.min()) == 64 // max(1, 2 ** (w_bits - 1) - 1) and int(wide.abs().max()) <= 64, name
    rounded, finer = quantize_biases(copy.deepcopy(folded)), quantize_biases(coded)
    name = "layer1.0.conv1"
    with torch.no_grad():
        exact, coarse, fine = (net.get_submodule(name)(x) for net in (folded, rounded, finer))
    assert (fine - exact).abs().max() < (coarse - exact).abs().max() / 10


def test_the_deployment_net_quantizes_the_conv_outputs_that_reach_an_add():
    _, model, _ = tiny_net(2, 4)
    net = deployment_net(model, torch.randn(16, 1, 12, 12))
    quantized = {name for name, m in net.named_modules()
                 if isinstance(m, nn.Sequential) and isinstance(m[-1], QuantIdentity)}
    # each block's last conv and shortcut feed the add; the first conv of a block feeds a quantized conv;
    # the stem (8-bit weights on 8-bit signed inputs) stays float: its products overflow int16 pairs
    assert quantized == {"layer1.0.conv2", "layer2.0.conv2", "layer2.0.downsample.0", "layer3.0.conv2",
                         "layer3.0.downsample.0"}
    assert not int16_pairs_exact(model.conv1) and int16_pairs_exact(model.layer1[0].conv2)
    for name in quantized:
        out_quant = net.get_submodule(name)[1]
        assert int(out_quant.act_quant.bit_width()) == 8 and out_quant.act_quant.is_signed
    with torch.no_grad():
        x = torch.randn(4, 1, 12, 12)
        assert isinstance(net.get_submodule("layer1.0.conv2")[0], QuantConv2d) and net(x).shape == (4, 4)


def test_the_int16_pair_bound():
    assert int16_pairs_fit(255, 64) and not int16_pairs_fit(255, 65)  # 8-bit inputs: 7-bit weights at most
    assert int16_pairs_fit(15, 127) and int16_pairs_fit(129, 127) and not int16_pairs_fit(130, 127)


def test_a_saved_deployment_net_is_rebuilt_from_its_output_names_and_folding_it_again_changes_nothing():
    _, model, _ = tiny_net(2, 4)
    net = deployment_net(model, torch.randn(16, 1, 12, 12))
    names = output_quantized_convs(net)
    _, fresh, _ = tiny_net(2, 4)  # other weights: the structure must come from the names alone
    rebuilt = deployment_net(fresh, None, names)
    rebuilt.load_state_dict(net.state_dict())
    x = torch.randn(4, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), net(x))
        again = deployment_net(net, torch.randn(16, 1, 12, 12))  # what export does to a net trained folded
        assert output_quantized_convs(again) == names and torch.equal(again(x), net(x))

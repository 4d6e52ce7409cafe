"""The integer reference of a whole Brevitas net: any topology, exact accumulators, and a wrong
code is caught."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from brevitas.nn import QuantConv2d, QuantLinear
from torch import nn

from qspos.core.layers import BinaryWeightQuant, SignedActQuant, UnsignedActQuant, WeightQuant
from quant_kernels.intnet import IntegerWeights, float_layers, integer_layers, integer_reference


def _quant(w_bits: int | None, a_bits: int, signed_input: bool, shape: tuple[int, ...]) -> dict:
    """Brevitas quantizer arguments as a fine-tuned qspos layer has them."""
    kw: dict = {"input_quant": SignedActQuant if signed_input else UnsignedActQuant, "input_bit_width": a_bits,
                "input_scaling_init": torch.tensor(1.5 if signed_input else 2.0)}
    if w_bits is None:
        return {**kw, "weight_quant": None}
    t = torch.rand((shape[0],) + (1,) * (len(shape) - 1)) * 0.3 + 0.1
    kw.update(weight_quant=BinaryWeightQuant if w_bits == 1 else WeightQuant, weight_scaling_init=t)
    return kw if w_bits == 1 else {**kw, "weight_bit_width": w_bits}


def _conv(c_in, c_out, k, w_bits, a_bits=4, signed_input=False, groups=1, **kw):
    return QuantConv2d(c_in, c_out, k, padding=k // 2, groups=groups, bias=False,
                       **_quant(w_bits, a_bits, signed_input, (c_out, c_in // groups, k, k)), **kw)


class FireNet(nn.Module):
    """Not a ResNet: a SqueezeNet fire module (concatenation), a binary depthwise conv inside a
    residual add, a strided dilated conv, a float-weight 1x1 conv, a Linear with a bias."""

    def __init__(self):
        super().__init__()
        self.stem = _conv(1, 8, 3, w_bits=8, a_bits=8, signed_input=True)
        self.squeeze = _conv(8, 4, 1, w_bits=2)
        self.expand1, self.expand3 = _conv(4, 6, 1, w_bits=3), _conv(4, 6, 3, w_bits=4)
        self.dw = _conv(12, 12, 3, w_bits=1, groups=12)
        self.down = _conv(12, 12, 3, w_bits=4, stride=2, dilation=2)
        self.proj = _conv(12, 12, 1, w_bits=None)
        self.fc = QuantLinear(12, 5, bias=True, **_quant(8, 8, False, (5, 12)))

    def forward(self, x):
        x = F.relu(self.stem(x))
        s = F.relu(self.squeeze(x))
        x = torch.cat([F.relu(self.expand1(s)), F.relu(self.expand3(s))], 1)
        x = x + F.relu(self.dw(x))
        x = F.relu(self.proj(F.relu(self.down(x))))
        return self.fc(x.mean((2, 3)))


def _net() -> FireNet:
    torch.manual_seed(0)
    net = FireNet().eval()
    with torch.no_grad():
        net.fc.bias.normal_()
    return net


def _integer_weights(net: nn.Module) -> dict[str, IntegerWeights]:
    """What a deployment would hold: each layer's weight codes and scales, its input quantizer."""
    out = {}
    for name, m in net.named_modules():
        if isinstance(m, (QuantConv2d, QuantLinear)) and m.weight_quant.is_quant_enabled:
            qt, act = m.quant_weight(), m.input_quant
            out[name] = IntegerWeights(qt.int().to(torch.int64), qt.scale.flatten(), float(act.scale()),
                                       int(act.bit_width()), bool(act.is_signed), bool(act.is_narrow_range))
    return out


def test_integer_reference_of_a_non_resnet_reproduces_it_with_exact_accumulators():
    net = _net()
    x = torch.randn(6, 1, 10, 10)
    ref = integer_reference(copy.deepcopy(net), _integer_weights(net))
    with torch.no_grad():
        y, y_int = net(x), ref(x)
    layers = integer_layers(ref)
    assert len(layers) == 7 and float_layers(net) == ["proj"] and float_layers(ref) == ["proj"]
    assert all(layer.exact for layer in layers), [layer.max_acc_error for layer in layers]
    assert max(layer.max_acc_error for layer in layers) == 0
    assert (y - y_int).abs().max() <= 1e-5 * y.abs().max()


def test_one_wrong_weight_code_is_caught_in_its_layer():
    net = _net()
    weights = _integer_weights(net)
    codes = weights["expand3"].codes.clone()
    codes[0, 0, 1, 1] = -codes[0, 0, 1, 1] if codes[0, 0, 1, 1] else 1
    weights["expand3"] = dataclasses.replace(weights["expand3"], codes=codes)
    ref = integer_reference(net, weights)
    with torch.no_grad():
        ref(torch.randn(6, 1, 10, 10))
    wrong = [name for name, m in ref.named_modules() if hasattr(m, "exact") and not m.exact]
    assert wrong == ["expand3"]


def test_every_quantized_layer_needs_its_integer_weights():
    net = _net()
    weights = _integer_weights(net)
    with pytest.raises(ValueError, match="no integer weights for dw"):
        integer_reference(net, {k: v for k, v in weights.items() if k != "dw"})
    with pytest.raises(ValueError, match="proj, which is not a quantized layer"):
        integer_reference(net, {**weights, "proj": weights["dw"]})

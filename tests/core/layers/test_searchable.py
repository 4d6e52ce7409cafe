"""Searchable conv and linear layers: slicing, gradients, state, and the static Brevitas layer."""

import pytest
import torch
import torch.nn.functional as F
from brevitas.nn import QuantConv2d, QuantLinear

from qspos.core.layers.searchable import SearchableConv2d, SearchableLinear

ALL_BITS = tuple(range(1, 9))


def _layer(w_bits=(2, 3, 4), a_bits=(2, 4)) -> SearchableConv2d:
    torch.manual_seed(0)
    layer = SearchableConv2d(6, 8, 3, padding=1)
    layer.configure_bits(w_bits, a_bits)
    return layer


def test_gradients_reach_the_shared_weight_and_only_the_active_thresholds():
    layer = _layer()
    layer.set_active(3, 4)
    layer.set_channels(in_channels=4, out_channels=5)
    x = torch.rand(2, 6, 5, 5) * 2
    layer(x[:, :4]).square().sum().backward()

    wg = layer.weight.grad
    assert wg[:5, :4].abs().sum() > 0
    assert torch.count_nonzero(wg[5:]) == 0 and torch.count_nonzero(wg[:, 4:]) == 0  # inactive slices

    tw = layer.weight_quant.threshold.grad  # rows: 2, 3, 4 bits; columns: output channels
    assert tw[1, :5].abs().sum() > 0
    assert torch.count_nonzero(tw[[0, 2]]) == 0 and torch.count_nonzero(tw[1, 5:]) == 0
    ta = layer.input_quant.threshold.grad  # rows: 2, 4 bits
    assert ta[1].abs().sum() > 0 and torch.count_nonzero(ta[0]) == 0


def test_network_input_path_gives_the_gradients_of_the_plain_path():
    """An input without gradient takes conv2d_quantized_input: same output, same parameter grads."""
    layer = _layer()
    layer.set_active(3, 4)
    layer.set_channels(in_channels=4, out_channels=5)
    x = torch.rand(2, 4, 5, 5) * 2
    grads = []
    for needs_grad in (False, True):  # True: autograd through the quantized input
        layer.zero_grad()
        out = layer(x.clone().requires_grad_(needs_grad))
        out.square().sum().backward()
        grads.append((out.detach(), layer.weight.grad.clone(), layer.input_quant.threshold.grad.clone(),
                      layer.weight_quant.threshold.grad.clone()))
    for fast, plain in zip(*grads):
        torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    assert grads[0][2][1].abs().sum() > 0  # the active input threshold learns


def test_gradients_reach_binary_weights_threshold_without_nan():
    layer = _layer(w_bits=(1, 2), a_bits=(2,))
    layer.set_active(1, 2)
    layer(torch.rand(2, 6, 5, 5)).sum().backward()
    g = layer.weight_quant.threshold.grad
    assert torch.isfinite(g).all() and g[0].abs().sum() > 0 and torch.count_nonzero(g[1]) == 0
    assert torch.isfinite(layer.weight.grad).all() and layer.weight.grad.abs().sum() > 0


def test_width_slicing_uses_the_first_channels():
    """k output channels = the first k filters of the max kernel, each over the first k inputs."""
    layer = _layer()
    layer.set_active(4, 4)
    x = torch.rand(2, 6, 5, 5)
    with torch.no_grad():
        full = layer(torch.cat([x[:, :3], torch.zeros(2, 3, 5, 5)], 1))  # inputs 3.. zero
        layer.set_channels(in_channels=3, out_channels=5)
        sliced = layer(x[:, :3])
        w = layer.weight_quant(layer.weight[:5, :3], 5)
        by_hand = F.conv2d(layer.input_quant(x[:, :3]), w, padding=1)
    assert sliced.shape == (2, 5, 5, 5)
    torch.testing.assert_close(sliced, full[:, :5], rtol=0, atol=1e-6)
    assert torch.equal(sliced, by_hand)
    assert layer.active == (3, 5, 4, 4)


def test_set_channels_range_checked():
    layer = _layer()
    with pytest.raises(ValueError, match="outside 1..8"):
        layer.set_channels(out_channels=9)
    with pytest.raises(ValueError, match="outside 1..6"):
        layer.set_channels(in_channels=0)


def test_loading_a_state_dict_restores_the_active_setting():
    src = _layer()
    src.set_active(2, 4)
    src.set_channels(in_channels=3, out_channels=5)
    dst = _layer()
    dst.load_state_dict(src.state_dict())
    assert dst.active == (3, 5, 2, 4)
    assert list(dst.active_slices().values()) == list(src.active_slices().values())
    x = torch.rand(2, 3, 5, 5)
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))


def test_forward_compiles_without_graph_breaks():
    """The active choice is read from tensors by tensor ops only, so one graph serves every bit-width."""
    layer = _layer()
    for q in (layer.weight_quant, layer.input_quant):
        q.backend = "compiled"
    layer.set_active(3, 2)
    explanation = torch._dynamo.explain(layer)(torch.rand(2, 6, 5, 5))
    assert explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.parametrize("w_bits, a_bits", [(1, 2), (2, 4), (3, 3), (8, 8)])
def test_conv_to_static_is_a_plain_brevitas_layer_computing_the_same(w_bits, a_bits):
    layer = _layer(w_bits=(1, 2, 3, 8), a_bits=(2, 3, 4, 8))
    with torch.no_grad():
        layer.input_quant.threshold.uniform_(0.5, 2)
    layer.set_active(w_bits, a_bits)
    layer.set_channels(in_channels=4, out_channels=7)
    static = layer.to_static().eval()
    assert type(static) is QuantConv2d
    assert (static.in_channels, static.out_channels) == (4, 7)
    x = torch.rand(3, 4, 6, 6) * 2
    with torch.no_grad():
        torch.testing.assert_close(static(x), layer(x), rtol=0, atol=1e-6)
        if w_bits > 1:
            assert int(static.quant_weight().bit_width) == w_bits


def test_linear_to_static_with_signed_input():
    torch.manual_seed(0)
    layer = SearchableLinear(12, 5, input_signed=True)
    layer.configure_bits((4,), (8,))
    layer.set_active(4, 8)
    layer.set_channels(in_channels=10)
    static = layer.to_static().eval()
    assert type(static) is QuantLinear and static.in_features == 10
    x = torch.randn(4, 10)
    with torch.no_grad():
        torch.testing.assert_close(static(x), layer(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("bits", ALL_BITS)
def test_static_brevitas_layer_has_the_same_levels(bits):
    """The extracted Brevitas quantizers keep the level counts (weights 2^b - 1, binary at 1 bit;
    activations 2^b)."""
    layer = SearchableLinear(4001, 1)
    layer.configure_bits(ALL_BITS, ALL_BITS)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(-3, 3, 4001))
        layer.weight_quant.threshold.fill_(1.0)
        layer.input_quant.threshold.fill_(2.0)
    layer.set_active(bits, bits)
    static = layer.to_static().eval()
    with torch.no_grad():
        w_levels = torch.unique(static.quant_weight().value)
        a_levels = torch.unique(static.input_quant(torch.linspace(-1, 5, 4001)).value)
    assert len(w_levels) == (2 if bits == 1 else 2**bits - 1)
    assert len(a_levels) == 2**bits

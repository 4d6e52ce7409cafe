"""Integer conv2d/linear reproduce the fake-quantized Brevitas layers."""

from __future__ import annotations

import pytest
import torch

from qspos.core.layers import SearchableConv2d, SearchableLinear
from quant_kernels import to_int
from quant_kernels.intops import int_conv2d, int_linear, quant_conv2d, quant_linear

RTOL = 1e-5


def _static(layer, w_bits, a_bits):
    torch.manual_seed(w_bits * 10 + a_bits)
    layer.configure_bits((w_bits,), (a_bits,))
    layer.set_active(w_bits, a_bits)
    with torch.no_grad():
        layer.input_quant.threshold.fill_(2.0)
        if layer.bias is not None:
            layer.bias.normal_()
    return layer.to_static().eval()


def _close(y, y_int):
    assert (y - y_int).abs().max() <= RTOL * y.abs().max()


@pytest.mark.parametrize(("w_bits", "a_bits"), [(1, 2), (2, 4), (4, 4), (3, 5), (8, 8)])
@pytest.mark.parametrize(("stride", "depthwise"), [(1, False), (2, False), (1, True)])
def test_conv_matches_brevitas_layer(w_bits, a_bits, stride, depthwise):
    c = 8 if depthwise else 6
    layer = _static(SearchableConv2d(c, 8, 3, stride=stride, padding=1, groups=8 if depthwise else 1,
                                     bias=True), w_bits, a_bits)
    x = torch.rand(3, c, 9, 9) * 2.5
    qx, qw = layer.input_quant(x), layer.quant_weight()
    y_int = quant_conv2d(qx.int(), qw.int(), qx.scale, qw.scale, layer.bias, layer.stride,
                         layer.padding, groups=layer.groups)
    with torch.no_grad():
        _close(layer(x), y_int)


@pytest.mark.parametrize(("w_bits", "a_bits"), [(1, 4), (4, 4), (8, 8)])
def test_linear_matches_brevitas_layer(w_bits, a_bits):
    layer = _static(SearchableLinear(32, 10), w_bits, a_bits)
    x = torch.rand(5, 32) * 2.5
    qx, qw = layer.input_quant(x), layer.quant_weight()
    with torch.no_grad():
        _close(layer(x), quant_linear(qx.int(), qw.int(), qx.scale, qw.scale, layer.bias))


def test_codes_from_reference_to_int():
    """The same check from quant_kernels' own codes and thresholds (as an exported model has)."""
    torch.manual_seed(0)
    x, w = torch.rand(2, 4, 6, 6) * 3, torch.randn(5, 4, 3, 3)
    t_x, t_w, bx, bw = torch.tensor(2.0), w.abs().amax((1, 2, 3), keepdim=True), torch.tensor(4.0), torch.tensor(3.0)
    from quant_kernels import fake_quant, scale_of

    y = torch.nn.functional.conv2d(fake_quant(x, t_x, bx, False, False), fake_quant(w, t_w, bw, True, True))
    y_int = quant_conv2d(to_int(x, t_x, bx, False, False), to_int(w, t_w, bw, True, True),
                         scale_of(t_x, bx, False, False), scale_of(t_w, bw, True, True))
    _close(y, y_int)


def test_accumulators_are_exact_integers():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 300), generator=g)
    w = torch.randint(-127, 128, (7, 300), generator=g)
    assert torch.equal(int_linear(x, w), x @ w.T)  # int64 matmul as the oracle
    xc = torch.randint(0, 256, (1, 64, 5, 5), generator=g)
    wc = torch.randint(-127, 128, (3, 64, 3, 3), generator=g)
    acc = int_conv2d(xc, wc)
    manual = torch.einsum("cij,ocij->o", xc[0, :, :3, :3], wc)
    assert acc.dtype == torch.int64 and torch.equal(acc[0, :, 0, 0], manual)


def test_rejects_overflow_and_non_integers():
    with pytest.raises(OverflowError, match="int32"):
        int_linear(torch.full((1, 70000), 255), torch.full((1, 70000), 127))
    with pytest.raises(ValueError, match="integers"):
        int_linear(torch.tensor([[0.5]]), torch.tensor([[1]]))

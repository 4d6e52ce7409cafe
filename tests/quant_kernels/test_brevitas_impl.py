"""Brevitas layers with the fused tensor_quant compute exactly what the default quantizers do."""

from __future__ import annotations

import copy

import pytest
import torch
from brevitas.core.quant import RescalingIntQuant
from brevitas.nn import QuantConv2d, QuantLinear

from qspos.core.layers import (
    BinaryWeightQuant,
    SearchableConv2d,
    SearchableLinear,
    SignedActQuant,
    UnsignedActQuant,
    WeightQuant,
)
from quant_kernels.brevitas_impl import (
    FusedBinaryQuant,
    FusedClampedBinaryQuant,
    FusedRescalingIntQuant,
    set_fused_kernels,
    with_fused_kernel,
)
from tests.helpers import count_host_reads


def _static(layer, w_bits, a_bits, seed=0):
    torch.manual_seed(seed)
    layer.configure_bits((w_bits,), (a_bits,))
    layer.set_active(w_bits, a_bits)
    with torch.no_grad():
        layer.input_quant.threshold.fill_(1.7)
    return layer.to_static()


def _step(module, x):
    """Output, input gradient and parameter gradients of one forward/backward."""
    x = x.clone().requires_grad_()
    y = module(x)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    return y.detach(), x.grad, grads


def _assert_same(default, fused, x):
    y0, gx0, g0 = _step(default, x)
    y1, gx1, g1 = _step(fused, x)
    assert torch.equal(y0, y1)
    torch.testing.assert_close(gx1, gx0, rtol=1e-5, atol=1e-6)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-4, msg=name)
    for (n0, p0), (n1, p1) in zip(default.named_parameters(), fused.named_parameters(), strict=True):
        assert n0 == n1 and torch.equal(p0, p1)  # incl. Brevitas' in-place clipping of binary weights


@pytest.mark.parametrize(("w_bits", "a_bits"), [(1, 2), (2, 2), (3, 4), (4, 4), (8, 8), (5, 7)])
def test_conv_equals_default_brevitas(w_bits, a_bits):
    default = _static(SearchableConv2d(4, 8, 3, padding=1, bias=True), w_bits, a_bits)
    fused = copy.deepcopy(default)
    assert set_fused_kernels(fused) == 2
    assert default.state_dict().keys() == fused.state_dict().keys()
    _assert_same(default, fused, torch.rand(3, 4, 6, 6) * 2)


@pytest.mark.parametrize(("w_bits", "a_bits"), [(1, 4), (4, 8), (8, 8)])
def test_linear_and_signed_input_equal_default(w_bits, a_bits):
    default = _static(SearchableLinear(16, 5, input_signed=True), w_bits, a_bits)
    fused = copy.deepcopy(default)
    set_fused_kernels(fused)
    _assert_same(default, fused, torch.randn(7, 16))


def test_a_constant_bit_width_is_not_read_back_in_a_step():
    """Read once, when the fused module is built: a step then reads no more than default Brevitas
    does (whose quant-tensor conv handler reads the operands' signedness itself)."""
    default = _static(SearchableConv2d(4, 8, 3), 3, 4)
    fused = copy.deepcopy(default)
    set_fused_kernels(fused)
    reads = []
    for module in (default, fused):
        with count_host_reads() as counts:
            _step(module, torch.rand(2, 4, 6, 6))
        reads.append(counts)
    assert reads[1] == reads[0]


def test_swap_back_restores_default_modules():
    model = torch.nn.Sequential(_static(SearchableConv2d(4, 8, 3), 1, 4), _static(SearchableConv2d(8, 8, 3), 4, 4))
    assert set_fused_kernels(model) == 4
    kinds = {type(m) for m in model.modules()}
    assert FusedRescalingIntQuant in kinds and FusedClampedBinaryQuant in kinds
    assert set_fused_kernels(model, enabled=False) == 4
    assert not any(isinstance(m, (FusedRescalingIntQuant, FusedBinaryQuant)) for m in model.modules())
    assert RescalingIntQuant in {type(m) for m in model.modules()}


def test_injector_classes_build_fused_layers():
    kw = dict(weight_scaling_init=torch.full((8, 1, 1, 1), 0.3), input_scaling_init=torch.tensor(1.5))
    fused = QuantConv2d(4, 8, 3, weight_quant=with_fused_kernel(WeightQuant), weight_bit_width=4,
                        input_quant=with_fused_kernel(UnsignedActQuant), input_bit_width=4, **kw)
    default = QuantConv2d(4, 8, 3, weight_quant=WeightQuant, weight_bit_width=4,
                          input_quant=UnsignedActQuant, input_bit_width=4, **kw)
    default.load_state_dict(fused.state_dict())
    assert isinstance(fused.weight_quant.tensor_quant, FusedRescalingIntQuant)
    assert isinstance(fused.input_quant.fused_activation_quant_proxy.tensor_quant, FusedRescalingIntQuant)
    _assert_same(default, fused, torch.rand(2, 4, 6, 6) * 2)

    binary = QuantLinear(6, 3, bias=False, weight_quant=with_fused_kernel(BinaryWeightQuant),
                         weight_scaling_init=torch.full((3, 1), 0.2),
                         input_quant=with_fused_kernel(SignedActQuant), input_bit_width=8,
                         input_scaling_init=torch.tensor(2.0))
    assert isinstance(binary.weight_quant.tensor_quant, FusedClampedBinaryQuant)
    assert binary(torch.randn(2, 6)).shape == (2, 3)


def test_unsupported_quantizer_is_refused():
    from brevitas.quant import Int8ActPerTensorFloat, ShiftedUint8ActPerTensorFloat

    assert with_fused_kernel(Int8ActPerTensorFloat) is not None  # zero zero-point: fine
    with pytest.raises(ValueError, match="zero point"):
        QuantConv2d(2, 2, 1, input_quant=with_fused_kernel(ShiftedUint8ActPerTensorFloat))


def _export_pair(tmp_path, **export_kwargs):
    pytest.importorskip("onnx")
    from brevitas.export import export_onnx_qcdq

    default = _static(SearchableConv2d(3, 4, 3), 4, 4).eval()
    fused = copy.deepcopy(default)
    set_fused_kernels(fused)
    x = torch.rand(1, 3, 8, 8)
    paths = [tmp_path / "default.onnx", tmp_path / "fused.onnx"]
    for module, path in zip((default, fused), paths, strict=True):
        export_onnx_qcdq(module, args=x, export_path=str(path), **export_kwargs)
    return [p.read_bytes() for p in paths]


def test_onnx_export_is_identical(tmp_path):
    """QCDQ export (TorchScript exporter) of a fused layer is byte-identical to the default's."""
    default, fused = _export_pair(tmp_path, dynamo=False)
    assert default == fused and len(default) > 0


@pytest.mark.slow
def test_onnx_export_is_identical_dynamo(tmp_path):
    """Same with torch's default (dynamo) exporter: slow (~10 s)."""
    default, fused = _export_pair(tmp_path)
    assert default == fused


def test_plain_binary_quant_module():
    from brevitas.core.quant import BinaryQuant
    from brevitas.core.scaling import ParameterScaling

    default = BinaryQuant(ParameterScaling(torch.tensor([[0.3], [0.1], [2.0], [0.7]])))
    fused = FusedBinaryQuant.from_default(copy.deepcopy(default))
    x = torch.randn(4, 6)
    x[0, 0] = 0.0
    outs = []
    for m in (default, fused):
        xg = x.clone().requires_grad_()
        y, scale, zero_point, bit_width = m(xg)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs.append((y.detach(), xg.grad, m.scaling_impl.value.grad, zero_point, bit_width))
    assert torch.equal(outs[0][0], outs[1][0])
    for a, b in zip(outs[0][1:], outs[1][1:], strict=True):
        torch.testing.assert_close(b, a)
    assert isinstance(fused.to_default(), BinaryQuant)

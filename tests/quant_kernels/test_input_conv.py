import pytest
import torch
import torch.nn.functional as F

from quant_kernels import fake_quant, fake_quant_compiled, fake_quant_fused
from quant_kernels.input_conv import conv2d_quantized_input, threshold_tangent

CONV = ((1, 1), (1, 1), (1, 1), 1)  # stride, padding, dilation, groups


def _case(seed: int, threshold: float = 0.7):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 9, 9, generator=g)
    t = torch.tensor(threshold, requires_grad=True)
    w = (torch.randn(5, 3, 3, 3, generator=g) * 0.3).requires_grad_()
    b = torch.randn(5, generator=g).requires_grad_()
    return x, t, w, b, torch.randn(4, 5, 9, 9, generator=g)


def _grads(out, grad_out, *params):
    return torch.autograd.grad(out, params, grad_out)


QUANTIZERS = [(b, s, n) for b in range(1, 9) for s, n in [(False, False), (True, False), (True, True)]
              if b > 1 or (s and n)]  # 1-bit is binary: signed narrow-range only


@pytest.mark.parametrize("bits, signed, narrow", QUANTIZERS)
@pytest.mark.parametrize("fq, python_bits", [(fake_quant, False), (fake_quant_fused, False), (fake_quant_fused, True)],
                         ids=["reference", "fused", "fused-python-bits"])
def test_same_output_and_gradients_as_autograd_through_the_input(bits, signed, narrow, fq, python_bits):
    binary = signed and narrow
    x, t, w, b, grad_out = _case(bits, threshold=-0.7 if signed else 0.7)  # |t| and sign(t) both matter
    bw = torch.tensor(float(bits))
    plain = F.conv2d(fake_quant(x, t, bw, signed, narrow, binary), w, b, *CONV)
    fast = conv2d_quantized_input(x, t, bits if python_bits else bw, signed, narrow, binary, fq, w, b, *CONV)
    assert torch.equal(fast, plain)
    for got, want in zip(_grads(fast, grad_out, t, w, b), _grads(plain, grad_out, t, w, b)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("needs", [(True, True, True), (True, False, False), (False, True, True)])
@pytest.mark.parametrize("depthwise", [False, True])
def test_any_subset_of_gradients_and_depthwise_kernels(needs, depthwise):
    x, t, w, b, grad_out = _case(11)
    if depthwise:
        w, grad_out = w[:3, :1].detach().clone(), grad_out[:, :3]
        b = b[:3].detach().clone()
    conv = (*CONV[:3], 3 if depthwise else 1)
    params = [p.requires_grad_(n) for p, n in zip((t, w, b), needs)]
    bw = torch.tensor(3.0)
    fast = conv2d_quantized_input(x, t, bw, False, False, False, fake_quant_fused, w, b, *conv)
    plain = F.conv2d(fake_quant(x, t, bw, False, False), w, b, *conv)
    wanted = [p for p in params if p.requires_grad]
    for got, want in zip(_grads(fast, grad_out, *wanted), _grads(plain, grad_out, *wanted)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_threshold_below_the_scaling_floor_gets_no_gradient():
    x, _, w, b, grad_out = _case(0)
    t = torch.tensor(1e-12, requires_grad=True)
    out = conv2d_quantized_input(x, t, torch.tensor(4.0), False, False, False, fake_quant_fused, w, b, *CONV)
    (gt,) = _grads(out, grad_out, t)
    assert gt.item() == 0.0


@pytest.mark.parametrize("bits, signed, narrow", [(1, True, True), (3, True, True), (4, False, False)])
def test_tangent_is_the_reference_quantizers_derivative_in_the_threshold(bits, signed, narrow):
    """Per element, the straight-through derivative Brevitas' ops give through autograd."""
    x = torch.linspace(-3, 3, 601, dtype=torch.float64)
    t, bw, binary = torch.tensor(-1.3, dtype=torch.float64), torch.tensor(float(bits), dtype=torch.float64), bits == 1
    jacobian = torch.autograd.functional.jacobian(lambda t: fake_quant(x, t, bw, signed, narrow, binary), t)
    y = fake_quant(x, t, bw, signed, narrow, binary)
    torch.testing.assert_close(threshold_tangent(x, y, t, bw, signed, narrow, binary), jacobian)


def test_autocast_runs_and_matches_the_plain_path():
    x, t, w, b, grad_out = _case(3)
    bw = torch.tensor(4.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = conv2d_quantized_input(x, t, bw, False, False, False, fake_quant_fused, w, b, *CONV)
        plain = F.conv2d(fake_quant(x, t, bw, False, False), w, b, *CONV)
    assert fast.dtype == plain.dtype == torch.bfloat16
    grads_fast = _grads(fast, grad_out.bfloat16(), t, w, b)
    grads_plain = _grads(plain, grad_out.bfloat16(), t, w, b)
    for got, want in zip(grads_fast, grads_plain):
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)


def test_refuses_an_input_that_needs_a_gradient():
    x, t, w, b, _ = _case(0)
    with pytest.raises(ValueError, match="without gradient"):
        conv2d_quantized_input(x.requires_grad_(), t, torch.tensor(4.0), False, False, False, fake_quant, w, b, *CONV)


def test_compiled_backend_traces_without_graph_breaks():
    x, t, w, b, _ = _case(0)

    def f(x, t, w, b):
        return conv2d_quantized_input(x, t, torch.tensor(4.0), False, False, False, fake_quant_compiled, w, b, *CONV)

    explanation = torch._dynamo.explain(f)(x, t, w, b)
    assert explanation.graph_break_count == 0, explanation.break_reasons

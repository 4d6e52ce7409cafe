"""Fused (and traceable) fake quantization against the reference built from Brevitas ops."""

from __future__ import annotations

import pytest
import torch

from quant_kernels import FAKE_QUANT_BACKENDS, fake_quant, fake_quant_impl, to_int
from quant_kernels.compiled import fake_quant_traceable
from quant_kernels.fused import _strict_bounds, fake_quant_fused, int_range
from tests.helpers import count_host_reads

KINDS = {"signed_narrow": (True, True), "signed_full": (True, False), "unsigned": (False, False)}
IMPLS = {"fused": fake_quant_fused, "traceable": fake_quant_traceable}


def _threshold(per_channel: bool, c: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if per_channel:
        return (torch.rand(c, 1, 1, 1, generator=g) + 0.3)
    return torch.tensor(1.3)


def _input(c: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(c, 5, 3, 3, generator=g) * 1.5
    x[0, 0] = 0.0  # sign(0) and round(0) cases
    return x


def _run(impl, x, t, bits, signed, narrow, binary):
    x = x.clone().requires_grad_()
    t = t.clone().requires_grad_()
    y = impl(x, t, torch.tensor(float(bits)), signed, narrow, binary)
    g = torch.linspace(-1, 1, y.numel()).view_as(y)
    (y * g).sum().backward()
    return y.detach(), x.grad, t.grad


CASES = [(kind, pc, bits) for kind in KINDS for pc in (False, True) for bits in range(1, 9)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("kind", "per_channel", "bits"), CASES)
def test_matches_reference(impl, kind, per_channel, bits):
    signed, narrow = KINDS[kind]
    binary = signed and narrow  # a weight quantizer that has a 1-bit choice
    x, t = _input(), _threshold(per_channel)
    y_ref, gx_ref, gt_ref = _run(fake_quant, x, t, bits, signed, narrow, binary)
    y, gx, gt = _run(IMPLS[impl], x, t, bits, signed, narrow, binary)
    assert torch.equal(y, y_ref)  # forward: bit-exact
    torch.testing.assert_close(gx, gx_ref, rtol=1e-6, atol=1e-6)
    assert gt.shape == t.shape
    torch.testing.assert_close(gt, gt_ref, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(gt).all() and torch.isfinite(gx).all()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_clip_boundaries_and_ties(impl, kind):
    """Half-integers round to even; the gradient passes exactly where the reference's does."""
    signed, narrow = KINDS[kind]
    for bits in range(2, 9):
        lo, hi = int_range(bits, signed, narrow)
        t = torch.tensor(hi if signed and narrow or not signed else -lo)  # scale 1: u = x
        x = torch.arange(lo - 3, hi + 3, 0.25)
        y_ref, gx_ref, gt_ref = _run(fake_quant, x, t, bits, signed, narrow, False)
        y, gx, gt = _run(IMPLS[impl], x, t, bits, signed, narrow, False)
        assert torch.equal(y, y_ref)
        assert torch.equal(gx, gx_ref), bits
        torch.testing.assert_close(gt, gt_ref, rtol=1e-5, atol=1e-4)


def test_strict_bounds_encode_inclusive_rounded_range():
    for lo, hi in [(0.0, 15.0), (-7.0, 7.0), (-8.0, 7.0), (-1.0, 0.0), (0.0, 1.0)]:
        a, b = _strict_bounds(lo, hi)
        u = torch.arange(lo - 2, hi + 2, 0.5)
        inside = (torch.round(u) >= lo) & (torch.round(u) <= hi)
        assert torch.equal((u > a) & (u < b), inside)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_input_without_grad_and_threshold_without_grad(bits):
    x, t = _input(), _threshold(True)
    y = fake_quant_fused(x, t, torch.tensor(float(bits)), True, True)
    assert not y.requires_grad
    xg = x.clone().requires_grad_()
    fake_quant_fused(xg, t, torch.tensor(float(bits)), True, True).sum().backward()
    assert xg.grad is not None


def test_reference_gradients_are_finite_at_one_bit():
    """The unselected integer branch at 1 bit must not leak NaN (inf * 0) into the gradients."""
    _, gx, gt = _run(fake_quant, _input(), _threshold(True), 1, True, True, True)
    assert torch.isfinite(gx).all() and torch.isfinite(gt).all()


@pytest.mark.parametrize("bits", range(1, 9))
def test_level_counts(bits):
    """Weights: 2^b - 1 levels for b >= 2 and 2 (binary) for b = 1; activations: 2^b."""
    bw = torch.tensor(float(bits))
    w = torch.linspace(-3, 3, 20001)
    for impl in (fake_quant, fake_quant_fused, fake_quant_traceable):
        levels_w = impl(w, torch.tensor(1.0), bw, True, True, True).unique().numel()
        levels_a = impl(w.abs(), torch.tensor(1.0), bw, False, False).unique().numel()
        assert levels_w == (2 if bits == 1 else 2**bits - 1)
        assert levels_a == 2**bits
    codes = to_int(w, torch.tensor(1.0), bw, True, True).unique()
    assert codes.numel() == (2 if bits == 1 else 2**bits - 1)


def test_one_graph_serves_every_bit_width():
    """The bit-width is data: the same call switches precision without re-creating anything."""
    x, t = _input(), _threshold(False)
    bw = torch.tensor(2.0)
    y2 = fake_quant_traceable(x, t, bw, False, False)
    bw.fill_(8.0)
    y8 = fake_quant_traceable(x, t, bw, False, False)
    assert y2.unique().numel() < y8.unique().numel()
    assert torch.equal(y8, fake_quant(x, t, bw, False, False))


def test_backends_registered():
    assert {"reference", "fused", "compiled"} <= set(FAKE_QUANT_BACKENDS)
    assert fake_quant_impl("fused") is fake_quant_fused
    with pytest.raises(ValueError, match="unknown quantization backend"):
        fake_quant_impl("nope")


def test_searchable_layer_backends_agree():
    from qspos.core.layers import SearchableConv2d

    torch.manual_seed(0)
    layer = SearchableConv2d(4, 6, 3, padding=1)
    layer.configure_bits((1, 2, 4), (2, 4))
    x = torch.rand(2, 4, 7, 7)
    for w_bits, a_bits in [(1, 2), (2, 4), (4, 4)]:
        layer.set_active(w_bits, a_bits)
        outs, grads = [], []
        for backend in ("reference", "fused"):
            layer.weight_quant.backend = layer.input_quant.backend = backend
            layer.zero_grad()
            y = layer(x)
            y.square().sum().backward()
            outs.append(y.detach())
            grads.append([p.grad.clone() for p in (layer.weight, layer.weight_quant.threshold,
                                                  layer.input_quant.threshold)])
        assert torch.equal(outs[0], outs[1])
        for a, b in zip(*grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_mask_exact_at_float_neighbours_of_rounding_boundaries(kind):
    """Awkward scales, inputs one to three floats either side of every (k + 1/2) * scale."""
    signed, narrow = KINDS[kind]
    g = torch.Generator().manual_seed(3)
    for bits in (2, 3, 5, 8):
        lo, hi = int_range(bits, signed, narrow)
        t = torch.rand((), generator=g) * 10 ** (torch.rand((), generator=g) * 6 - 3)
        scale = t / (hi if narrow or not signed else -lo)
        base = (torch.arange(lo - 2, hi + 2) + 0.5) * scale
        xs, up, down = [base], base, base
        for _ in range(3):
            up, down = torch.nextafter(up, up + 1), torch.nextafter(down, down - 1)
            xs += [up, down]
        x = torch.cat(xs)
        _, gx_ref, gt_ref = _run(fake_quant, x, t, bits, signed, narrow, False)
        _, gx, gt = _run(fake_quant_fused, x, t, bits, signed, narrow, False)
        assert torch.equal(gx != 0, gx_ref != 0)  # same clip mask (the reference's g * s / s is 1 ulp off)
        torch.testing.assert_close(gx, gx_ref)
        torch.testing.assert_close(gt, gt_ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(("kind", "per_channel", "bits"), CASES)
def test_python_bit_width_gives_the_same_values_and_reads_nothing_back(kind, per_channel, bits):
    signed, narrow = KINDS[kind]
    binary = signed and narrow
    x, t = _input().requires_grad_(), _threshold(per_channel).requires_grad_()
    y_ref = fake_quant_fused(x, t, torch.tensor(float(bits)), signed, narrow, binary)
    grads_ref = torch.autograd.grad(y_ref.square().sum(), (x, t))
    with count_host_reads() as reads:
        y = fake_quant_fused(x, t, bits, signed, narrow, binary)
        grads = torch.autograd.grad(y.square().sum(), (x, t))
    assert not reads
    assert torch.equal(y, y_ref)
    for got, want in zip(grads, grads_ref, strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("impl", IMPLS)
def test_negative_and_tiny_thresholds(impl):
    """|t| is the clipping threshold (sign flips the gradient); below 1e-10 it is clamped."""
    x = _input()
    t = torch.tensor([-0.7, 0.4, -2.0, 1e-12, 0.0, 0.9]).view(6, 1, 1, 1)
    for bits, binary in [(1, True), (3, True), (8, False)]:
        y_ref, gx_ref, gt_ref = _run(fake_quant, x, t, bits, True, True, binary)
        y, gx, gt = _run(IMPLS[impl], x, t, bits, True, True, binary)
        assert torch.equal(y, y_ref)
        torch.testing.assert_close(gx, gx_ref)
        torch.testing.assert_close(gt, gt_ref, rtol=1e-4, atol=1e-4)


def test_per_tensor_negative_threshold_activation():
    x = torch.randn(2, 3, 5, 5)
    for t in (torch.tensor(-1.3), torch.tensor(1e-12)):
        y_ref, gx_ref, gt_ref = _run(fake_quant, x, t, 4, True, False, False)
        y, gx, gt = _run(fake_quant_fused, x, t, 4, True, False, False)
        assert torch.equal(y, y_ref)
        torch.testing.assert_close(gx, gx_ref)
        torch.testing.assert_close(gt, gt_ref, rtol=1e-4, atol=1e-4)

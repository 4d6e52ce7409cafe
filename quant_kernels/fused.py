"""Fused fake quantization for eager PyTorch: one autograd Function per quantizer call.

Why: with Brevitas' tensor-valued clamp bounds and chains of small STE autograd nodes, the
backward of a fake quantizer costs a dozen passes over the activation (``where``, ``gt``,
``logical_and``, ``neg``...). Here the forward is four in-place passes (divide, round, clamp,
rescale) with scalar clamp bounds, and the backward is four that produce the input gradient and
the scale gradient together: ``x / scale`` once more, the clip mask from it against two float
bounds that depend on the bit-width alone, and two dot products. Nothing is saved but tensors
the neighbouring layers keep alive anyway (the input and the output).

Given the bit-width as a Python number, a call reads nothing back from the device (no host sync
on a GPU): the clamp bounds come from the bit-width, never from the scale's value.

The numerics are those of :mod:`quant_kernels.reference` bit for bit in the forward pass; the
gradients agree up to float summation order.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from quant_kernels.reference import SCALING_MIN_VAL


def int_range(bits: float, signed: bool, narrow: bool) -> tuple[float, float]:
    """(min, max) integer code of a quantizer, as Python floats (same values as Brevitas' ops)."""
    if signed:
        hi = 2.0 ** (bits - 1) - 1
        return (-hi if narrow else -(hi + 1)), hi
    return 0.0, 2.0**bits - 1


def _strict_bounds(lo: float, hi: float) -> tuple[float, float]:
    """Open interval (a, b) with ``a < u < b  <=>  lo <= round_half_even(u) <= hi`` in float32.

    Lets the backward recover the clamp mask from the unrounded ``u = x / scale`` with a single
    ``hardtanh_backward`` pass. A tie ``lo - 0.5``
    rounds to ``lo`` exactly when ``lo`` is even, and then must be inside the interval, so the
    bound moves one float below it (same at ``hi``).
    """
    a, b = np.float32(lo - 0.5), np.float32(hi + 0.5)
    if lo % 2 == 0:
        a = np.nextafter(a, np.float32(-np.inf))
    if hi % 2 == 0:
        b = np.nextafter(b, np.float32(np.inf))
    return float(a), float(b)


def reduce_dot(a: Tensor, b: Tensor, shape: torch.Size) -> Tensor:
    """``(a * b).sum_to_size(shape)`` without materialising ``a * b`` in the common layouts.

    Per tensor: one BLAS dot. Per output channel (shape ``(C, 1, ..., 1)``): one batched dot.
    """
    numel = math.prod(shape)
    if numel == 1:
        return torch.dot(a.reshape(-1), b.reshape(-1)).reshape(shape)
    if len(shape) == a.dim() and shape[0] == a.shape[0] and numel == shape[0]:
        return torch.linalg.vecdot(a.reshape(numel, -1), b.reshape(numel, -1)).reshape(shape)
    return (a * b).sum_to_size(shape)


def _unbroadcast(grad: Tensor, like: Tensor) -> Tensor:
    return grad if grad.shape == like.shape else grad.sum_to_size(like.shape)


def _int_forward(x: Tensor, scale: Tensor, lo: float, hi: float) -> Tensor:
    return torch.div(x, scale).round_().clamp_(lo, hi).mul_(scale)  # the reference's ops, in place


def _int_backward(g: Tensor, x: Tensor, scale: Tensor, y: Tensor, lo: float, hi: float,
                  need_scale: bool) -> tuple[Tensor, Tensor | None]:
    """``dx = g`` where ``lo <= round(x / scale) <= hi`` (else 0) and
    ``dscale = sum(g * q) - sum(dx * x / scale)`` reduced to the shape of ``scale``."""
    a, b = _strict_bounds(lo, hi)
    u = torch.div(x, scale)
    gx = torch.ops.aten.hardtanh_backward(g, u, a, b)
    gs = reduce_dot(g, y, scale.shape) / scale - reduce_dot(gx, u, scale.shape) if need_scale else None
    return _unbroadcast(gx, x), gs


def _binary_forward(x: Tensor, scale: Tensor) -> Tensor:
    return torch.where(x >= 0, scale, -scale)  # = binary_sign(x) * scale, sign(0) = +1


def _binary_backward(g: Tensor, x: Tensor, scale: Tensor, y: Tensor,
                     need_scale: bool) -> tuple[Tensor, Tensor | None]:
    """Identity STE: ``dx = g * scale``; ``dscale = sum(g * sign(x))``."""
    gs = reduce_dot(g, y, scale.shape) / scale if need_scale else None
    return _unbroadcast(g * scale, x), gs


class FakeQuant(torch.autograd.Function):
    """The whole quantizer from the threshold: ``scale = max(|t|, 1e-10) / int_threshold``, then
    integer (or, with ``binary``, sign) fake quantization; the backward returns the input and the
    threshold gradient together (``dt = dscale * sign(t) / int_threshold`` where ``|t| >= 1e-10``).
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, threshold: Tensor, int_threshold: float, lo: float, hi: float,
                binary: bool) -> Tensor:
        t_abs = threshold.abs().clamp_min(SCALING_MIN_VAL)
        scale = t_abs if binary else t_abs / int_threshold
        y = _binary_forward(x, scale) if binary else _int_forward(x, scale, lo, hi)
        ctx.save_for_backward(x, threshold, scale, y)
        ctx.args = (int_threshold, lo, hi, binary)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, g: Tensor) -> tuple[Tensor | None, ...]:
        x, threshold, scale, y = ctx.saved_tensors
        int_threshold, lo, hi, binary = ctx.args
        need_t = ctx.needs_input_grad[1]
        if binary:
            gx, gs = _binary_backward(g, x, scale, y, need_t)
        else:
            gx, gs = _int_backward(g, x, scale, y, lo, hi, need_t)
            gs = gs / int_threshold if need_t else None
        gt = None
        if need_t:
            gt = torch.where(threshold.abs() >= SCALING_MIN_VAL, gs * threshold.sign(), 0.0)
            gt = _unbroadcast(gt, threshold)
        return (gx if ctx.needs_input_grad[0] else None), gt, None, None, None, None


class IntFakeQuant(torch.autograd.Function):
    """Integer fake quantization from a given scale (Brevitas computes the scale itself)."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, scale: Tensor, lo: float, hi: float) -> Tensor:
        y = _int_forward(x, scale, lo, hi)
        ctx.save_for_backward(x, scale, y)
        ctx.bounds = (lo, hi)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, g: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        x, scale, y = ctx.saved_tensors
        gx, gs = _int_backward(g, x, scale, y, *ctx.bounds, ctx.needs_input_grad[1])
        return (gx if ctx.needs_input_grad[0] else None), gs, None, None


class BinaryFakeQuant(torch.autograd.Function):
    """``y = sign(x) * scale`` (sign(0) = +1) from a given scale, identity STE."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, scale: Tensor) -> Tensor:
        y = _binary_forward(x, scale)
        ctx.save_for_backward(x, scale, y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, g: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, scale, y = ctx.saved_tensors
        gx, gs = _binary_backward(g, x, scale, y, ctx.needs_input_grad[1])
        return (gx if ctx.needs_input_grad[0] else None), gs


def fake_quant_int(x: Tensor, scale: Tensor, bits: float, signed: bool, narrow: bool) -> Tensor:
    """Integer fake quantization given the scale (the piece Brevitas' ``IntQuant`` computes)."""
    lo, hi = int_range(bits, signed, narrow)
    return IntFakeQuant.apply(x, scale, lo, hi)


def fake_quant_binary(x: Tensor, scale: Tensor) -> Tensor:
    """Binary fake quantization given the scale (the piece Brevitas' ``BinaryQuant`` computes)."""
    return BinaryFakeQuant.apply(x, scale)


def fake_quant_fused(
    x: Tensor, threshold: Tensor, bit_width: Tensor | float, signed: bool, narrow: bool, binary: bool = False
) -> Tensor:
    """Drop-in for :func:`quant_kernels.reference.fake_quant` (same values), one :class:`FakeQuant`
    node per call.

    Give ``bit_width`` as a Python number: then nothing is read back. A tensor is read once
    (``float()``): a device sync on a GPU and a graph break under ``torch.compile`` (compiled
    code should use :func:`quant_kernels.compiled.fake_quant_traceable`; the "compiled" backend does).
    """
    bits = float(bit_width)
    if binary and bits == 1:
        return FakeQuant.apply(x, threshold, 1.0, -1.0, 1.0, True)
    lo, hi = int_range(bits, signed, narrow)
    return FakeQuant.apply(x, threshold, -lo if signed else hi, lo, hi, False)

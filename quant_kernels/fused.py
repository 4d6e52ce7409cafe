"""Fused fake quantization for eager PyTorch: one autograd Function per quantizer call.

Why: with Brevitas' tensor-valued clamp bounds and chains of small STE autograd nodes, the
backward of a fake quantizer costs a dozen passes over the activation (``where``, ``gt``,
``logical_and``, ``neg``...). Here the forward is four in-place passes (divide, round, clamp,
rescale) with scalar clamp bounds, and the backward is four passes that produce the input
gradient and the scale gradient together, saving nothing but tensors the neighbouring layers keep
alive anyway (the input and the output).

The numerics are those of :mod:`quant_kernels.reference` bit for bit in the forward pass; the
gradients agree up to float summation order.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from quant_kernels.reference import SCALING_MIN_VAL, scale_of


def int_range(bits: float, signed: bool, narrow: bool) -> tuple[float, float]:
    """(min, max) integer code of a quantizer, as Python floats (same values as Brevitas' ops)."""
    if signed:
        hi = 2.0 ** (bits - 1) - 1
        return (-hi if narrow else -(hi + 1)), hi
    return 0.0, 2.0**bits - 1


def _strict_bounds(lo: float, hi: float) -> tuple[float, float]:
    """Open interval (a, b) with ``a < u < b  <=>  lo <= round_half_even(u) <= hi`` in float32.

    Lets the backward recover the clamp mask from the unrounded ``u = x / scale`` with a single
    ``hardtanh_backward`` pass. A tie ``lo - 0.5`` rounds to ``lo`` exactly when ``lo`` is even,
    and then must be inside the interval, so the bound moves one float below it (same at ``hi``).
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


class IntFakeQuant(torch.autograd.Function):
    """``y = clamp(round(x / scale), lo, hi) * scale`` with a straight-through estimator.

    Gradients (as autograd derives them from the reference chain):
    ``dx = g`` where ``lo <= round(x / scale) <= hi``, else 0;
    ``dscale = sum(g * q) - sum(dx * x / scale)`` reduced to the shape of ``scale``.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, scale: Tensor, lo: float, hi: float) -> Tensor:
        y = torch.div(x, scale).round_().clamp_(lo, hi).mul_(scale)
        ctx.save_for_backward(x, scale, y)
        ctx.bounds = (lo, hi)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, g: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        x, scale, y = ctx.saved_tensors
        u = torch.div(x, scale)
        a, b = _strict_bounds(*ctx.bounds)
        gx = torch.ops.aten.hardtanh_backward(g, u, a, b)
        gs = None
        if ctx.needs_input_grad[1]:
            gs = reduce_dot(g, y, scale.shape) / scale - reduce_dot(gx, u, scale.shape)
        gx = _unbroadcast(gx, x) if ctx.needs_input_grad[0] else None
        return gx, gs, None, None


class BinaryFakeQuant(torch.autograd.Function):
    """``y = sign(x) * scale`` (sign(0) = +1) with the identity straight-through estimator."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, scale: Tensor) -> Tensor:
        y = torch.where(x >= 0, scale, -scale)
        ctx.save_for_backward(x, scale, y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, g: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, scale, y = ctx.saved_tensors
        gx = _unbroadcast(g * scale, x) if ctx.needs_input_grad[0] else None
        gs = reduce_dot(g, y, scale.shape) / scale if ctx.needs_input_grad[1] else None
        return gx, gs


def fake_quant_int(x: Tensor, scale: Tensor, bits: float, signed: bool, narrow: bool) -> Tensor:
    """Integer fake quantization given the scale (the piece Brevitas' ``IntQuant`` computes)."""
    lo, hi = int_range(bits, signed, narrow)
    return IntFakeQuant.apply(x, scale, lo, hi)


def fake_quant_binary(x: Tensor, scale: Tensor) -> Tensor:
    """Binary fake quantization given the scale (the piece Brevitas' ``BinaryQuant`` computes)."""
    return BinaryFakeQuant.apply(x, scale)


def fake_quant_fused(
    x: Tensor, threshold: Tensor, bit_width: Tensor, signed: bool, narrow: bool, binary: bool = False
) -> Tensor:
    """Drop-in for :func:`quant_kernels.reference.fake_quant` (same signature and values).

    The threshold-to-scale map runs as ordinary autograd ops on the (tiny) threshold; the
    per-element work and both gradients are the fused Functions above. Reads ``bit_width`` once
    (``float()``), which is free on CPU but is a graph break under ``torch.compile``: compiled
    code should use :func:`quant_kernels.compiled.fake_quant_traceable`.
    """
    bits = float(bit_width)
    if binary and bits == 1:
        return BinaryFakeQuant.apply(x, threshold.abs().clamp_min(SCALING_MIN_VAL))
    return fake_quant_int(x, scale_of(threshold, bit_width, signed, narrow), bits, signed, narrow)

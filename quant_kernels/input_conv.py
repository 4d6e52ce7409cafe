"""Convolution of a fake-quantized network input whose only trainable quantity is the threshold.

Why: a network's input never needs a gradient, but the learned clipping threshold of its
quantizer does, and through plain autograd that costs the first convolution's *input* gradient:
with 1 or 3 input channels the slowest convolution kernel of a training step (on 2 CPU cores about
4x the same layer's weight gradient; ~15 ms of a ~450 ms step of the benchmark net). The
threshold gradient is ``<dL/dy, dy/dt>``, and because a convolution is linear in its input,
``<conv_input_grad(g, W), d> = <W, conv_weight_grad(g, input=d)>``: the weight gradient of the
tangent ``d = dy/dt``, stacked with the input as a second channel group (one kernel call for both),
replaces the input gradient. Same values, up to float summation order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from brevitas.function.ops import max_int, min_int
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from quant_kernels.reference import SCALING_MIN_VAL, integer_bits, scale_of


def threshold_tangent(
    x: Tensor, y: Tensor, threshold: Tensor, bit_width: Tensor | float, signed: bool, narrow: bool,
    binary: bool = False,
) -> Tensor:
    """``dy/dt`` per element of ``y = fake_quant(x, t, ...)``, with the straight-through estimator
    the kernels use: ``(y - [not clipped] * x) * sign(t) / max(|t|, 1e-10)`` (0 where |t| < 1e-10).

    Integer quantizers: ``y = s * clamp(round(x / s))`` with ``s = |t| / n``, so ``dy/ds`` is
    ``(y - x) / s`` inside the clamp range and ``y / s`` outside; binary ones: ``y = sign(x) * |t|``.
    Tensor ops only (a tensor bit-width stays a tensor), so it traces under ``torch.compile``.
    """
    int_bits = integer_bits(bit_width, binary)
    q = torch.round(x / scale_of(threshold, int_bits, signed, narrow))
    inside = (q >= min_int(signed, narrow, int_bits)) & (q <= max_int(signed, narrow, int_bits))
    if binary:
        inside = inside & (bit_width != 1)
    t_abs = threshold.abs()
    rate = torch.where(t_abs >= SCALING_MIN_VAL, threshold.sign() / t_abs.clamp_min(SCALING_MIN_VAL), 0.0)
    return (y - torch.where(inside, x, 0.0)) * rate


class _QuantInputConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, threshold: Tensor, weight: Tensor, bias: Tensor | None,
                quant: tuple, conv: tuple) -> Tensor:
        fake_quant, bit_width, signed, narrow, binary = quant
        y = fake_quant(x, threshold, bit_width, signed, narrow, binary)
        out = F.conv2d(y, weight, bias, *conv)
        ctx.save_for_backward(x, y, threshold, weight)
        ctx.quant, ctx.conv, ctx.has_bias = (bit_width, signed, narrow, binary), conv, bias is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, g: Tensor) -> tuple[Tensor | None, ...]:
        x, y, threshold, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        bias_sizes = [weight.shape[0]] if ctx.has_bias else None
        w = weight.to(g.dtype)  # under autocast the forward ran in g's dtype

        need_w, need_t = ctx.needs_input_grad[2], ctx.needs_input_grad[1]
        need_b = ctx.has_bias and ctx.needs_input_grad[3]

        def weight_grad(inp: Tensor, kernel: Tensor, bias: bool) -> tuple[Tensor, Tensor | None]:
            _, gw, gb = torch.ops.aten.convolution_backward(
                g, inp.to(g.dtype), kernel, bias_sizes, stride, padding, dilation, False, [0, 0], groups,
                [False, True, bias],
            )
            return gw, gb

        inputs = [y] + ([threshold_tangent(x, y, threshold, *ctx.quant)] if need_t else [])
        if groups == 1:  # one kernel call for both: the inputs stacked along the channels
            gw_all, gb = weight_grad(torch.cat(inputs, 1), w.repeat(1, len(inputs), 1, 1), need_b)
            grads = gw_all.chunk(len(inputs), 1)
        else:
            grads, gbs = zip(*(weight_grad(inp, w, need_b and i == 0) for i, inp in enumerate(inputs)))
            gb = gbs[0]
        gw = grads[0].to(weight.dtype) if need_w else None
        gt = (grads[1] * w).sum().to(threshold.dtype).reshape(threshold.shape) if need_t else None
        gb = None if gb is None else gb.to(weight.dtype)
        return None, gt, gw, gb, None, None


def conv2d_quantized_input(
    x: Tensor, threshold: Tensor, bit_width: Tensor | float, signed: bool, narrow: bool, binary: bool,
    fake_quant: Callable, weight: Tensor, bias: Tensor | None,
    stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int], groups: int,
) -> Tensor:
    """``F.conv2d(fake_quant(x, threshold, ...), weight, bias, ...)`` for an ``x`` that needs no
    gradient and a per-tensor ``threshold``: gradients for threshold, weight and bias only.
    ``bit_width`` is what ``fake_quant`` takes (a tensor, or a Python number for the fused kernel)."""
    if x.requires_grad or threshold.numel() != 1:
        raise ValueError("conv2d_quantized_input needs an input without gradient and a per-tensor threshold")
    return _QuantInputConv2d.apply(
        x, threshold, weight, bias, (fake_quant, bit_width, signed, narrow, binary),
        (stride, padding, dilation, groups),
    )

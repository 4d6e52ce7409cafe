"""Integer reference conv2d and linear: what a deployed integer kernel computes, bit for bit.

Why: a fake-quantized layer computes ``conv(q_x * s_x, q_w * s_w)`` in float; an integer
accelerator computes ``s_x * s_w * conv(q_x, q_w)`` with an int32 accumulator. These ops compute
the accumulator exactly (float64 arithmetic on integers: every partial sum is an integer below
2^31 here, so it is exact, whatever the summation order) and refuse inputs that could overflow
int32. The scales (per tensor, or per output channel) and the bias are applied after, once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

INT32_MAX = 2**31 - 1


def int_conv2d(
    x: Tensor, w: Tensor, stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1, groups: int = 1,
) -> Tensor:
    """Exact int32-range accumulators (as int64) of ``conv2d(x, w)`` on integer codes."""
    x64, w64 = _exact_operands(x, w, fan_in=w[0].numel())
    acc = F.conv2d(x64, w64, None, stride, padding, dilation, groups)
    return acc.to(torch.int64)


def int_linear(x: Tensor, w: Tensor) -> Tensor:
    """Exact int32-range accumulators (as int64) of ``x @ w.T`` on integer codes."""
    x64, w64 = _exact_operands(x, w, fan_in=w.shape[-1])
    return F.linear(x64, w64).to(torch.int64)


def dequantize(acc: Tensor, x_scale: Tensor, w_scale: Tensor, bias: Tensor | None = None,
               dtype: torch.dtype = torch.float32) -> Tensor:
    """``acc * x_scale * w_scale + bias`` for accumulators laid out (N, C_out, ...).

    ``w_scale`` is per tensor or per output channel (any shape with C_out elements, such as
    Brevitas' (C_out, 1, 1, 1)); it is computed in float64 and rounded to ``dtype`` once.
    """
    c_out = acc.shape[1]
    view = (1, c_out) + (1,) * (acc.dim() - 2)
    w_s = w_scale.detach().double().reshape(-1)
    w_s = w_s.view(view) if w_s.numel() == c_out and c_out != 1 else w_s.reshape(())
    y = acc.double() * (x_scale.detach().double().reshape(()) * w_s)
    if bias is not None:
        y = y + bias.detach().double().view(view)
    return y.to(dtype)


def quant_conv2d(
    x: Tensor, w: Tensor, x_scale: Tensor, w_scale: Tensor, bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1, groups: int = 1,
) -> Tensor:
    """Integer conv2d of the codes, then the scales and the bias: a quantized layer's output."""
    return dequantize(int_conv2d(x, w, stride, padding, dilation, groups), x_scale, w_scale, bias)


def quant_linear(x: Tensor, w: Tensor, x_scale: Tensor, w_scale: Tensor,
                 bias: Tensor | None = None) -> Tensor:
    """Integer linear layer on the codes, then the scales and the bias."""
    return dequantize(int_linear(x, w), x_scale, w_scale, bias)


def _exact_operands(x: Tensor, w: Tensor, fan_in: int) -> tuple[Tensor, Tensor]:
    """The codes as float64, after checking they are integers that cannot overflow int32."""
    x64, w64 = _integral(x, "input"), _integral(w, "weight")
    max_x = int(x64.abs().max()) if x64.numel() else 0
    max_w = int(w64.abs().max()) if w64.numel() else 0
    if max_x * max_w * fan_in > INT32_MAX:
        raise OverflowError(f"|x| <= {max_x}, |w| <= {max_w} over {fan_in} terms may overflow int32")
    return x64, w64


def _integral(t: Tensor, what: str) -> Tensor:
    t64 = t.detach().to(torch.float64)
    if t.is_floating_point() and not torch.equal(t64, t64.round()):
        raise ValueError(f"{what} codes must be integers")
    return t64

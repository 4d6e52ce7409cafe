"""Reference fake quantization built from Brevitas' own ops (the numerics every kernel must match).

A quantizer is described by a clipping *threshold* (per tensor, or per output channel broadcast
against ``x``) and a bit-width given as a tensor, so one graph serves every bit-width:

* signed, narrow range (weights): integers in [-(2^(b-1)-1), 2^(b-1)-1], scale = t / (2^(b-1)-1);
  b = 1 is binary: sign(x) * t (two levels, sign(0) = +1), as Brevitas' binary quantizer.
* signed, full range: integers in [-2^(b-1), 2^(b-1)-1], scale = t / 2^(b-1).
* unsigned (activations after ReLU): integers in [0, 2^b-1], scale = t / (2^b-1).

Rounding is half-to-even (``torch.round``) with a straight-through estimator and clamping is
Brevitas' ``tensor_clamp``, exactly as ``brevitas.core.quant.IntQuant``: the input gradient passes
where ``min <= round(x / scale) <= max``, bounds included (``torch.clamp`` with tensor bounds would
halve it there); the scale is ``clamp_min(|t|, 1e-10) / int_threshold`` as in
Brevitas' ``ParameterScaling`` + ``IntScaling``.
"""

from __future__ import annotations

import torch
from brevitas.function.ops import max_int, min_int, tensor_clamp
from brevitas.function.ops_ste import binary_sign_ste, round_ste
from torch import Tensor

SCALING_MIN_VAL = 1e-10


def int_threshold(bit_width: Tensor, signed: bool, narrow: bool) -> Tensor:
    """The integer the clipping threshold maps to (Brevitas' ``IntScaling``)."""
    if signed:
        return -min_int(signed, narrow, bit_width)
    return max_int(signed, narrow, bit_width)


def integer_bits(bit_width: Tensor | float, binary: bool) -> Tensor | float:
    """The bit-width the integer branch runs at: at least 2 beside a binary branch (at 1 bit its
    scale is t / 0 = inf, and the inf * 0 of the unselected branch would turn every gradient into
    NaN). Takes a tensor or a Python number and returns the same kind (nothing is read back)."""
    if not binary:
        return bit_width
    return bit_width.clamp_min(2) if isinstance(bit_width, Tensor) else max(bit_width, 2)


def scale_of(threshold: Tensor, bit_width: Tensor, signed: bool, narrow: bool) -> Tensor:
    return threshold.abs().clamp_min(SCALING_MIN_VAL) / int_threshold(bit_width, signed, narrow)


def fake_quant(
    x: Tensor, threshold: Tensor, bit_width: Tensor, signed: bool, narrow: bool, binary: bool = False
) -> Tensor:
    """Quantize-dequantize ``x``; ``binary=True`` adds the 1-bit signed branch (chosen by value;
    the integer branch runs at :func:`integer_bits`)."""
    int_bits = integer_bits(bit_width, binary)
    scale = scale_of(threshold, int_bits, signed, narrow)
    q = tensor_clamp(round_ste(x / scale), min_int(signed, narrow, int_bits), max_int(signed, narrow, int_bits))
    y = q * scale
    if binary:
        y_bin = binary_sign_ste(x) * threshold.abs().clamp_min(SCALING_MIN_VAL)
        y = torch.where(bit_width == 1, y_bin, y)
    return y


def to_int(x: Tensor, threshold: Tensor, bit_width: Tensor, signed: bool, narrow: bool) -> Tensor:
    """The integer codes (as float tensor) behind :func:`fake_quant`; binary codes are -1/+1."""
    if signed and narrow and int(bit_width) == 1:
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
    scale = scale_of(threshold, bit_width, signed, narrow)
    return torch.round(x / scale).clamp(min_int(signed, narrow, bit_width), max_int(signed, narrow, bit_width))

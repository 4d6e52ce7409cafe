"""Fake quantization for ``torch.compile``: the same numerics with no Python branching on tensors.

Why: inductor fuses the divide-round-clamp-rescale chain and its backward into one loop each (and
into the neighbouring BatchNorm/ReLU when the whole model is compiled), which no eager kernel can
do. The bit-width stays a tensor everywhere, so one compiled graph serves every bit-width.

* :func:`fake_quant_traceable`: call it inside code that is compiled as a whole.
* :func:`fake_quant_compiled`: the ``"compiled"`` backend for eager models; compiles the traceable
  function per configuration and falls back to :func:`quant_kernels.fused.fake_quant_fused`, with
  one warning, when compilation is unavailable or fails. Inside a compiled model it is traceable.
  On CUDA tensors inductor emits Triton kernels: this is the GPU path (untested here: no GPU).
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable

import torch
from brevitas.function.ops import max_int, min_int
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from quant_kernels.fused import fake_quant_fused
from quant_kernels.reference import SCALING_MIN_VAL, scale_of


class IntFakeQuantT(torch.autograd.Function):
    """:class:`quant_kernels.fused.IntFakeQuant` with tensor-valued clamp bounds."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, scale: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        ctx.save_for_backward(x, scale, lo, hi)
        return torch.clamp(torch.round(x / scale), lo, hi) * scale

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, g: Tensor) -> tuple[Tensor, Tensor, None, None]:
        x, scale, lo, hi = ctx.saved_tensors
        u = x / scale
        r = torch.round(u)
        gx = torch.where((r >= lo) & (r <= hi), g, 0.0)
        gs = (g * torch.clamp(r, lo, hi) - gx * u).sum_to_size(scale.shape)
        return gx.sum_to_size(x.shape), gs, None, None


class BinaryFakeQuantT(torch.autograd.Function):
    """:class:`quant_kernels.fused.BinaryFakeQuant`, written for tracing."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, scale: Tensor) -> Tensor:
        ctx.save_for_backward(x, scale)
        return torch.where(x >= 0, scale, -scale)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, g: Tensor) -> tuple[Tensor, Tensor]:
        x, scale = ctx.saved_tensors
        gs = torch.where(x >= 0, g, -g).sum_to_size(scale.shape)
        return (g * scale).sum_to_size(x.shape), gs


def fake_quant_int_traceable(x: Tensor, scale: Tensor, bit_width: Tensor, signed: bool, narrow: bool) -> Tensor:
    """:func:`quant_kernels.fused.fake_quant_int` with the bit-width kept a tensor."""
    return IntFakeQuantT.apply(x, scale, min_int(signed, narrow, bit_width), max_int(signed, narrow, bit_width))


def fake_quant_traceable(
    x: Tensor, threshold: Tensor, bit_width: Tensor, signed: bool, narrow: bool, binary: bool = False
) -> Tensor:
    """Same signature and values as :func:`quant_kernels.reference.fake_quant`, graph-break free."""
    int_bits = bit_width.clamp_min(2) if binary else bit_width  # 1-bit narrow is the binary branch
    scale = scale_of(threshold, int_bits, signed, narrow)
    y = fake_quant_int_traceable(x, scale, int_bits, signed, narrow)
    if binary:
        y_bin = BinaryFakeQuantT.apply(x, threshold.abs().clamp_min(SCALING_MIN_VAL))
        y = torch.where(bit_width == 1, y_bin, y)
    return y


_kernels: dict[tuple, Callable] = {}
_compile_failed = False


def _kernel(key: tuple) -> Callable:
    """One compiled function per static configuration (flags, ranks, dtype, device). The bit-width
    is a tensor (no recompilation when it changes); shapes use Dynamo's automatic dynamic mode
    (specialised kernels for the first shape, one dynamic kernel once a second shape appears:
    measurably faster than ``dynamic=True`` from the start). Dynamo counts recompilations per
    code object (8 by default, then it silently runs eagerly), so each configuration compiles its
    own copy of the code."""
    if key not in _kernels:
        f = fake_quant_traceable
        fn = types.FunctionType(f.__code__.replace(), f.__globals__, f"{f.__name__}_{len(_kernels)}", f.__defaults__)
        _kernels[key] = torch.compile(fn, fullgraph=True)
    return _kernels[key]


def fake_quant_compiled(
    x: Tensor, threshold: Tensor, bit_width: Tensor, signed: bool, narrow: bool, binary: bool = False
) -> Tensor:
    """The ``"compiled"`` backend: inductor kernels in eager models, traceable inside compiled ones."""
    global _compile_failed
    if torch.compiler.is_compiling():
        return fake_quant_traceable(x, threshold, bit_width, signed, narrow, binary)
    if not _compile_failed:
        key = (signed, narrow, binary, x.dim(), threshold.dim(), x.dtype, x.device.type)
        try:
            return _kernel(key)(x, threshold, bit_width, signed, narrow, binary)
        except Exception as err:  # noqa: BLE001 - judged below by whether the eager path works
            y = fake_quant_fused(x, threshold, bit_width, signed, narrow, binary)  # bad input: raises
            _compile_failed = True  # the inputs are fine, so the compiler is not: stop trying
            _kernels.clear()
            warnings.warn(f"torch.compile unavailable ({type(err).__name__}: {str(err)[:200]}); "
                          "falling back to the fused eager kernel", RuntimeWarning, stacklevel=2)
            return y
    return fake_quant_fused(x, threshold, bit_width, signed, narrow, binary)

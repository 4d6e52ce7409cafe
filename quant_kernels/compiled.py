"""Fake quantization for ``torch.compile``: the same numerics with no Python branching on tensors.

Why: inductor fuses the divide-round-clamp-rescale chain and its backward into one loop each (and
into the neighbouring BatchNorm/ReLU when the whole model is compiled), which no eager kernel can
do. The bit-width stays a tensor everywhere, so one compiled graph serves every bit-width.

* :func:`fake_quant_traceable`: call it inside code that is compiled as a whole.
* :func:`fake_quant_compiled`: the ``"compiled"`` backend for eager models; compiles the traceable
  function per configuration and shape (see :func:`_kernel`) and falls back to
  :func:`quant_kernels.fused.fake_quant_fused`, with one warning, when compilation is unavailable
  or fails. Inside a compiled model it is traceable.
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
from quant_kernels.reference import SCALING_MIN_VAL, integer_bits, scale_of


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
    int_bits = integer_bits(bit_width, binary)  # 1-bit narrow is the binary branch
    scale = scale_of(threshold, int_bits, signed, narrow)
    y = fake_quant_int_traceable(x, scale, int_bits, signed, narrow)
    if binary:
        y_bin = BinaryFakeQuantT.apply(x, threshold.abs().clamp_min(SCALING_MIN_VAL))
        y = torch.where(bit_width == 1, y_bin, y)
    return y


_static_kernels: dict[tuple, Callable] = {}  # (configuration, shapes) -> kernel
_dynamic_kernels: dict[tuple, Callable] = {}  # configuration -> kernel
_compile_failed = False
STATIC_KERNELS = 32  # shapes that get a kernel of their own; later ones share dynamic-shape kernels


def _compile(dynamic: bool | None) -> Callable:
    """A fresh copy of the traceable function, compiled: Dynamo counts recompilations per code
    object (8 by default, then it silently runs eagerly), so each kernel gets its own code."""
    f, n = fake_quant_traceable, len(_static_kernels) + len(_dynamic_kernels)
    fn = types.FunctionType(f.__code__.replace(), f.__globals__, f"{f.__name__}_{n}", f.__defaults__)
    return torch.compile(fn, fullgraph=True, dynamic=dynamic)


def _kernel(config: tuple, shapes: tuple) -> Callable:
    """The compiled function for a static configuration (flags, ranks, dtype, device) and shapes.

    The bit-width is a tensor, so changing it never recompiles. The first ``STATIC_KERNELS`` shapes
    get shape-specialised kernels: on the benchmark net (every layer its own shape), interleaved in
    one process, its train step took 8 % less (minimum) and 9 % less CPU time with them than with
    shared dynamic-shape kernels, for ~3 s of compilation per shape. A
    supernet with many widths would compile too many of them, so later shapes share one kernel per
    configuration in Dynamo's automatic dynamic mode (specialised for the first shape it sees,
    dynamic from the second on).
    """
    key = (*config, shapes)
    if key not in _static_kernels and len(_static_kernels) < STATIC_KERNELS:
        _static_kernels[key] = _compile(dynamic=False)
    if key in _static_kernels:
        return _static_kernels[key]
    if config not in _dynamic_kernels:
        _dynamic_kernels[config] = _compile(dynamic=None)
    return _dynamic_kernels[config]


def fake_quant_compiled(
    x: Tensor, threshold: Tensor, bit_width: Tensor, signed: bool, narrow: bool, binary: bool = False
) -> Tensor:
    """The ``"compiled"`` backend: inductor kernels in eager models, traceable inside compiled ones."""
    global _compile_failed
    if torch.compiler.is_compiling():
        return fake_quant_traceable(x, threshold, bit_width, signed, narrow, binary)
    if not _compile_failed:
        config = (signed, narrow, binary, x.dim(), threshold.dim(), x.dtype, x.device.type)
        try:
            return _kernel(config, (x.shape, threshold.shape))(x, threshold, bit_width, signed, narrow, binary)
        except Exception as err:  # noqa: BLE001 - judged below by whether the eager path works
            y = fake_quant_fused(x, threshold, bit_width, signed, narrow, binary)  # bad input: raises
            _compile_failed = True  # the inputs are fine, so the compiler is not: stop trying
            _static_kernels.clear()
            _dynamic_kernels.clear()
            warnings.warn(f"torch.compile unavailable ({type(err).__name__}: {str(err)[:200]}); "
                          "falling back to the fused eager kernel", RuntimeWarning, stacklevel=2)
            return y
    return fake_quant_fused(x, threshold, bit_width, signed, narrow, binary)

"""The fused kernels as Brevitas ``tensor_quant`` implementations.

Why: a Brevitas quantizer is an injector that builds a ``tensor_quant`` module returning
``(y, scale, zero_point, bit_width)``; its scale, bit-width and zero-point come from submodules
(``scaling_impl``, ``msb_clamp_bit_width_impl``...). The modules here keep those submodules, under the
same names (so state dicts are interchangeable), and replace only the per-element work
(``IntQuant``: divide, round, clamp, rescale and their STE backward) with the fused Functions.
Layers stay Brevitas layers and compute the same values.

Two ways in:

* :func:`with_fused_kernel` turns a quantizer class into one that builds the fused module
  (``QuantConv2d(..., weight_quant=with_fused_kernel(WeightQuant))``);
* :func:`set_fused_kernels` swaps them in (or back out) in an already built model.

ONNX export works either way (the export handlers read scale, zero-point and bit-width from the
proxy, which these modules return like Brevitas' own); :func:`set_fused_kernels` with
``enabled=False`` restores the stock modules should a handler ever require them.
"""

from __future__ import annotations

import torch
from brevitas.core.bit_width import BitWidthConst
from brevitas.core.function_wrapper import Identity, RoundSte, TensorClamp
from brevitas.core.quant import BinaryQuant, ClampedBinaryQuant, RescalingIntQuant
from brevitas.core.quant.delay import _NoDelay
from brevitas.core.zero_point import ZeroZeroPoint
from brevitas.inject.enum import QuantType
from torch import Tensor, nn

from quant_kernels.compiled import BinaryFakeQuantT, fake_quant_int_traceable
from quant_kernels.fused import fake_quant_binary, fake_quant_int

QuantOutput = tuple[Tensor, Tensor, Tensor, Tensor]


class FusedRescalingIntQuant(nn.Module):
    """Drop-in for ``brevitas.core.quant.RescalingIntQuant`` (zero zero-point, round-to-nearest)."""

    def __init__(
        self,
        int_quant: nn.Module,
        scaling_impl: nn.Module,
        int_scaling_impl: nn.Module,
        zero_point_impl: nn.Module,
        bit_width_impl: nn.Module,
    ):
        super().__init__()
        _check_supported(int_quant, zero_point_impl, bit_width_impl)
        self.int_quant = int_quant  # kept for its flags and so the state dict keys stay Brevitas'
        self.scaling_impl = scaling_impl
        self.int_scaling_impl = int_scaling_impl
        self.zero_point_impl = zero_point_impl
        self.msb_clamp_bit_width_impl = bit_width_impl
        self.observer_only = False  # set by Brevitas' calibration helpers
        # a constant bit-width is read once, here, so that a forward reads nothing back
        self.const_bits = float(bit_width_impl()) if isinstance(bit_width_impl, BitWidthConst) else None

    def forward(self, x: Tensor) -> QuantOutput:
        bit_width = self.msb_clamp_bit_width_impl()
        scale = self.scaling_impl(x, self.int_scaling_impl(bit_width))
        zero_point = self.zero_point_impl(x, scale, bit_width)
        if self.observer_only:
            return x, scale, zero_point, bit_width
        signed, narrow = self.int_quant.signed, self.int_quant.narrow_range
        if torch.compiler.is_compiling():  # keep the bit-width a tensor: no graph break
            y = fake_quant_int_traceable(x, scale, bit_width, signed, narrow)
        else:
            bits = self.const_bits if self.const_bits is not None else float(bit_width)
            y = fake_quant_int(x, scale, bits, signed, narrow)
        return y, scale, zero_point, bit_width

    @classmethod
    def from_default(cls, m: RescalingIntQuant) -> FusedRescalingIntQuant:
        fused = cls(m.int_quant, m.scaling_impl, m.int_scaling_impl, m.zero_point_impl,
                    m.msb_clamp_bit_width_impl)
        fused.observer_only = bool(m.observer_only)
        return fused.train(m.training)

    def to_default(self) -> RescalingIntQuant:
        m = RescalingIntQuant(self.int_quant, self.scaling_impl, self.int_scaling_impl,
                              self.zero_point_impl, self.msb_clamp_bit_width_impl)
        m.observer_only = self.observer_only
        return m.train(self.training)


class FusedBinaryQuant(nn.Module):
    """Drop-in for ``brevitas.core.quant.BinaryQuant``: ``sign(x) * scale``, identity STE."""

    def __init__(self, scaling_impl: nn.Module, signed: bool = True, quant_delay_steps: int = 0):
        super().__init__()
        if not signed or quant_delay_steps:
            raise ValueError("fused binary quantization is signed and has no quantization delay")
        self.scaling_impl = scaling_impl

    def forward(self, x: Tensor) -> QuantOutput:
        scale = self.scaling_impl(x)
        return _binary(x, scale), scale, _zero(x), _one(x)

    @classmethod
    def from_default(cls, m: BinaryQuant) -> FusedBinaryQuant:
        _check_no_delay(m.delay_wrapper)
        return cls(m.scaling_impl).train(m.training)

    def to_default(self) -> BinaryQuant:
        return BinaryQuant(self.scaling_impl).train(self.training)


class FusedClampedBinaryQuant(FusedBinaryQuant):
    """Drop-in for ``brevitas.core.quant.ClampedBinaryQuant``.

    Like Brevitas, first clamps the input to [-scale, scale] with its ``tensor_clamp_impl`` (the
    default one, ``InplaceTensorClampSte``, clips the latent float weights in place): the output
    is the same, the side effect on the weights too.
    """

    def __init__(self, scaling_impl: nn.Module, tensor_clamp_impl: nn.Module | None = None,
                 quant_delay_steps: int = 0):
        super().__init__(scaling_impl, True, quant_delay_steps)
        self.tensor_clamp_impl = TensorClamp() if tensor_clamp_impl is None else tensor_clamp_impl

    def forward(self, x: Tensor) -> QuantOutput:
        scale = self.scaling_impl(x)
        x = self.tensor_clamp_impl(x, -scale, scale)
        return _binary(x, scale), scale, _zero(x), _one(x)

    @classmethod
    def from_default(cls, m: ClampedBinaryQuant) -> FusedClampedBinaryQuant:
        _check_no_delay(m.delay_wrapper)
        return cls(m.scaling_impl, m.tensor_clamp_impl).train(m.training)

    def to_default(self) -> ClampedBinaryQuant:
        return ClampedBinaryQuant(self.scaling_impl, self.tensor_clamp_impl).train(self.training)


def _binary(x: Tensor, scale: Tensor) -> Tensor:
    if torch.compiler.is_compiling():
        return BinaryFakeQuantT.apply(x, scale)
    return fake_quant_binary(x, scale)


def _zero(x: Tensor) -> Tensor:
    return torch.zeros((), dtype=x.dtype, device=x.device)


def _one(x: Tensor) -> Tensor:
    return torch.ones((), dtype=x.dtype, device=x.device)


def _check_no_delay(delay_wrapper: nn.Module) -> None:
    if not isinstance(delay_wrapper.delay_impl, _NoDelay):
        raise ValueError("the fused kernels do not implement Brevitas' quant_delay_steps")


def _check_supported(int_quant: nn.Module, zero_point_impl: nn.Module, bit_width_impl: nn.Module) -> None:
    """The fused kernel is exactly IntQuant only for this configuration; refuse anything else."""
    problems = []
    if any(p.requires_grad for p in bit_width_impl.parameters()):
        problems.append("a learned bit-width")
    if not isinstance(zero_point_impl, ZeroZeroPoint):
        problems.append(f"zero point {type(zero_point_impl).__name__} (only ZeroZeroPoint)")
    if not isinstance(getattr(int_quant, "float_to_int_impl", None), RoundSte):
        problems.append("float_to_int_impl other than RoundSte")
    if not isinstance(getattr(int_quant, "input_view_impl", Identity()), Identity):
        problems.append("an input view (e.g. groupwise quantization)")
    if problems:
        raise ValueError("no fused kernel for this quantizer: " + "; ".join(problems))
    _check_no_delay(int_quant.delay_wrapper)


_TO_FUSED: dict[type, type] = {
    RescalingIntQuant: FusedRescalingIntQuant,
    BinaryQuant: FusedBinaryQuant,
    ClampedBinaryQuant: FusedClampedBinaryQuant,
}
_FUSED_TYPES = (FusedRescalingIntQuant, FusedBinaryQuant)


def with_fused_kernel(quant: type) -> type:
    """The Brevitas quantizer (injector class) ``quant`` building its ``tensor_quant`` fused.

    Integer quantizers map to :class:`FusedRescalingIntQuant`; quantizers that declare
    ``BinaryQuant``/``ClampedBinaryQuant`` map to their fused twins. Anything else raises.
    """
    spec = getattr(quant, "__dependencies__", {}).get("tensor_quant")  # (kind, value, args, n)
    declared = spec[1] if isinstance(spec, tuple) and len(spec) > 1 else None
    if isinstance(declared, type):
        if declared not in _TO_FUSED:
            raise ValueError(f"{quant.__name__}: no fused kernel for tensor_quant {declared.__name__}")
        fused = _TO_FUSED[declared]
    elif _quant_type(quant) in (QuantType.INT, "INT", "int"):
        fused = FusedRescalingIntQuant
    else:
        raise ValueError(f"{quant.__name__}: no fused kernel for this quantizer")
    return quant.let(tensor_quant=fused)


def _quant_type(quant: type) -> object:
    try:
        return quant.quant_type
    except Exception:  # noqa: BLE001 - an injector that cannot resolve it has none
        return None


def set_fused_kernels(model: nn.Module, enabled: bool = True) -> int:
    """Swap every supported Brevitas ``tensor_quant`` in ``model`` for its fused twin (or back,
    with ``enabled=False``), sharing the learned submodules. Returns how many were swapped."""
    swaps = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if enabled and type(child) in _TO_FUSED:
                swaps.append((parent, name, _TO_FUSED[type(child)].from_default(child)))
            elif not enabled and isinstance(child, _FUSED_TYPES):
                swaps.append((parent, name, child.to_default()))
    for parent, name, new in swaps:
        setattr(parent, name, new)
    return len(swaps)

"""Integer reference of a whole Brevitas network: what the deployed integer model computes.

Why: integer codes on disk are only proven right when running them reproduces the network.
:func:`integer_reference` swaps each ``QuantConv2d``/``QuantLinear`` of a net for an
:class:`IntegerLayer`, which quantizes its input to integer codes, computes the accumulators
exactly with :mod:`quant_kernels.intops` on the given weight codes and applies the scales and the
bias once. The model's own ``forward`` stays, so any topology works (residual adds,
concatenations, depthwise convs). Each swapped layer also computes the accumulators of the
original Brevitas layer's own integer codes (its quantizers' ``.int()``) on the same input and
records whether they are exactly its own: the deployed codes are Brevitas' codes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from brevitas.function.ops import max_int, min_int
from brevitas.nn import QuantConv2d, QuantLinear
from torch import Tensor, nn

from quant_kernels.intops import dequantize, int_conv2d, int_linear


@dataclass(frozen=True)
class IntegerWeights:
    """One layer of a deployed integer model: its weight codes and scales, and how its input is
    quantized (per tensor, zero point 0)."""

    codes: Tensor  # integers, the layer's weight shape
    scale: Tensor  # the weights' scale: one per output channel, or one
    input_scale: float
    input_bits: int
    input_signed: bool
    input_narrow: bool = False
    bias_int32: bool = False  # the bias is added to the accumulators as int32 codes at their scale

    def input_range(self) -> tuple[int, int]:
        """Smallest and largest input code (Brevitas' ranges)."""
        bits = torch.tensor(float(self.input_bits))
        return (int(min_int(self.input_signed, self.input_narrow, bits)),
                int(max_int(self.input_signed, self.input_narrow, bits)))


class IntegerLayer(nn.Module):
    """A quantized conv/linear layer computed on integers; on every call it also checks its
    accumulators against the Brevitas layer it replaces (``exact``, ``max_acc_error``)."""

    def __init__(self, layer: QuantConv2d | QuantLinear, weights: IntegerWeights):
        super().__init__()
        if weights.codes.shape != layer.weight.shape:
            raise ValueError(f"weight codes of shape {tuple(weights.codes.shape)} for a layer of shape "
                             f"{tuple(layer.weight.shape)}")
        if isinstance(layer, QuantConv2d) and layer.padding_mode != "zeros":
            raise ValueError(f"padding_mode {layer.padding_mode!r}: the integer reference pads with zeros")
        self.layer = layer
        self.weights = weights
        self.exact = True
        self.max_acc_error = 0  # largest |accumulator - Brevitas' accumulator| seen

    def accumulate(self, codes: Tensor, weight_codes: Tensor) -> Tensor:
        """The exact accumulators of this layer on integer input and weight codes."""
        layer = self.layer
        if isinstance(layer, QuantConv2d):
            return int_conv2d(codes, weight_codes, layer.stride, layer.padding, layer.dilation, layer.groups)
        if codes.dim() != 2:
            raise ValueError(f"the integer reference takes (N, features) into a Linear, got shape {tuple(codes.shape)}")
        return int_linear(codes, weight_codes)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        lo, hi = self.weights.input_range()
        x_scale = torch.tensor(self.weights.input_scale, dtype=x.dtype)
        codes = torch.clamp(torch.round(x / x_scale), lo, hi)  # Brevitas' order: divide, round, clamp
        acc = self.accumulate(codes, self.weights.codes)
        brevitas = self.accumulate(self.layer.input_quant(x).int(), self.layer.quant_weight().int())
        self.max_acc_error = max(self.max_acc_error, int((acc - brevitas).abs().max()))
        self.exact = self.exact and self.max_acc_error == 0
        if self.weights.bias_int32:
            return dequantize(acc + self.bias_codes(x_scale), x_scale, self.weights.scale, dtype=x.dtype)
        return dequantize(acc, x_scale, self.weights.scale, self.layer.bias, dtype=x.dtype)

    def bias_codes(self, x_scale: Tensor) -> Tensor:
        """The bias as int32 codes at the accumulators' scale (Brevitas' ``Int32Bias``: the float32
        product of the input and weight scales), shaped to add to them."""
        scale = (x_scale * self.weights.scale.reshape(-1)).float()
        codes = torch.round(self.layer.bias.detach().float() / scale).to(torch.int64)
        return codes.view((1, -1) + (1,) * (2 if isinstance(self.layer, QuantConv2d) else 0))


def integer_reference(model: nn.Module, weights: Mapping[str, IntegerWeights]) -> nn.Module:
    """``model`` with its quantized layers computed on integers, swapped in place (pass a copy to
    keep the net), and returned.

    Every ``QuantConv2d``/``QuantLinear`` with quantized weights and input must be named; layers
    with a float operand stay as they are (see :func:`float_layers`).
    """
    names = integer_layer_names(model)
    missing = [n for n in names if n not in weights]
    if missing:
        raise ValueError(f"no integer weights for {', '.join(missing)}")
    unknown = [n for n in weights if n not in names]
    if unknown:
        raise ValueError(f"integer weights for {', '.join(unknown)}, which is not a quantized layer of the net")
    for name in names:
        parent, _, leaf = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, leaf, IntegerLayer(owner.get_submodule(leaf), weights[name]))
    return model.eval()


def integer_layer_names(model: nn.Module) -> list[str]:
    """The ``QuantConv2d``/``QuantLinear`` layers of ``model`` with quantized weights and input."""
    return [n for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))
            and m.weight_quant.is_quant_enabled and m.input_quant.is_quant_enabled]


def float_layers(model: nn.Module) -> list[str]:
    """The ``QuantConv2d``/``QuantLinear`` layers with a float weight or input: no integer form."""
    ints = set(integer_layer_names(model))
    return [n for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear)) and n not in ints]


def integer_layers(model: nn.Module) -> list[IntegerLayer]:
    """The swapped layers of an :func:`integer_reference`, in module order."""
    return [m for m in model.modules() if isinstance(m, IntegerLayer)]

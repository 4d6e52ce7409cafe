"""Searchable Brevitas layers: one shared float weight at max width, a learned clipping threshold
per bit-width, and the active choice held in tensor buffers (switching paths rebuilds nothing).

Each layer can hand out the static Brevitas layer for its active setting (Once-for-All style):
``to_static()`` returns a plain ``brevitas.nn.QuantConv2d`` / ``QuantLinear`` whose input and
weight quantizers carry the active bit-widths and learned thresholds, so the two compute the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from brevitas.inject.enum import ScalingImplType
from brevitas.nn import QuantConv2d, QuantLinear
from brevitas.quant import (
    Int8ActPerTensorFloat,
    Int8WeightPerChannelFloat,
    Uint8ActPerTensorFloat,
)
from brevitas.quant.binary import SignedBinaryWeightPerTensorConst
from torch import Tensor, nn

from quant_kernels import fake_quant_impl
from quant_kernels.input_conv import conv2d_quantized_input

Bits = int | None  # None: the operand stays float (counts 32 bits in the cost model)


def channels(base: int, multiplier: float | None) -> int:
    """Active channel count for a width multiplier on ``base`` channels (the one rounding rule)."""
    if multiplier is None:
        return base
    return max(1, int(round(base * multiplier)))


class BitChoiceQuantizer(nn.Module):
    """Fake quantizer with one learned clipping threshold per bit-width choice.

    ``threshold`` has shape (n_choices, channels): per output channel for weights, one column
    for activations. Only the active row takes part in the forward pass, so only it gets gradient.
    """

    def __init__(self, bit_choices: Sequence[Bits], channels: int, signed: bool, narrow: bool):
        super().__init__()
        if any(b is None for b in bit_choices) and len(bit_choices) > 1:
            raise ValueError("a float (None) operand cannot share a layer with quantized choices")
        self.bit_choices: tuple[Bits, ...] = tuple(bit_choices)
        self.signed, self.narrow = signed, narrow
        self.quantized = self.bit_choices[0] is not None
        self.backend = "reference"  # name in quant_kernels.FAKE_QUANT_BACKENDS
        self.binary = signed and narrow and 1 in self.bit_choices
        table = [float(b) if b is not None else 32.0 for b in self.bit_choices]
        self.register_buffer("bits_table", torch.tensor(table))
        self.register_buffer("index", torch.zeros((), dtype=torch.long))
        self.threshold = nn.Parameter(torch.ones(len(self.bit_choices), channels))

    @property
    def active_bits(self) -> Bits:
        return self.bit_choices[int(self.index)]

    def select(self, bits: Bits) -> None:
        try:
            self.index.fill_(self.bit_choices.index(bits))
        except ValueError:
            raise ValueError(f"{bits}-bit is not among this layer's choices {self.bit_choices}") from None

    def _active_row(self, table: Tensor) -> Tensor:
        """Row ``index`` of a per-choice table, by ``index_select``: eager indexing with the 0-d
        buffer reads it back as a Python int (a host sync when it lives on a GPU)."""
        return table.index_select(0, self.index.view(1)).squeeze(0)

    def active_threshold(self, n: int | None = None) -> Tensor:
        """Threshold of the active bit-width for the first ``n`` channels (all when None)."""
        row = self._active_row(self.threshold)
        return row if n is None else row[:n]

    def active_args(self, x: Tensor, n_channels: int | None = None) -> tuple:
        """The arguments after ``x`` of the backend's fake-quant call for the active choice."""
        t = self.active_threshold(n_channels)
        t = t.view(-1, *([1] * (x.dim() - 1))) if n_channels is not None else t.view(())
        return t, self._active_row(self.bits_table), self.signed, self.narrow, self.binary

    def forward(self, x: Tensor, n_channels: int | None = None) -> Tensor:
        if not self.quantized:
            return x
        return fake_quant_impl(self.backend)(x, *self.active_args(x, n_channels))


class SearchableLayer(nn.Module):
    """Shared machinery of searchable conv and linear layers (weights at max width).

    The active channel counts live twice: in the ``in_active``/``out_active`` buffers (saved in
    checkpoints) and as Python ints that ``forward`` slices with, so that a forward pass reads no
    tensor back (no host sync on GPU, no graph break under ``torch.compile``). ``set_channels``
    and ``load_state_dict`` keep the two equal.
    """

    weight: nn.Parameter
    # Max-width compute for torch.compile: the full weights, inactive output channels zeroed by a
    # mask built from the buffers. Every path then has the same shapes, so one graph serves all.
    masked = False

    def __init__(self, ref: nn.Conv2d | nn.Linear, in_max: int, out_max: int, input_signed: bool):
        super().__init__()
        self.weight, self.bias = ref.weight, ref.bias
        self.in_max, self.out_max = in_max, out_max
        self.input_signed = input_signed
        self.register_buffer("in_active", torch.tensor(in_max))
        self.register_buffer("out_active", torch.tensor(out_max))
        self.n_in, self.n_out = in_max, out_max
        self.configure_bits((8,), (8,))

    def configure_bits(self, w_choices: Sequence[Bits], a_choices: Sequence[Bits]) -> None:
        """(Re)create the quantizers for these bit-width choices, thresholds from the weights."""
        self.weight_quant = BitChoiceQuantizer(w_choices, self.out_max, signed=True, narrow=True)
        self.input_quant = BitChoiceQuantizer(
            a_choices, 1, signed=self.input_signed, narrow=False
        )
        self.init_weight_thresholds()

    @torch.no_grad()
    def init_weight_thresholds(self) -> None:
        """Per-channel threshold per bit-width: LSQ-style 2·mean|w|·sqrt(Qp), at most max|w|;
        binary weights take mean|w| (the scale that minimises the L2 error of sign(w))."""
        w = self.weight.detach().flatten(1).abs()
        mean, mx = w.mean(1), w.amax(1)
        for i, b in enumerate(self.weight_quant.bit_choices):
            if b is None:
                continue
            t = mean if b == 1 else torch.minimum(mx, 2 * mean * (2 ** (b - 1) - 1) ** 0.5)
            self.weight_quant.threshold[i].copy_(t.clamp_min(1e-8))

    def set_active(self, w_bits: Bits, a_bits: Bits) -> None:
        self.weight_quant.select(w_bits)
        self.input_quant.select(a_bits)

    def set_channels(self, in_channels: int | None = None, out_channels: int | None = None) -> None:
        if in_channels is not None:
            self.n_in = _check(in_channels, self.in_max, "input")
            self.in_active.fill_(self.n_in)
        if out_channels is not None:
            self.n_out = _check(out_channels, self.out_max, "output")
            self.out_active.fill_(self.n_out)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.n_in, self.n_out = int(self.in_active), int(self.out_active)

    @property
    def active(self) -> tuple[int, int, Bits, Bits]:
        """(in_channels, out_channels, w_bits, a_bits) of the active setting."""
        return (self.n_in, self.n_out, self.weight_quant.active_bits, self.input_quant.active_bits)

    def active_weight(self) -> Tensor:
        """Max-width weight sliced to the active channels (first k out, first k in)."""
        raise NotImplementedError

    def active_bias(self) -> Tensor | None:
        """The bias of the active output channels (None without bias)."""
        return None if self.bias is None else self.bias[: self.n_out]

    def _compute_weight(self) -> Tensor:
        """What forward multiplies with: the active slice, or the whole weight when masked."""
        return self.weight if self.masked else self.active_weight()

    def _compute_bias(self) -> Tensor | None:
        return self.bias if self.masked else self.active_bias()

    def _out_mask(self, y: Tensor) -> Tensor:
        """``y`` with the output channels beyond the active count zeroed (masked mode)."""
        keep = torch.arange(self.out_max, device=y.device) < self.out_active
        return y * keep.view(1, -1, *([1] * (y.dim() - 2))).to(y.dtype)

    def active_slices(self) -> dict[nn.Parameter, tuple]:
        """Index of the part of each parameter the active setting uses (the optimiser leaves
        the rest alone): the active channels of weight and bias, the active threshold rows."""
        out = slice(self.n_out)
        w_index = (out,) if getattr(self, "groups", 1) > 1 else (out, slice(self.n_in))
        parts = {
            self.weight: w_index,
            self.weight_quant.threshold: (int(self.weight_quant.index), out),
            self.input_quant.threshold: (int(self.input_quant.index),),
        }
        if self.bias is not None:
            parts[self.bias] = (out,)
        return parts

    def forward(self, x: Tensor) -> Tensor:
        w = self._compute_weight()
        xq = self.input_quant(x)
        wq = self.weight_quant(w, w.shape[0])
        y = self._op(xq, wq)
        return self._out_mask(y) if self.masked else y

    def _op(self, x: Tensor, w: Tensor) -> Tensor:
        raise NotImplementedError

    def _static_quant_kwargs(self) -> dict:
        """Brevitas quantizer arguments carrying the active bits and learned thresholds."""
        kw: dict = {}
        w_bits, a_bits = self.weight_quant.active_bits, self.input_quant.active_bits
        out = self.n_out
        if w_bits is None:
            kw["weight_quant"] = None
        else:
            shape = (out,) + (1,) * (self.weight.dim() - 1)
            t = self.weight_quant.active_threshold(out).detach().clone().view(shape)
            kw["weight_quant"] = BinaryWeightQuant if w_bits == 1 else WeightQuant
            kw["weight_scaling_init"] = t
            if w_bits != 1:
                kw["weight_bit_width"] = w_bits
        if a_bits is not None:
            kw["input_quant"] = SignedActQuant if self.input_signed else UnsignedActQuant
            kw["input_bit_width"] = a_bits
            kw["input_scaling_init"] = self.input_quant.active_threshold().detach().clone().view(())
        return kw


def _check(n: int, n_max: int, what: str) -> int:
    if not 1 <= n <= n_max:
        raise ValueError(f"{what} channels {n} outside 1..{n_max}")
    return n


class SearchableConv2d(SearchableLayer):
    """Conv2d whose bits and channel counts are chosen per path.

    Depthwise convs follow their channel group (input = output channels); other grouped convs
    keep their channels (only their bits are searched).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        groups: int = 1,
        bias: bool = False,
        input_signed: bool = False,
        dilation: int | tuple[int, int] = 1,
    ):
        ref = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        ref.padding = _explicit_padding(ref)
        super().__init__(ref, in_channels, out_channels, input_signed)
        self.depthwise = groups > 1 and groups == in_channels == out_channels
        self.groups = groups
        self.kernel_size, self.stride = ref.kernel_size, ref.stride
        self.padding, self.dilation = ref.padding, ref.dilation

    @property
    def active(self) -> tuple[int, int, Bits, Bits]:
        in_c, out_c, w, a = super().active
        return (out_c if self.depthwise else in_c), out_c, w, a  # a depthwise conv's input follows its output

    def set_channels(self, in_channels: int | None = None, out_channels: int | None = None) -> None:
        if self.groups > 1 and not self.depthwise and (in_channels, out_channels) != (None, None):
            raise ValueError("the channels of a grouped conv are fixed")
        super().set_channels(in_channels, out_channels)

    def active_weight(self) -> Tensor:
        if self.groups > 1:
            return self.weight[: self.n_out]
        return self.weight[: self.n_out, : self.n_in]

    def forward(self, x: Tensor) -> Tensor:
        q = self.input_quant
        if q.quantized and not x.requires_grad and q.threshold.requires_grad and torch.is_grad_enabled():
            # the network input: its threshold's gradient without the conv's input gradient
            w = self._compute_weight()
            y = conv2d_quantized_input(x, *q.active_args(x), fake_quant_impl(q.backend),
                                       self.weight_quant(w, w.shape[0]), *self._conv_args())
            return self._out_mask(y) if self.masked else y
        return super().forward(x)

    def _active_groups(self) -> int:
        if self.depthwise:
            return self.out_max if self.masked else self.n_out
        return self.groups

    def _conv_args(self) -> tuple:
        """bias, stride, padding, dilation, groups of ``F.conv2d`` for the active setting."""
        return self._compute_bias(), self.stride, self.padding, self.dilation, self._active_groups()

    def _op(self, x: Tensor, w: Tensor) -> Tensor:
        return F.conv2d(x, w, *self._conv_args())

    @torch.no_grad()
    def to_static(self) -> QuantConv2d:
        in_c, out_c, _, _ = self.active
        layer = QuantConv2d(
            in_c, out_c, self.kernel_size, self.stride, self.padding, self.dilation,
            groups=self._active_groups(), bias=self.bias is not None,
            **self._static_quant_kwargs(),
        )
        layer.weight.copy_(self.active_weight())
        if self.bias is not None:
            layer.bias.copy_(self.active_bias())
        return layer


def _explicit_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """'valid'/'same' as numbers (the quantized-input conv's backward takes numbers only)."""
    if not isinstance(conv.padding, str):
        return conv.padding
    if conv.padding == "valid":
        return (0, 0)
    total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
    if any(t % 2 for t in total):
        raise ValueError(f"padding='same' with kernel {conv.kernel_size} pads unevenly; give the padding as numbers")
    return (total[0] // 2, total[1] // 2)


class SearchableLinear(SearchableLayer):
    """Linear layer whose bits and feature counts are chosen per path."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, input_signed: bool = False):
        super().__init__(nn.Linear(in_features, out_features, bias=bias), in_features, out_features,
                         input_signed)

    def active_weight(self) -> Tensor:
        return self.weight[: self.n_out, : self.n_in]

    def _op(self, x: Tensor, w: Tensor) -> Tensor:
        return F.linear(x, w, self._compute_bias())

    @torch.no_grad()
    def to_static(self) -> QuantLinear:
        in_f, out_f, _, _ = self.active
        layer = QuantLinear(in_f, out_f, bias=self.bias is not None, **self._static_quant_kwargs())
        layer.weight.copy_(self.active_weight())
        if self.bias is not None:
            layer.bias.copy_(self.active_bias())
        return layer


class SlicedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm at max width that normalises the first k channels (statistics shared).

    Masked (see ``SearchableLayer.masked``), it normalises every channel, zeroes the inactive
    ones and keeps their running statistics unchanged, as the sliced form does.
    """

    masked = False

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1):
        super().__init__(num_features, eps, momentum)
        self.register_buffer("num_active", torch.tensor(num_features))

    def set_channels(self, n: int) -> None:
        self.num_active.fill_(_check(n, self.num_features, "BatchNorm"))

    def active_slices(self) -> dict[nn.Parameter, tuple]:
        """The active channels of weight and bias (see ``SearchableLayer.active_slices``)."""
        c = (slice(int(self.num_active)),)
        return {self.weight: c, self.bias: c}

    def forward(self, x: Tensor) -> Tensor:
        if self.masked:
            return self._masked_forward(x)
        c = x.shape[1]
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        else:
            factor = 0.0
        use_batch_stats = self.training or not self.track_running_stats
        return F.batch_norm(
            x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
            use_batch_stats, factor, self.eps,
        )

    def _masked_forward(self, x: Tensor) -> Tensor:
        keep = torch.arange(self.num_features, device=x.device) < self.num_active
        updating = self.training and self.track_running_stats
        if updating:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        else:
            factor = 0.0
        # batch_norm updates copies; only the active channels' statistics are taken back
        mean, var = self.running_mean.clone(), self.running_var.clone()
        y = F.batch_norm(x, mean, var, self.weight, self.bias, self.training or not self.track_running_stats,
                         factor, self.eps)
        if updating:
            with torch.no_grad():
                self.running_mean.copy_(torch.where(keep, mean, self.running_mean))
                self.running_var.copy_(torch.where(keep, var, self.running_var))
        return y * keep.view(1, -1, 1, 1).to(y.dtype)

    @torch.no_grad()
    def to_static(self) -> nn.BatchNorm2d:
        c = int(self.num_active)
        bn = nn.BatchNorm2d(c, self.eps, self.momentum)
        bn.weight.copy_(self.weight[:c])
        bn.bias.copy_(self.bias[:c])
        bn.running_mean.copy_(self.running_mean[:c])
        bn.running_var.copy_(self.running_var[:c])
        bn.num_batches_tracked.copy_(self.num_batches_tracked)
        return bn


# Brevitas quantizers carrying a learned threshold as a parameter (initialised from the supernet).


class WeightQuant(Int8WeightPerChannelFloat):
    """Signed narrow-range per-output-channel weights with a learned threshold."""

    scaling_impl_type = ScalingImplType.PARAMETER


class BinaryWeightQuant(SignedBinaryWeightPerTensorConst):
    """1-bit weights: sign(w) times a learned per-output-channel threshold."""

    scaling_impl_type = ScalingImplType.PARAMETER
    scaling_per_output_channel = True


class UnsignedActQuant(Uint8ActPerTensorFloat):
    """Unsigned per-tensor activations (after ReLU) with a learned threshold."""

    scaling_impl_type = ScalingImplType.PARAMETER


class SignedActQuant(Int8ActPerTensorFloat):
    """Signed per-tensor activations (network input) with a learned threshold."""

    scaling_impl_type = ScalingImplType.PARAMETER

"""Searchable Conv2d and Linear layers: one shared float weight at max width, sliced to the
active channels, with a bit-choice quantizer on the weight and one on the input.

Each layer hands out the static Brevitas layer for its active setting (Once-for-All style):
``to_static()`` returns a plain ``brevitas.nn.QuantConv2d`` / ``QuantLinear`` whose input and
weight quantizers carry the active bit-widths and learned thresholds, so the two compute the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from brevitas.nn import QuantConv2d, QuantLinear
from torch import Tensor, nn

from qspos.core.layers.quant import BitChoiceQuantizer, Bits
from qspos.core.layers.sliced import check_channels
from qspos.core.layers.static_quant import BinaryWeightQuant, SignedActQuant, UnsignedActQuant, WeightQuant
from quant_kernels import fake_quant_impl
from quant_kernels.input_conv import conv2d_quantized_input


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
            self.n_in = check_channels(in_channels, self.in_max, "input")
            self.in_active.fill_(self.n_in)
        if out_channels is not None:
            self.n_out = check_channels(out_channels, self.out_max, "output")
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
            self.weight_quant.threshold: (self.weight_quant.active_index, out),
            self.input_quant.threshold: (self.input_quant.active_index,),
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

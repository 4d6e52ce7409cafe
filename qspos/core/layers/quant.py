"""The searchable fake quantizer: one learned clipping threshold per bit-width choice over one
shared input, the active choice held in a buffer (switching bit-widths rebuilds nothing)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from quant_kernels import PYTHON_BITS_BACKENDS, fake_quant_impl

Bits = int | None  # None: the operand stays float
FLOAT_BITS = 32  # what a float operand counts in BitOps and size, and its bit-width in a quantizer's table


class BitChoiceQuantizer(nn.Module):
    """Fake quantizer with one learned clipping threshold per bit-width choice.

    ``threshold`` has shape (n_choices, channels): per output channel for weights, one column
    for activations. Only the active row takes part in the forward pass, so only it gets gradient.
    The active choice lives in the ``index`` buffer (saved in checkpoints, read by compiled code)
    and in its Python mirror ``active_index``, which ``select`` and ``load_state_dict`` keep equal:
    eager code reads the mirror, never the buffer (no host sync).
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
        table = [float(b if b is not None else FLOAT_BITS) for b in self.bit_choices]
        self.register_buffer("bits_table", torch.tensor(table))
        self.register_buffer("index", torch.zeros((), dtype=torch.long))
        self.active_index = 0
        self.threshold = nn.Parameter(torch.ones(len(self.bit_choices), channels))

    @property
    def active_bits(self) -> Bits:
        return self.bit_choices[self.active_index]

    def select(self, bits: Bits) -> None:
        try:
            self.active_index = self.bit_choices.index(bits)
        except ValueError:
            raise ValueError(f"{bits}-bit is not among this layer's choices {self.bit_choices}") from None
        self.index.fill_(self.active_index)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.active_index = int(self.index)

    def _active_row(self, table: Tensor) -> Tensor:
        """Row ``index`` of a per-choice table, by ``index_select``: eager indexing with the 0-d
        buffer reads it back as a Python int (a host sync when it lives on a GPU)."""
        return table.index_select(0, self.index.view(1)).squeeze(0)

    def active_threshold(self, n: int | None = None) -> Tensor:
        """Threshold of the active bit-width for the first ``n`` channels (all when None)."""
        row = self._active_row(self.threshold)
        return row if n is None else row[:n]

    def active_args(self, x: Tensor, n_channels: int | None = None) -> tuple:
        """The arguments after ``x`` of the backend's fake-quant call for the active choice; the
        bit-width as a Python number where the backend takes one (nothing is read back)."""
        t = self.active_threshold(n_channels)
        t = t.view(-1, *([1] * (x.dim() - 1))) if n_channels is not None else t.view(())
        if self.backend in PYTHON_BITS_BACKENDS:
            bits: Tensor | int = self.active_bits
        else:
            bits = self._active_row(self.bits_table)
        return t, bits, self.signed, self.narrow, self.binary

    def forward(self, x: Tensor, n_channels: int | None = None) -> Tensor:
        if not self.quantized:
            return x
        return fake_quant_impl(self.backend)(x, *self.active_args(x, n_channels))

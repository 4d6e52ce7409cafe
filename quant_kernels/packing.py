"""Dense bit packing of 1- to 8-bit integers (the payload of the packed export).

Layout: value ``i`` occupies stream bits ``[i * bits, (i + 1) * bits)``, least significant bit
first, and stream bit ``k`` is bit ``k % 8`` of byte ``k // 8`` (LSB-first, as
``numpy.packbits(bitorder="little")``). So 3-, 5-, 6- and 7-bit values straddle byte boundaries
and ``n`` values take exactly ``ceil(n * bits / 8)`` bytes; the unused high bits of the last byte
are zero. Signed values are stored in two's complement on ``bits`` bits.

Binary (1-bit) weights have codes -1/+1, which signed 1-bit two's complement cannot hold; pack
them as unsigned sign bits: ``pack((codes > 0).to(torch.uint8), 1, signed=False)``.

A packed export (``weights.bin`` + ``weights.json``) is read back by :func:`read_packed`, which
needs nothing of qspos. ``weights.json`` is::

    {"format": "qspos-packed-2", "byte_order": "little", "bit_order": "lsb-first",
     "layers": [{"name", "shape", "bits", "encoding": "int" | "binary", "signed", "narrow_range",
                 "offset", "nbytes", "scale", "zero_point", "scale_axis",
                 "input_bits", "input_scale", "input_zero_point", "input_signed", "input_narrow",
                 "bias_int32"}]}

Layer ``name``'s codes are bytes ``[offset, offset + nbytes)`` of ``weights.bin``, packed as above
(``bits`` per value, ``signed``: two's complement); ``encoding`` ``"binary"`` stores one bit per
weight, 1 for +1 and 0 for -1. ``narrow_range``: the codes avoid the most negative value (a signed
b-bit code lies in ``[-(2^(b-1) - 1), 2^(b-1) - 1]``). A weight is ``(code - zero_point) * scale``,
with one scale (and zero point) per index of axis ``scale_axis`` (the output channel). An input
is quantized per tensor: ``clamp(round(x / input_scale) + input_zero_point)`` to the range of
``input_bits`` / ``input_signed`` / ``input_narrow`` (all null: the layer's input stays float).
``bias_int32`` true: the layer's bias (stored beside the codes, e.g. qspos's ``float.npz``) is
added to the accumulators as ``round(bias / (input_scale * scale))``, an int32 per output channel
(a net trained in its deployment form); false or absent: the bias is added in float after scaling.
A ``qspos-packed-1`` header (before the sign, narrow-range and zero-point fields) reads the same.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

WEIGHTS_FILE, HEADER_FILE = "weights.bin", "weights.json"


def packed_size(n: int, bits: int) -> int:
    """Bytes taken by ``n`` packed ``bits``-bit values: ``ceil(n * bits / 8)``."""
    _check_bits(bits)
    if n < 0:
        raise ValueError(f"negative count {n}")
    return (n * bits + 7) // 8


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    """Smallest and largest value a ``bits``-bit integer can hold."""
    _check_bits(bits)
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def pack(values: Tensor, bits: int, signed: bool) -> bytes:
    """Pack the integers in ``values`` (any shape, flattened row-major) into bytes.

    ``values`` may be an integer tensor or a float tensor holding integers (e.g. codes from
    :func:`quant_kernels.to_int`). Raises ``ValueError`` for non-integers or values out of range.
    """
    lo, hi = int_range(bits, signed)
    v = _as_int64(values).reshape(-1)
    if v.numel() and (int(v.min()) < lo or int(v.max()) > hi):
        bad = v[(v < lo) | (v > hi)]
        raise ValueError(f"{bad.numel()} value(s) outside the {'signed' if signed else 'unsigned'} "
                         f"{bits}-bit range [{lo}, {hi}], e.g. {int(bad[0])}")
    codes = (v & ((1 << bits) - 1)).numpy().astype(np.uint8)  # two's complement on `bits` bits
    stream = np.unpackbits(codes[:, None], axis=1, count=bits, bitorder="little")
    return np.packbits(stream.reshape(-1), bitorder="little").tobytes()


def unpack(data: bytes | Tensor, bits: int, shape: int | Sequence[int], signed: bool) -> Tensor:
    """Inverse of :func:`pack`: the int64 tensor of ``shape`` (or count) packed in ``data``
    (bytes-like, or a uint8 tensor)."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    n = int(np.prod(shape, dtype=np.int64))
    if isinstance(data, Tensor):
        raw = data.detach().cpu().reshape(-1).to(torch.uint8).numpy()
    else:
        raw = np.frombuffer(bytes(data), dtype=np.uint8)
    if raw.size != packed_size(n, bits):
        raise ValueError(f"{raw.size} bytes cannot hold exactly {n} {bits}-bit values "
                         f"(expected {packed_size(n, bits)})")
    stream = np.unpackbits(raw, count=n * bits, bitorder="little").reshape(n, bits)
    codes = np.packbits(stream, axis=1, bitorder="little")[:, 0].astype(np.int64)
    if signed:
        codes -= (codes >> (bits - 1) & 1) << bits  # sign-extend
    return torch.from_numpy(codes).reshape(shape)


@dataclass(frozen=True)
class PackedLayer:
    """One layer of a packed export: its integer codes and its ``weights.json`` entry."""

    codes: Tensor  # int64, the weight's shape; binary weights as -1/+1
    entry: dict[str, Any]  # the layer's ``weights.json`` entry

    @property
    def scale(self) -> Tensor:
        """The weights' scale, shaped to broadcast against the codes along ``scale_axis``."""
        return self._per_channel(self.entry["scale"], torch.float32)

    @property
    def zero_point(self) -> Tensor:
        """The weights' zero point, shaped as :attr:`scale` (0 in a ``qspos-packed-1`` header)."""
        return self._per_channel(self.entry.get("zero_point", 0), torch.int64)

    def dequantized(self) -> Tensor:
        """The float32 weights: ``(codes - zero_point) * scale``."""
        return (self.codes - self.zero_point).to(torch.float32) * self.scale

    def _per_channel(self, values: Any, dtype: torch.dtype) -> Tensor:
        t = torch.tensor(values, dtype=dtype).flatten()
        if t.numel() == 1:
            return t.reshape([1] * self.codes.dim())
        shape = [1] * self.codes.dim()
        shape[self.entry.get("scale_axis", 0)] = -1
        return t.view(shape)


def read_packed(directory: str | Path) -> dict[str, PackedLayer]:
    """The layers of the packed export in ``directory`` (``weights.bin`` + ``weights.json``, see
    the module's docstring), by name, in file order."""
    directory = Path(directory)
    header = json.loads((directory / HEADER_FILE).read_text())
    blob = (directory / WEIGHTS_FILE).read_bytes()
    out = {}
    for entry in header["layers"]:
        binary = entry["encoding"] == "binary"
        data = blob[entry["offset"]: entry["offset"] + entry["nbytes"]]
        codes = unpack(data, entry["bits"], entry["shape"], signed=entry.get("signed", True) and not binary)
        out[entry["name"]] = PackedLayer(2 * codes - 1 if binary else codes, entry)
    return out


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bit-width must be an integer in 1..8, got {bits!r}")


def _as_int64(values: Tensor) -> Tensor:
    values = torch.as_tensor(values).detach().cpu()
    if values.dtype == torch.bool:
        return values.to(torch.int64)
    if values.is_floating_point():
        if not bool(torch.isfinite(values).all()) or not torch.equal(values, values.round()):
            raise ValueError("pack() needs integer values; got non-integral floats")
        return values.to(torch.int64)
    if values.is_complex():
        raise ValueError("pack() needs integer values; got complex")
    return values.to(torch.int64)

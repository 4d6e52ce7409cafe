"""Dense bit packing of 1- to 8-bit integers (the payload of the packed export).

Layout: value ``i`` occupies stream bits ``[i * bits, (i + 1) * bits)``, least significant bit
first, and stream bit ``k`` is bit ``k % 8`` of byte ``k // 8`` (LSB-first, as
``numpy.packbits(bitorder="little")``). So 3-, 5-, 6- and 7-bit values straddle byte boundaries
and ``n`` values take exactly ``ceil(n * bits / 8)`` bytes; the unused high bits of the last byte
are zero. Signed values are stored in two's complement on ``bits`` bits.

Binary (1-bit) weights have codes -1/+1, which signed 1-bit two's complement cannot hold; pack
them as unsigned sign bits: ``pack((codes > 0).to(torch.uint8), 1, signed=False)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


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

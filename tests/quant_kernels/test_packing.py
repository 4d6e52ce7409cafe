"""Dense packing of 1- to 8-bit integers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from quant_kernels.packing import int_range, pack, packed_size, unpack

LENGTHS = [0, 1, 2, 3, 5, 7, 9, 13, 31, 1001]


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("signed", [False, True])
def test_round_trip_and_size(bits, signed):
    lo, hi = int_range(bits, signed)
    g = torch.Generator().manual_seed(bits)
    for n in LENGTHS:
        values = torch.randint(lo, hi + 1, (n,), generator=g)
        values[:2] = torch.tensor([lo, hi])[: min(n, 2)]  # the extremes
        data = pack(values, bits, signed)
        assert isinstance(data, bytes)
        assert len(data) == packed_size(n, bits) == math.ceil(n * bits / 8)
        assert torch.equal(unpack(data, bits, n, signed), values)
        as_tensor = torch.tensor(list(data), dtype=torch.uint8)
        assert torch.equal(unpack(as_tensor, bits, n, signed=signed), values)


def test_shapes_and_float_codes():
    codes = torch.tensor([[-3.0, 0.0, 3.0], [1.0, -1.0, 2.0]])  # e.g. from quant_kernels.to_int
    data = pack(codes, 3, signed=True)
    assert torch.equal(unpack(data, 3, (2, 3), signed=True), codes.long())


def test_layout_is_lsb_first_across_byte_boundaries():
    values = np.array([1, 2, 3, 4, 5, 6, 7, 0])
    stream = "".join(format(v, "03b")[::-1] for v in values)  # each value LSB first
    expected = bytes(int(stream[i: i + 8][::-1], 2) for i in range(0, len(stream), 8))
    assert pack(torch.from_numpy(values), 3, signed=False) == expected == bytes([209, 88, 31])
    assert pack(torch.tensor([-1]), 5, signed=True) == bytes([0b11111])  # two's complement, zero pad


def test_binary_sign_bits_convention():
    codes = torch.tensor([1, -1, -1, 1, 1])
    data = pack(codes > 0, 1, signed=False)
    assert torch.equal(2 * unpack(data, 1, 5, signed=False) - 1, codes)


@pytest.mark.parametrize(("values", "bits", "signed", "match"), [
    ([0, 8], 3, False, "outside the unsigned 3-bit range"),
    ([-1], 4, False, "outside the unsigned 4-bit range"),
    ([4], 3, True, r"outside the signed 3-bit range \[-4, 3\]"),
    ([1], 1, True, "outside the signed 1-bit range"),
    ([0.5], 4, False, "integer values"),
    ([float("nan")], 4, False, "integer values"),
])
def test_rejects_bad_values(values, bits, signed, match):
    with pytest.raises(ValueError, match=match):
        pack(torch.tensor(values), bits, signed)


@pytest.mark.parametrize("bits", [0, 9, 2.0])
def test_rejects_bad_bit_widths(bits):
    with pytest.raises(ValueError, match="bit-width"):
        pack(torch.tensor([0]), bits, False)


def test_rejects_wrong_byte_count():
    with pytest.raises(ValueError, match="cannot hold exactly"):
        unpack(b"\x00\x00\x00", 3, 3, signed=False)  # 3 x 3 bits take ceil(9 / 8) = 2 bytes
    with pytest.raises(ValueError, match="cannot hold exactly"):
        unpack(b"\x00", 3, 3, signed=False)


def test_vectorised_on_a_million_values():
    values = torch.randint(-64, 64, (1_000_000,))
    assert torch.equal(unpack(pack(values, 7, True), 7, values.numel(), True), values)

"""The bit-choice quantizer: levels per bit-width, float operands, choices checked."""

import pytest
import torch

from qspos.core.layers.quant import BitChoiceQuantizer

ALL_BITS = tuple(range(1, 9))


@pytest.mark.parametrize("bits", ALL_BITS)
def test_weight_levels(bits):
    """Signed narrow-range weights have 2^b - 1 levels, symmetric, max level = threshold.
    1-bit weights are binary (sign(w) * t: two levels, as the paper's 1-bit weights and
    Brevitas' binary quantizer), not the 2^1 - 1 = 1 level the narrow formula would give."""
    q = BitChoiceQuantizer(ALL_BITS, channels=2, signed=True, narrow=True)
    with torch.no_grad():
        q.threshold.copy_(torch.tensor([1.0, 0.5]).expand(len(ALL_BITS), 2))
    q.select(bits)
    x = torch.linspace(-3, 3, 4001).expand(2, -1)  # beyond the threshold on both sides
    y = q(x, 2)
    for ch, t in enumerate((1.0, 0.5)):
        levels = torch.unique(y[ch])
        assert len(levels) == (2 if bits == 1 else 2**bits - 1)
        assert levels.max().item() == pytest.approx(t) and levels.min().item() == pytest.approx(-t)
        if bits > 1:  # uniform grid with 0 included
            steps = levels.diff()
            assert torch.allclose(steps, steps[0].expand_as(steps))
            assert (levels == 0).any()


@pytest.mark.parametrize("bits", ALL_BITS)
def test_activation_levels(bits):
    """Unsigned per-tensor activations have 2^b levels from 0 to the threshold."""
    q = BitChoiceQuantizer(ALL_BITS, channels=1, signed=False, narrow=False)
    with torch.no_grad():
        q.threshold.fill_(2.0)
    q.select(bits)
    y = q(torch.linspace(-1, 5, 4001))
    levels = torch.unique(y)
    assert len(levels) == 2**bits
    assert levels.min().item() == 0.0 and levels.max().item() == pytest.approx(2.0)


def test_float_operand_passes_through():
    q = BitChoiceQuantizer((None,), channels=1, signed=False, narrow=False)
    x = torch.randn(5)
    assert torch.equal(q(x), x)
    with pytest.raises(ValueError, match="float"):
        BitChoiceQuantizer((None, 4), channels=1, signed=False, narrow=False)


def test_select_rejects_bits_outside_the_choices():
    q = BitChoiceQuantizer((2, 4), channels=1, signed=False, narrow=False)
    with pytest.raises(ValueError, match="3-bit"):
        q.select(3)

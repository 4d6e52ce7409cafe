"""The Brevitas quantizers of the static layers a searchable layer hands out (``to_static``):
Brevitas' own quantizers with the clipping threshold a learned parameter, initialised from the
supernet's threshold of the active bit-width."""

from __future__ import annotations

from brevitas.inject.enum import ScalingImplType
from brevitas.quant import (
    Int8ActPerTensorFloat,
    Int8WeightPerChannelFloat,
    Uint8ActPerTensorFloat,
)
from brevitas.quant.binary import SignedBinaryWeightPerTensorConst


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

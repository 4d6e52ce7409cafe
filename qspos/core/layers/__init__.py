"""Searchable layers, split as Brevitas splits quantizers from layers and Once-for-All splits
sliced operations from the layers built on them:

- ``quant``: the bit-choice fake quantizer (a learned threshold per bit-width choice);
- ``static_quant``: the Brevitas quantizers of the static layers that ``to_static`` hands out;
- ``sliced``: the channel rounding rule and the sliced BatchNorm;
- ``searchable``: the searchable Conv2d and Linear layers built from them.

The names below are the public face; the modules are where each thing lives.
"""

from qspos.core.layers.quant import FLOAT_BITS, BitChoiceQuantizer, Bits
from qspos.core.layers.searchable import SearchableConv2d, SearchableLayer, SearchableLinear
from qspos.core.layers.sliced import SlicedBatchNorm2d, channels
from qspos.core.layers.static_quant import BinaryWeightQuant, SignedActQuant, UnsignedActQuant, WeightQuant

__all__ = [
    "FLOAT_BITS",
    "BinaryWeightQuant",
    "BitChoiceQuantizer",
    "Bits",
    "SearchableConv2d",
    "SearchableLayer",
    "SearchableLinear",
    "SignedActQuant",
    "SlicedBatchNorm2d",
    "UnsignedActQuant",
    "WeightQuant",
    "channels",
]

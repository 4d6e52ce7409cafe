"""How a backbone declares its search space where the model is defined (NNI-style, at a glance).

A backbone is any ``nn.Module`` of searchable layers that implements :class:`Backbone`: it lists
its :class:`SearchBlock` s (one choice point each with ``tie: block``, one per layer with
``tie: layer``) and its fixed first/last layers. A :class:`WidthSlot` names the channels a width
multiplier scales: the layers producing them, their BatchNorms, and the layers consuming them,
so residual shapes never change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from qspos.core.layers import SearchableLayer, SlicedBatchNorm2d


@dataclass
class WidthSlot:
    base: int  # channels at multiplier 1.0
    producers: list[SearchableLayer]
    norms: list[SlicedBatchNorm2d]
    consumers: list[SearchableLayer]


@dataclass
class SearchBlock:
    name: str  # module path of the block, e.g. "layer1.0": the choice point's name
    layers: dict[str, SearchableLayer]  # relative name -> layer whose bits the block ties
    widths: list[WidthSlot] = field(default_factory=list)


@runtime_checkable
class Backbone(Protocol):
    """What a :class:`~qspos.core.supernet.Supernet` asks of the network it wraps."""

    def search_blocks(self) -> list[SearchBlock]:
        """The blocks whose bits (and widths) are searched, in forward order."""
        ...

    def fixed_layers(self) -> dict[str, SearchableLayer]:
        """The layers kept at fixed bits, by role: ``first`` and ``last``."""
        ...

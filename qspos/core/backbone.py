"""How a network declares its search space (NNI-style: where the model is, in plain data).

A :class:`SpaceDeclaration` lists the :class:`SearchBlock` s of a network of searchable layers
(one choice point each with ``tie: block``, one per layer with ``tie: layer``) and its fixed
layers by role. A :class:`WidthSlot` names the channels one width multiplier scales: the layers
producing them, their BatchNorms, and the layers consuming them, so coupled shapes always agree.
``qspos.models.convert`` derives a declaration from any model's graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qspos.core.layers import SearchableLayer, SlicedBatchNorm2d


@dataclass
class WidthSlot:
    base: int  # channels at multiplier 1.0
    producers: list[SearchableLayer]  # depthwise convs in the group are producers too
    norms: list[SlicedBatchNorm2d]
    consumers: list[SearchableLayer]
    owner: str = ""  # relative name (in its block) of the layer whose choice point gives the width


@dataclass
class SearchBlock:
    name: str  # module path of the block, e.g. "layer1.0": the choice point's name
    layers: dict[str, SearchableLayer]  # relative name -> layer whose bits the block ties
    widths: list[WidthSlot] = field(default_factory=list)


@dataclass
class SpaceDeclaration:
    """Everything a :class:`~qspos.core.supernet.Supernet` needs to know of its network."""

    blocks: list[SearchBlock]  # in forward order
    fixed: dict[str, list[SearchableLayer]]  # role ("first", "last") -> layers at fixed bits
    # each BatchNorm that directly reads a searchable layer, with that layer (for per-bit-width BN)
    norm_inputs: list[tuple[SlicedBatchNorm2d, SearchableLayer]] = field(default_factory=list)

"""The supernet: a max-width network of searchable layers plus the space it spans.

``set_arch(arch)`` activates one single path; ``extract(arch)`` hands out a standalone network
of plain Brevitas layers that computes exactly what the supernet computes on that path.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from qspos.core.arch import Arch
from qspos.core.backbone import SearchBlock, SpaceDeclaration, WidthSlot
from qspos.core.layers import Bits, SearchableLayer, SlicedBatchNorm2d, channels
from qspos.core.space import ChoicePoint, Space, make_pairs
from qspos.errors import QsposError


class FixedBitsSpec(Protocol):
    w_bits: Bits
    a_bits: Bits


class SpaceSpec(Protocol):
    """The settings a space is declared by (the config's ``space`` section has this shape)."""

    pairs: Sequence[Sequence[int]] | None
    weight_bits: Sequence[int] | None
    act_bits: Sequence[int] | None
    width_multipliers: Sequence[float]
    tie: str  # "block" or "layer"
    first: FixedBitsSpec
    last: FixedBitsSpec


@dataclass
class Binding:
    """What one choice point controls: the layers taking its bits and the slots taking its width."""

    layers: list[SearchableLayer]
    slots: list[WidthSlot]


class Supernet(nn.Module):
    """A network of searchable layers at max width (``qspos.models.convert`` makes one from any
    model) and the space its :class:`~qspos.core.backbone.SpaceDeclaration` spans."""

    def __init__(self, net: nn.Module, declaration: SpaceDeclaration, space_cfg: SpaceSpec):
        super().__init__()
        self.net = net
        self.declaration = declaration
        pairs = make_pairs(space_cfg.pairs, space_cfg.weight_bits, space_cfg.act_bits)
        widths = tuple(space_cfg.width_multipliers)
        w_choices = sorted({w for w, _ in pairs})
        a_choices = sorted({a for _, a in pairs})

        points: list[ChoicePoint] = []
        self.bindings: dict[str, Binding] = {}
        searched: set[int] = set()
        for block in declaration.blocks:
            for name, binding, has_width in _tie(block, space_cfg.tie):
                points.append(ChoicePoint(name, pairs, widths if has_width else None))
                self.bindings[name] = binding
            for layer in block.layers.values():
                layer.configure_bits(w_choices, a_choices)
                searched.add(id(layer))
        self.fixed: dict[str, list[SearchableLayer]] = declaration.fixed
        for role, layers in self.fixed.items():
            bits = getattr(space_cfg, role)
            for layer in layers:
                layer.configure_bits((bits.w_bits,), (bits.a_bits,))
                layer.set_active(bits.w_bits, bits.a_bits)
                searched.add(id(layer))
        for bn, layer in declaration.norm_inputs:  # per-bit-width BatchNorm (space.batchnorm: per_bits)
            if len(layer.weight_quant.bit_choices) > 1:
                bn.configure_bits(len(layer.weight_quant.bit_choices))
        stray = [n for n, m in self.layer_items() if id(m) not in searched]
        if stray:
            raise QsposError(f"searchable layers in no block and not fixed: {stray}")
        if not points:
            raise QsposError("the model has nothing to search: every layer is fixed")
        self.space = Space(points)
        self.set_arch(self.space.extremes()[1])

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def layer_items(self) -> Iterator[tuple[str, SearchableLayer]]:
        """(module path, layer) of every searchable Conv2d/Linear, in forward order."""
        for name, m in self.net.named_modules():
            if isinstance(m, SearchableLayer):
                yield name, m

    def set_arch(self, arch: Arch) -> None:
        """Activate the single path of ``arch`` (buffers only: nothing is rebuilt)."""
        self.space.validate(arch)
        for name, binding in self.bindings.items():
            choice = arch[name]
            for layer in binding.layers:
                layer.set_active(choice.w_bits, choice.a_bits)
            for slot in binding.slots:
                k = channels(slot.base, choice.width)
                for layer in slot.producers:
                    layer.set_channels(out_channels=k)
                for bn in slot.norms:
                    bn.set_channels(k)
                for layer in slot.consumers:
                    layer.set_channels(in_channels=k)
        for bn, layer in self.declaration.norm_inputs:
            if bn.weight_offsets is not None:
                bn.select_bits(layer.weight_quant.active_index)

    def active_slices(self) -> dict[nn.Parameter, tuple]:
        """Used part of every sliced parameter on the active path (for ``optim.MaskedSGD``)."""
        parts: dict[nn.Parameter, tuple] = {}
        for m in self.net.modules():
            if isinstance(m, (SearchableLayer, SlicedBatchNorm2d)):
                parts.update(m.active_slices())
        return parts

    def set_masked(self, masked: bool) -> None:
        """Max-width compute with channel masks (for ``torch.compile``: one graph for every path)
        or the default sliced compute; both give the same values up to float summation order."""
        for m in self.net.modules():
            if isinstance(m, (SearchableLayer, SlicedBatchNorm2d)):
                m.masked = masked

    def set_quant_backend(self, backend: str) -> None:
        for _, layer in self.layer_items():
            layer.weight_quant.backend = layer.input_quant.backend = backend

    @torch.no_grad()
    def extract(self, arch: Arch) -> nn.Module:
        """Standalone network for ``arch``: plain Brevitas layers and BatchNorms, weights copied."""
        self.set_arch(arch)
        net = copy.deepcopy(self.net)
        _replace_dynamic(net)
        return net


def _tie(block: SearchBlock, tie: str) -> Iterator[tuple[str, Binding, bool]]:
    """Choice points of a block: one for the whole block, or one per layer (each width on the
    choice point of the layer that owns it)."""
    if tie == "block" or len(block.layers) == 1:
        yield block.name, Binding(list(block.layers.values()), block.widths), bool(block.widths)
        return
    for lname, layer in block.layers.items():
        slots = [s for s in block.widths if s.owner == lname]
        yield f"{block.name}.{lname}", Binding([layer], slots), bool(slots)


def _replace_dynamic(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, (SearchableLayer, SlicedBatchNorm2d)):
            setattr(module, name, child.to_static())
        else:
            _replace_dynamic(child)

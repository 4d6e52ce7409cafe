"""Any CNN becomes a supernet: its graph is analysed and its layers swapped, its forward kept.

:func:`convert` deep-copies the model, finds its channel groups (``qspos.models.graph``) and
replaces, in place and under their own names, every Conv2d/Linear by a searchable layer and
every BatchNorm2d of a shrinkable group by a sliced one. The model's own ``forward`` runs
unchanged. The model's weights fill the first channels; the channels a width multiplier above
1.0 adds are drawn with the spread of their layer's weights (BatchNorm: scale 1, shift 0).

Choice points: with ``tie: block``, one per block, where a block is the outermost module that
groups two or more layers and is not itself a stage of several such blocks (a residual block,
an inverted residual, a Fire or Inception module); a layer in no block is its own choice point.
A shrinkable channel group takes the width of the choice point of its first producer.
The layers reading the network input (``first``) and those writing its output (``last``) are
fixed.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn

from qspos.core.backbone import SearchBlock, SpaceDeclaration, WidthSlot
from qspos.core.layers import SearchableConv2d, SearchableLayer, SearchableLinear, SlicedBatchNorm2d, channels
from qspos.errors import QsposError
from qspos.models.graph import GraphInfo, analyse

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass(frozen=True)
class LayerEntry:
    """What one layer got from the conversion, and why (``qspos space`` prints these)."""

    name: str
    kind: str  # conv, depthwise conv, grouped conv, linear
    role: str  # first, last or searched
    choice_point: str | None  # the choice point giving its bits (None when fixed)
    width_point: str | None  # the choice point giving its output width
    width_note: str  # why its output channels have no width choice ("" when they have one)
    in_channels: int
    out_channels: int
    input_signed: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Converted:
    """A converted model: the network of searchable layers, its declaration, and the report."""

    net: nn.Module
    declaration: SpaceDeclaration
    layers: list[LayerEntry]


def convert(model: nn.Module, input_shape: tuple[int, int, int], max_width: float = 1.0,
            tie: str = "block", norms_per_bits: bool = False) -> Converted:
    """The searchable form of ``model`` (left untouched) for inputs of ``input_shape`` (C, H, W),
    its shrinkable channel groups grown to ``max_width`` times their channels. ``norms_per_bits``:
    every BatchNorm that directly reads a searchable layer becomes a ``SlicedBatchNorm2d`` (sliced
    or not) and is declared with that layer, so that it can keep its affine per bit-width."""
    net = copy.deepcopy(model)
    info = analyse(net, input_shape)
    if not info.layers:
        raise QsposError(f"model: {type(model).__name__} has no Conv2d or Linear layer to search")
    fixed = set(info.first) | set(info.last)
    block_of = _blocks(net, [n for n in info.layers if n not in fixed])
    owners = _width_owners(info, fixed)

    new: dict[str, SearchableLayer] = {}
    for name, node in info.layers.items():
        cin, cout = _max(info, node.in_group, max_width, owners), _max(info, node.out_group, max_width, owners)
        new[name] = _searchable(name, node.module, cin, cout, not node.input_nonneg)
        _set(net, name, new[name])
    norms: dict[str, SlicedBatchNorm2d] = {}
    for gid in owners:
        g = info.groups[gid]
        for bn_name in g.norms:
            norms[bn_name] = _sliced_bn(net.get_submodule(bn_name), channels(g.channels, max_width))
            _set(net, bn_name, norms[bn_name])
    norm_inputs = []
    for bn_name, layer_name in info.norm_inputs.items() if norms_per_bits else ():
        if bn_name not in norms:  # a BatchNorm of a group that keeps its width
            ref = net.get_submodule(bn_name)
            norms[bn_name] = _sliced_bn(ref, ref.num_features)
            _set(net, bn_name, norms[bn_name])
        norm_inputs.append((norms[bn_name], new[layer_name]))

    blocks: dict[str, SearchBlock] = {}
    for name in info.layers:
        if name in fixed:
            continue
        block = block_of[name]
        blocks.setdefault(block, SearchBlock(block, {}))
        blocks[block].layers[_relative(name, block)] = new[name]
    for gid, owner in owners.items():
        g = info.groups[gid]
        block = block_of[owner]
        blocks[block].widths.append(WidthSlot(
            g.channels, [new[n] for n in g.producers], [norms[n] for n in g.norms],
            [new[n] for n in g.consumers], owner=_relative(owner, block)))
    declaration = SpaceDeclaration(
        list(blocks.values()),
        {role: [new[n] for n in names] for role, names in (("first", info.first), ("last", info.last)) if names},
        norm_inputs,
    )
    return Converted(net, declaration, _entries(info, fixed, block_of, owners, new, tie))


def _blocks(net: nn.Module, searched: list[str]) -> dict[str, str]:
    """Block (module path) of every searched layer: the outermost non-container module holding
    two or more of them that is not made of several such modules; else the layer itself."""
    count = {path: sum(1 for n in searched if n.startswith(path + ".")) for path, _ in net.named_modules() if path}
    grouping = {p for p, m in net.named_modules() if p and not isinstance(m, _CONTAINERS) and count[p] >= 2}
    blocks = {p for p in grouping if sum(1 for q in grouping if q.startswith(p + ".")) < 2}
    out = {}
    for name in searched:
        parts = name.split(".")
        ancestors = [".".join(parts[:i]) for i in range(1, len(parts))]
        out[name] = next((a for a in ancestors if a in blocks), name)
    return out


def _width_owners(info: GraphInfo, fixed: set[str]) -> dict[int, str]:
    """Shrinkable group -> the layer whose choice point gives its width (first producer that is
    not depthwise; groups made by fixed layers keep their width)."""
    owners = {}
    for gid, g in info.groups.items():
        makers = [n for n in g.producers if not info.layers[n].depthwise]
        if g.shrinkable and makers and not fixed & set(g.producers):
            owners[gid] = min(makers, key=lambda n: info.layers[n].order)
    return owners


def _max(info: GraphInfo, gid: int, max_width: float, owners: dict[int, str]) -> int:
    c = info.groups[gid].channels
    return channels(c, max_width) if gid in owners else c


def _relative(name: str, block: str) -> str:
    return "" if name == block else name[len(block) + 1:]


def _set(net: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, child, module)


@torch.no_grad()
def _searchable(name: str, ref: nn.Module, cin: int, cout: int, input_signed: bool) -> SearchableLayer:
    """The searchable layer of ``ref`` at (cin, cout) channels, ``ref``'s weights in the first ones."""
    if isinstance(ref, nn.Linear):
        layer: SearchableLayer = SearchableLinear(cin, cout, bias=ref.bias is not None, input_signed=input_signed)
    else:
        if ref.padding_mode != "zeros":
            raise QsposError(f"model: cannot convert {name}: padding_mode {ref.padding_mode!r} (only 'zeros')")
        depthwise = ref.groups > 1 and ref.groups == ref.in_channels == ref.out_channels
        groups = cout if depthwise else ref.groups
        try:
            layer = SearchableConv2d(cin, cout, ref.kernel_size, ref.stride, ref.padding, groups,
                                     ref.bias is not None, input_signed, ref.dilation)
        except ValueError as e:
            raise QsposError(f"model: cannot convert {name}: {e}") from None
    # channels beyond the model's: drawn like the layer's own weights (zero mean, same std)
    layer.weight.normal_(0.0, float(ref.weight.std()) if ref.weight.numel() > 1 else 1.0)
    layer.weight[: ref.weight.shape[0], : ref.weight.shape[1]].copy_(ref.weight)
    if ref.bias is not None:
        layer.bias[: ref.bias.shape[0]].copy_(ref.bias)
    layer.init_weight_thresholds()
    return layer


@torch.no_grad()
def _sliced_bn(ref: nn.BatchNorm2d, n: int) -> SlicedBatchNorm2d:
    bn = SlicedBatchNorm2d(n, ref.eps, ref.momentum)
    c = ref.num_features
    for name in ("weight", "bias", "running_mean", "running_var"):
        if getattr(ref, name) is not None:
            getattr(bn, name)[:c].copy_(getattr(ref, name))
    if ref.num_batches_tracked is not None:
        bn.num_batches_tracked.copy_(ref.num_batches_tracked)
    return bn


def _entries(info: GraphInfo, fixed: set[str], block_of: dict[str, str], owners: dict[int, str],
             new: dict[str, SearchableLayer], tie: str) -> list[LayerEntry]:
    out = []
    for name, node in info.layers.items():
        m = node.module
        role = "first" if name in info.first else "last" if name in info.last else "searched"
        point = None if role != "searched" else _point(name, block_of[name], info, fixed, tie)
        g = info.groups[node.out_group]
        owner = owners.get(node.out_group)
        width_point = None if owner is None else _point(owner, block_of[owner], info, fixed, tie)
        if owner is not None:
            note = ""
        elif fixed & set(g.producers) and not g.pinned:
            note = "made by a fixed layer"
        else:
            note = "; ".join(g.pinned) or "no layer produces these channels"
        if isinstance(m, nn.Linear):
            kind, cin, cout = "linear", m.in_features, m.out_features
        else:
            kind = "depthwise conv" if node.depthwise else "grouped conv" if m.groups > 1 else "conv"
            cin, cout = m.in_channels, m.out_channels
        out.append(LayerEntry(name, kind, role, point, width_point, note, cin, cout, new[name].input_signed))
    return out


def _point(name: str, block: str, info: GraphInfo, fixed: set[str], tie: str) -> str:
    """The choice point a searched layer's bits come from under ``tie``."""
    if tie == "block" or block == name:
        return block
    members = [n for n in info.layers if n not in fixed and n.startswith(block + ".")]
    return block if len(members) == 1 else name

"""Cost model (DESIGN.md): MACs, BitOps and weight bits per Conv2d/Linear on the active path.

Shapes are traced once with hooks on the max network; after that an arch's cost is arithmetic
on a flat per-layer plan, with no forward pass, so budgets can be checked very many times.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from qspos.core.arch import Arch
from qspos.core.layers import FLOAT_BITS, SearchableConv2d, SearchableLayer, channels
from qspos.core.supernet import Supernet


@dataclass(frozen=True)
class LayerPlan:
    """Everything the cost of one layer depends on, resolved against choice-point names."""

    name: str
    kind: str  # "conv" or "linear"
    spatial: int  # H_out * W_out (1 for Linear)
    kernel: int  # k_h * k_w (1 for Linear)
    depthwise: bool
    groups: int  # of a grouped conv whose channels are fixed (1 otherwise; depthwise follows its channels)
    in_base: int
    out_base: int
    in_point: str | None  # choice point whose width scales the input channels
    out_point: str | None
    bits_point: str | None  # choice point giving (w_bits, a_bits); None for a fixed layer
    fixed_bits: tuple[int | None, int | None]
    has_bias: bool


@dataclass(frozen=True)
class LayerCost:
    name: str
    kind: str
    in_channels: int
    out_channels: int
    macs: int
    params: int
    w_bits: int
    a_bits: int
    bitops: int
    searched: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Cost:
    macs: int
    bitops: int
    size_bits: int
    searched_bitops: int
    bias_params: int
    layers: tuple[LayerCost, ...]

    @property
    def size_bytes(self) -> float:
        return self.size_bits / 8

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "layers"}
        d["size_bytes"] = self.size_bytes
        d["layers"] = [layer.to_dict() for layer in self.layers]
        return d


@dataclass(frozen=True)
class _Part:
    """Cost of the layers that depend on the same choice points, for one combination of choices."""

    layers: tuple[LayerCost, ...]
    macs: int
    bitops: int
    size_bits: int
    searched_bitops: int
    bias_params: int


class CostModel:
    """Costs of archs of one supernet, from shapes traced once.

    Layers depending on the same choice points (a block's convs, with ``tie: block``) form a
    group whose cost is memoised per combination of their choices, so pricing an arch is one
    dictionary look-up per group (the search and budget sampling price very many archs).
    """

    def __init__(self, supernet: Supernet, input_shape: tuple[int, int, int]):
        self.space = supernet.space
        self.plan = trace_plan(supernet, input_shape)
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, p in enumerate(self.plan):
            points = tuple(dict.fromkeys(n for n in (p.in_point, p.out_point, p.bits_point) if n))
            groups.setdefault(points, []).append(i)
        self._groups = [(points, tuple(idx), {}) for points, idx in groups.items()]

    def _part(self, group: tuple[tuple[str, ...], tuple[int, ...], dict], arch: Arch) -> _Part:
        points, idx, memo = group
        key = tuple([arch[n] for n in points])
        part = memo.get(key)
        if part is None:
            part = memo[key] = _price([self.plan[i] for i in idx], arch)
        return part

    def cost(self, arch: Arch) -> Cost:
        """Full per-layer cost report of ``arch`` (need not be in the domain: e.g. uniform 3,3)."""
        layers: list[LayerCost] = [None] * len(self.plan)  # type: ignore[list-item]
        macs = bitops = size = searched = bias = 0
        for group in self._groups:
            part = self._part(group, arch)
            for i, lc in zip(group[1], part.layers):
                layers[i] = lc
            macs += part.macs
            bitops += part.bitops
            size += part.size_bits
            searched += part.searched_bitops
            bias += part.bias_params
        return Cost(macs, bitops, size, searched, bias, tuple(layers))

    def metrics(self, arch: Arch) -> dict[str, float]:
        """The totals only (macs, bitops, size_bits, searched_bitops): the hot path of budgets."""
        macs = bitops = size = searched = 0
        for group in self._groups:
            part = self._part(group, arch)
            macs += part.macs
            bitops += part.bitops
            size += part.size_bits
            searched += part.searched_bitops
        return {"macs": macs, "bitops": bitops, "size_bits": size, "searched_bitops": searched}

    def uniform(self, w_bits: int, a_bits: int) -> Cost:
        return self.cost(self.space.uniform(w_bits, a_bits))


def _price(plans: list[LayerPlan], arch: Arch) -> _Part:
    """Per-layer cost of ``plans`` under ``arch`` (DESIGN.md's definitions), with their totals."""
    layers = []
    for p in plans:
        cin = channels(p.in_base, arch[p.in_point].width) if p.in_point else p.in_base
        cout = channels(p.out_base, arch[p.out_point].width) if p.out_point else p.out_base
        w, a = (arch[p.bits_point].w_bits, arch[p.bits_point].a_bits) if p.bits_point else p.fixed_bits
        w, a = w or FLOAT_BITS, a or FLOAT_BITS
        params = cout * (1 if p.depthwise else cin // p.groups) * p.kernel
        macs = p.spatial * params
        layers.append(LayerCost(p.name, p.kind, cin, cout, macs, params, w, a, macs * w * a, p.bits_point is not None))
    return _Part(
        layers=tuple(layers),
        macs=sum(lc.macs for lc in layers),
        bitops=sum(lc.bitops for lc in layers),
        size_bits=sum(lc.params * lc.w_bits for lc in layers),
        searched_bitops=sum(lc.bitops for lc in layers if lc.searched),
        bias_params=sum(lc.out_channels for p, lc in zip(plans, layers) if p.has_bias),
    )


@torch.no_grad()
def trace_shapes(supernet: Supernet, input_shape: tuple[int, int, int]) -> dict[str, tuple[tuple, tuple]]:
    """(input shape, output shape) of every searchable layer, by name, from one forward of the
    max net with hooks (batch of one)."""
    shapes: dict[str, tuple[tuple, tuple]] = {}
    hooks = [
        m.register_forward_hook(
            lambda _m, inp, out, n=name: shapes.__setitem__(n, (tuple(inp[0].shape), tuple(out.shape)))
        )
        for name, m in supernet.layer_items()
    ]
    was_training = supernet.training
    supernet.eval()
    try:
        supernet(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
        supernet.train(was_training)
    return shapes


def trace_plan(supernet: Supernet, input_shape: tuple[int, int, int]) -> tuple[LayerPlan, ...]:
    """The cost plan: every layer's output size (traced once) resolved against choice points."""
    shapes = trace_shapes(supernet, input_shape)

    bits_point: dict[int, str] = {}
    in_point: dict[int, tuple[str, int]] = {}
    out_point: dict[int, tuple[str, int]] = {}
    for name, binding in supernet.bindings.items():
        for layer in binding.layers:
            bits_point[id(layer)] = name
        for slot in binding.slots:
            for layer in slot.producers:
                out_point[id(layer)] = (name, slot.base)
            for layer in slot.consumers:
                in_point[id(layer)] = (name, slot.base)

    plan = []
    for name, m in supernet.layer_items():
        conv = isinstance(m, SearchableConv2d)
        depthwise = conv and m.depthwise
        ip, ib = in_point.get(id(m), (None, m.in_max))
        op, ob = out_point.get(id(m), (None, m.out_max))
        if depthwise:  # a depthwise conv's input channels follow its output channels
            ip, ib = op, ob
        plan.append(
            LayerPlan(
                name=name,
                kind="conv" if conv else "linear",
                spatial=_spatial(shapes[name][1]),
                kernel=m.kernel_size[0] * m.kernel_size[1] if conv else 1,
                depthwise=depthwise,
                groups=m.groups if conv and not depthwise else 1,
                in_base=ib,
                out_base=ob,
                in_point=ip,
                out_point=op,
                bits_point=bits_point.get(id(m)),
                fixed_bits=_fixed_bits(m),
                has_bias=m.bias is not None,
            )
        )
    return tuple(plan)


def _spatial(out_shape: tuple) -> int:
    """H_out * W_out of a conv output (N, C, H, W); 1 for a Linear output (N, C)."""
    return math.prod(out_shape[2:])


def _fixed_bits(layer: SearchableLayer) -> tuple[int | None, int | None]:
    return layer.weight_quant.bit_choices[0], layer.input_quant.bit_choices[0]

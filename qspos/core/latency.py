"""Per-layer latency lookup table measured on the current machine (for ``latency_ms`` budgets).

The table has an entry per layer and (in channels, out channels, w_bits, a_bits) setting the
space can give it; an arch's latency is the sum of its layers' entries. Measured here with torch,
each Conv2d/Linear is timed as a float op of that shape: fake-quantized Brevitas layers time the
simulation, not a deployment, and CPU int8 kernels do not get faster below 8 bits, so every bit
pair of one shape gets the same entry. A table measured elsewhere (e.g. with bit-serial kernels)
may give different entries per bit pair in the same format. Measure on the deployment target:

    qspos latency CONFIG OUT.json [--reps 5] [--batch-size 1]

then point ``search.latency_table`` at OUT.json.
"""

from __future__ import annotations

import itertools
import platform
import time
from collections.abc import Mapping
from typing import Any

import torch

from qspos.core.cost import Cost, CostModel, LayerPlan, trace_shapes
from qspos.core.layers import FLOAT_BITS, SearchableConv2d, SearchableLayer, channels
from qspos.core.space import Space
from qspos.core.supernet import Supernet
from qspos.errors import QsposError


def _key(in_c: int, out_c: int, w_bits: int, a_bits: int) -> str:
    return f"{in_c},{out_c},{w_bits},{a_bits}"


class LatencyTable:
    """Milliseconds per layer setting: ``entries[layer name]["in,out,w,a"]``."""

    def __init__(self, entries: dict[str, dict[str, float]], meta: dict | None = None):
        self.entries = entries
        self.meta = meta or {}
        self.source = "the latency table"

    def arch_ms(self, cost: Cost) -> float:
        """Latency of the arch whose per-layer cost report is ``cost``."""
        total = 0.0
        for lc in cost.layers:
            key = _key(lc.in_channels, lc.out_channels, lc.w_bits, lc.a_bits)
            try:
                total += self.entries[lc.name][key]
            except KeyError:
                raise QsposError(
                    f"{self.source} has no entry for layer {lc.name} at in,out,w,a = {key}; "
                    "measure it again for this space"
                ) from None
        return total

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"meta": {...}, "layers": {layer: {"in,out,w,a": ms}}}``."""
        return {"meta": self.meta, "layers": self.entries}

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "the latency table") -> LatencyTable:
        try:
            table = cls({str(k): {str(s): float(v) for s, v in d.items()} for k, d in data["layers"].items()},
                        dict(data.get("meta", {})))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise QsposError(f"{source} is not a latency table written by 'qspos latency'") from None
        table.source = source
        return table


def layer_settings(p: LayerPlan, space: Space) -> list[tuple[int, int, int | None, int | None]]:
    """Every (in, out, w_bits, a_bits) the space can give one layer (None bits: float)."""
    def widths(point: str | None, base: int) -> list[int]:
        mults = space[point].widths if point else None
        return sorted({channels(base, m) for m in mults}) if mults else [base]

    pairs = list(space[p.bits_point].pairs) if p.bits_point else [p.fixed_bits]
    ins = widths(p.in_point, p.in_base)
    outs = widths(p.out_point, p.out_base)
    if p.depthwise:
        return [(c, c, w, a) for c in outs for w, a in pairs]
    return [(i, o, w, a) for i, o, (w, a) in itertools.product(ins, outs, pairs)]


@torch.no_grad()
def measure_latency_table(
    supernet: Supernet,
    input_shape: tuple[int, int, int],
    reps: int = 5,
    warmup: int = 2,
    batch_size: int = 1,
) -> LatencyTable:
    """Time every layer shape of the space on this machine (median of ``reps`` runs)."""
    plan = CostModel(supernet, input_shape).plan
    in_hw = {name: shape[0][2:] for name, shape in trace_shapes(supernet, input_shape).items()}
    entries: dict[str, dict[str, float]] = {}
    for p, (name, layer) in zip(plan, supernet.layer_items()):
        entries[name] = {}
        timed: dict[tuple[int, int], float] = {}
        for in_c, out_c, w, a in layer_settings(p, supernet.space):
            if (in_c, out_c) not in timed:
                op = _float_op(layer, in_c, out_c)
                x = torch.randn(batch_size, in_c, *in_hw[name]) if in_hw[name] else torch.randn(batch_size, in_c)
                timed[in_c, out_c] = _median_ms(op, x, reps, warmup)
            entries[name][_key(in_c, out_c, w or FLOAT_BITS, a or FLOAT_BITS)] = timed[in_c, out_c]
    meta = {
        "machine": f"{platform.node()} {platform.machine()} {platform.processor()}".strip(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "reps": reps,
        "input_shape": list(input_shape),
    }
    return LatencyTable(entries, meta)


def _float_op(layer: SearchableLayer, in_c: int, out_c: int) -> torch.nn.Module:
    if isinstance(layer, SearchableConv2d):
        groups = out_c if layer.depthwise else layer.groups
        return torch.nn.Conv2d(in_c, out_c, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                               groups=groups, bias=layer.bias is not None)
    return torch.nn.Linear(in_c, out_c, bias=layer.bias is not None)


def _median_ms(op: torch.nn.Module, x: torch.Tensor, reps: int, warmup: int) -> float:
    times = []
    for i in range(warmup + reps):
        t0 = time.perf_counter()
        op(x)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3

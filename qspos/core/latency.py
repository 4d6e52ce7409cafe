"""Per-layer latency lookup table measured on the current machine (for ``latency_ms`` budgets).

The table has an entry per layer and (in channels, out channels, w_bits, a_bits) setting the
space can give it; an arch's latency is the sum of its layers' entries. Measured here with torch,
each Conv2d/Linear is timed by a :class:`LayerTimer`: by default as a float op of that shape
(fake-quantized Brevitas layers time the simulation, not a deployment, and CPU int8 kernels do not
get faster below 8 bits, so every bit pair of one shape gets the same entry); with
``--engine onnxruntime`` as the one-layer QCDQ graph the export writes, in onnxruntime's optimised
session (:mod:`qspos.formats.layer_latency`: integer kernels where the file gets them). A table
measured elsewhere (e.g. with bit-serial kernels) may give different entries per bit pair in the
same format. Measure on the deployment target:

    qspos latency CONFIG OUT.json [--engine torch|onnxruntime] [--reps 5] [--batch-size 1]

then point ``search.latency_table`` at OUT.json.
"""

from __future__ import annotations

import itertools
import platform
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

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


class LayerTimer(Protocol):
    """Milliseconds of one layer setting: ``layer`` (for its kind, kernel, stride, groups, input
    sign) at ``in_c``/``out_c`` channels and ``w_bits``/``a_bits`` (None: float) on a batch
    ``x``. Its ``name`` and ``threads`` go into the table's meta (what the entries mean)."""

    name: str
    threads: int

    def __call__(self, layer: SearchableLayer, in_c: int, out_c: int, w_bits: int | None, a_bits: int | None,
                 x: torch.Tensor) -> float: ...


class FloatOpTimer:
    """Each layer as a float torch op of its shape: every bit pair of one shape gets the same entry
    (fake-quantized layers time the simulation, and CPU int8 kernels do not get faster below 8 bits)."""

    name = "torch-float"

    def __init__(self, reps: int = 5, warmup: int = 2):
        self.reps, self.warmup = reps, warmup
        self._timed: dict[tuple, float] = {}

    @property
    def threads(self) -> int:
        return torch.get_num_threads()

    @torch.no_grad()
    def __call__(self, layer: SearchableLayer, in_c: int, out_c: int, w_bits: int | None, a_bits: int | None,
                 x: torch.Tensor) -> float:
        key = (id(layer), in_c, out_c)
        if key not in self._timed:
            self._timed[key] = median_ms(float_op(layer, in_c, out_c), x, self.reps, self.warmup)
        return self._timed[key]


def measure_latency_table(
    supernet: Supernet,
    input_shape: tuple[int, int, int],
    reps: int = 5,
    warmup: int = 2,
    batch_size: int = 1,
    timer: LayerTimer | None = None,
) -> LatencyTable:
    """Time every layer setting of the space on this machine with ``timer`` (default: the float
    torch op of each shape, median of ``reps`` runs)."""
    timer = timer or FloatOpTimer(reps, warmup)
    plan = CostModel(supernet, input_shape).plan
    in_hw = {name: shape[0][2:] for name, shape in trace_shapes(supernet, input_shape).items()}
    entries: dict[str, dict[str, float]] = {}
    for p, (name, layer) in zip(plan, supernet.layer_items()):
        entries[name] = {}
        for in_c, out_c, w, a in layer_settings(p, supernet.space):
            x = torch.randn(batch_size, in_c, *in_hw[name]) if in_hw[name] else torch.randn(batch_size, in_c)
            entries[name][_key(in_c, out_c, w or FLOAT_BITS, a or FLOAT_BITS)] = timer(layer, in_c, out_c, w, a, x)
    meta = {
        "machine": f"{platform.node()} {platform.machine()} {platform.processor()}".strip(),
        "engine": timer.name,
        "torch": torch.__version__,
        "threads": timer.threads,
        "batch_size": batch_size,
        "reps": reps,
        "input_shape": list(input_shape),
    }
    return LatencyTable(entries, meta)


def float_op(layer: SearchableLayer, in_c: int, out_c: int) -> torch.nn.Module:
    """The float torch op of ``layer``'s kind at ``in_c``/``out_c`` channels."""
    if isinstance(layer, SearchableConv2d):
        groups = out_c if layer.depthwise else layer.groups
        return torch.nn.Conv2d(in_c, out_c, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                               groups=groups, bias=layer.bias is not None)
    return torch.nn.Linear(in_c, out_c, bias=layer.bias is not None)


def median_ms(op: Callable[[torch.Tensor], object], x: torch.Tensor, reps: int, warmup: int) -> float:
    """Median milliseconds of ``op(x)`` over ``reps`` runs after ``warmup``."""
    times = []
    for i in range(warmup + reps):
        t0 = time.perf_counter()
        op(x)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3

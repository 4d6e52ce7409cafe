"""Budgets: bounds on an arch's costs that a search (or budget-constrained sampling) must meet.

A budget config entry is a mapping of metric to bound, e.g.
``{name: w3a3, bitops: "uniform 3,3", size_bytes: {max: 20000, min: 5000}}``. A bound is a number,
or ``"uniform W,A"``: that metric's value for the net with every choice point at W-bit weights,
A-bit activations and base width. A bare bound is an upper bound; ``{max, min}`` gives either
or both. Several metrics in one entry must all hold.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qspos.arch import Arch
from qspos.cost import CostModel
from qspos.errors import QsposError
from qspos.latency import LatencyTable

METRICS = ("bitops", "searched_bitops", "size_bits", "size_bytes", "macs", "latency_ms")
_UNIFORM = re.compile(r"^\s*uniform\s+(\d+)\s*,\s*(\d+)\s*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_MAX_COMPONENT = 1_000_000  # archs enumerated per independent group of choice points

Bound = tuple[float | None, float | None]


@dataclass(frozen=True)
class Budget:
    """Bounds ``(lo, hi)`` (either may be None) per metric, all of which an arch must meet."""

    name: str
    limits: dict[str, Bound]
    spec: dict[str, Any] = field(default_factory=dict)  # the config entry as written
    uniform: tuple[int, int] | None = None  # the first "uniform W,A" reference in the entry

    def accepts(self, metrics: Mapping[str, float]) -> bool:
        for metric, (lo, hi) in self.limits.items():
            v = metrics[metric]
            if (hi is not None and v > hi) or (lo is not None and v < lo):
                return False
        return True


class ArchMetrics:
    """Every budget metric of an arch: the cost model's totals, bytes, and measured latency."""

    def __init__(self, cost_model: CostModel, latency: LatencyTable | None = None):
        self.cost_model = cost_model
        self.space = cost_model.space
        self.latency = latency
        self._extremes: dict[tuple[str, bool], tuple[float, Arch]] = {}

    def __call__(self, arch: Arch) -> dict[str, float]:
        m: dict[str, float] = dict(self.cost_model.metrics(arch))
        m["size_bytes"] = m["size_bits"] / 8
        if self.latency is not None:
            m["latency_ms"] = self.latency.arch_ms(self.cost_model.cost(arch))
        return m

    def extreme(self, metric: str, largest: bool = False) -> tuple[float, Arch]:
        """The exact smallest (or largest) value of ``metric`` over the space, and an arch at it.

        Exact by exhaustive search over independent groups: every metric is a sum of per-layer
        terms, and a layer's term depends only on the choice points giving its bits and its
        input/output widths. Choice points linked through some layer form a group; groups do not
        interact, so minimising each group on its own (the others held fixed) minimises the sum.
        With ``tie: block`` every group is one choice point; with ``tie: layer`` a block's convs
        form one. No monotonicity is assumed, so measured latencies are handled exactly too.
        """
        key = (metric, largest)
        if key not in self._extremes:
            best = dict(self.space.extremes()[0])
            for group in self._groups():
                domains = [self.space[name].domain for name in group]
                if math.prod(len(d) for d in domains) > _MAX_COMPONENT:
                    raise QsposError(f"choice points {group} are too entangled to bound {metric} exactly")
                values = []
                for combo in itertools.product(*domains):
                    trial = Arch({**best, **dict(zip(group, combo))})
                    values.append((self(trial)[metric], combo))
                _, combo = (max if largest else min)(values, key=lambda vc: vc[0])
                best.update(zip(group, combo))
            arch = Arch(best)
            self._extremes[key] = (self(arch)[metric], arch)
        return self._extremes[key]

    def _groups(self) -> list[list[str]]:
        """Choice points partitioned by the layers that link them (union-find)."""
        parent = {name: name for name in self.space.names}

        def root(n: str) -> str:
            while parent[n] != n:
                n = parent[n]
            return n

        for p in self.cost_model.plan:
            linked = [n for n in (p.bits_point, p.in_point, p.out_point) if n is not None]
            for other in linked[1:]:
                parent[root(other)] = root(linked[0])
        groups: dict[str, list[str]] = {}
        for name in self.space.names:
            groups.setdefault(root(name), []).append(name)
        return list(groups.values())


def check_budget_entries(entries: Sequence[Any], where: str = "search.budgets") -> None:
    """Syntax check of budget entries (no supernet needed): fails early, naming the key."""
    names = []
    for i, entry in enumerate(entries):
        key = f"{where}[{i}]"
        if not isinstance(entry, Mapping):
            raise QsposError(f'{key}: expected a mapping like {{bitops: "uniform 3,3"}}, got {entry!r}')
        names.append(_entry_name(entry, key))
        for metric, bound in _metric_items(entry, key):
            for side, value in _bound_items(bound, f"{key}.{metric}"):
                _bound_value(value, f"{key}.{metric}" + (f".{side}" if isinstance(bound, Mapping) else ""))
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise QsposError(f"{where}: budget names must be unique, {dup[0]!r} is used twice")


def parse_budgets(entries: Sequence[Any], metrics: ArchMetrics, where: str = "search.budgets") -> list[Budget]:
    """Budgets from config entries, with "uniform W,A" bounds resolved against ``metrics``.

    A budget no arch of the space can meet raises, naming the smallest (largest) value reachable.
    """
    check_budget_entries(entries, where)
    return [_parse(entry, metrics, f"{where}[{i}]") for i, entry in enumerate(entries)]


def _parse(entry: Mapping, metrics: ArchMetrics, key: str) -> Budget:
    limits: dict[str, Bound] = {}
    uniform: tuple[int, int] | None = None
    for metric, bound in _metric_items(entry, key):
        where = f"{key}.{metric}"
        if metric == "latency_ms" and metrics.latency is None:
            raise QsposError(
                f"{where}: a latency budget needs search.latency_table "
                "(measure one with 'python -m qspos.latency CONFIG OUT.json')"
            )
        sides: dict[str, float] = {}
        for side, raw in _bound_items(bound, where):
            value = _bound_value(raw, where)
            if isinstance(value, tuple):
                uniform = uniform or value
                value = metrics(metrics.space.uniform(*value))[metric]
            sides[side] = float(value)
        lo, hi = sides.get("min"), sides.get("max")
        if lo is not None and hi is not None and lo > hi:
            raise QsposError(f"{where}: min {lo:.6g} is above max {hi:.6g}")
        _check_feasible(metrics, metric, lo, hi, where)
        limits[metric] = (lo, hi)
    return Budget(_entry_name(entry, key), limits, dict(entry), uniform)


def _check_feasible(metrics: ArchMetrics, metric: str, lo: float | None, hi: float | None, where: str) -> None:
    if hi is not None:
        smallest, arch = metrics.extreme(metric)
        if smallest > hi:
            raise QsposError(
                f"{where}: no arch meets {metric} <= {hi:.6g}; the smallest achievable is "
                f"{smallest:.6g} ({_describe(arch)})"
            )
    if lo is not None:
        largest, arch = metrics.extreme(metric, largest=True)
        if largest < lo:
            raise QsposError(
                f"{where}: no arch meets {metric} >= {lo:.6g}; the largest achievable is "
                f"{largest:.6g} ({_describe(arch)})"
            )


def _describe(arch: Arch) -> str:
    choices = sorted({(c.w_bits, c.a_bits, c.width) for c in arch.values()})
    if len(choices) == 1:
        w, a, m = choices[0]
        return f"every choice point at W{w}A{a}" + (f" x{m:g}" if m is not None else "")
    return "arch " + arch.digest()


def _entry_name(entry: Mapping, key: str) -> str:
    if "name" in entry:
        name = entry["name"]
        if not isinstance(name, str) or not _NAME.match(name):
            raise QsposError(f"{key}.name: {name!r} must be letters, digits, '.', '_' or '-'")
        return name
    parts = []
    for metric, bound in _metric_items(entry, key):
        for side, raw in _bound_items(bound, f"{key}.{metric}"):
            value = _bound_value(raw, f"{key}.{metric}")
            text = f"w{value[0]}a{value[1]}" if isinstance(value, tuple) else f"{value:g}"
            parts.append(f"{metric}-{side}-{text}" if side == "min" else f"{metric}-{text}")
    return "_".join(parts).replace("+", "")


def _metric_items(entry: Mapping, key: str) -> list[tuple[str, Any]]:
    items = [(k, v) for k, v in entry.items() if k != "name"]
    for metric, _ in items:
        if isinstance(metric, int):  # YAML read {bitops: uniform 3,3} as {bitops: "uniform 3", 3: null}
            raise QsposError(f'{key}: quote uniform bounds inside {{...}}, e.g. {{bitops: "uniform 3,3"}}')
        if metric not in METRICS:
            raise QsposError(f"{key}.{metric}: unknown budget metric (known: {', '.join(METRICS)})")
    if not items:
        raise QsposError(f"{key}: a budget needs at least one of {', '.join(METRICS)}")
    return items


def _bound_items(bound: Any, where: str) -> list[tuple[str, Any]]:
    if not isinstance(bound, Mapping):
        return [("max", bound)]
    unknown = sorted(set(bound) - {"max", "min"})
    if unknown:
        raise QsposError(f"{where}.{unknown[0]}: unknown key (a bound has max and/or min)")
    if not bound:
        raise QsposError(f"{where}: give max and/or min")
    return [(side, bound[side]) for side in ("max", "min") if side in bound]


def _bound_value(raw: Any, where: str) -> float | tuple[int, int]:
    """A positive number, or (W, A) from "uniform W,A"."""
    if isinstance(raw, str):
        m = _UNIFORM.match(raw)
        if m:
            w, a = int(m.group(1)), int(m.group(2))
            if not (1 <= w <= 16 and 1 <= a <= 16):
                raise QsposError(f"{where}: bit-widths in {raw!r} must be 1-16")
            return w, a
        try:
            raw = float(raw)
        except ValueError:
            raise QsposError(f"{where}: expected a number or 'uniform W,A', got {raw!r}") from None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) or raw <= 0:
        raise QsposError(f"{where}: expected a positive number or 'uniform W,A', got {raw!r}")
    return float(raw)

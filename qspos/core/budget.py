"""Budgets: bounds on an arch's costs that a search (or budget-constrained sampling) must meet.

A budget config entry is a mapping of metric to bound, e.g.
``{name: w3a3, bitops: "uniform 3,3", size_bytes: {max: 20000, min: 5000}}``. A bound is a number,
or ``"uniform W,A"``: that metric's value for the net with every choice point at W-bit weights,
A-bit activations and base width. A bare bound is an upper bound; ``{max, min}`` gives either
or both. Several metrics in one entry must all hold.

A budget's *band* is its floor and bound: ``floor: 0.95`` in an entry (or the caller's default,
``search.floor``) sets ``min`` to that share of ``max`` for every metric without its own ``min``,
so a search spends its budget instead of wandering below it (the paper's code samples inside
FLOPs bins for the same reason). ``floor: null`` in an entry removes the default.

The syntax of entries is checked here without the cost side (the config does so on load);
:func:`parse_budgets` resolves them against an :class:`~qspos.core.metrics.ArchMetrics`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qspos.core.arch import Arch
from qspos.errors import QsposError

if TYPE_CHECKING:  # the cost side; the syntax checks here need no torch
    from qspos.core.metrics import ArchMetrics

METRICS = ("bitops", "searched_bitops", "size_bits", "size_bytes", "macs", "latency_ms")
_UNIFORM = re.compile(r"^\s*uniform\s+(\d+)\s*,\s*(\d+)\s*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

Bound = tuple[float | None, float | None]


@dataclass(frozen=True)
class Budget:
    """Bounds ``(lo, hi)`` (either may be None) per metric, all of which an arch must meet."""

    name: str
    limits: dict[str, Bound]
    spec: dict[str, Any] = field(default_factory=dict)  # the config entry as written
    uniform: tuple[int, int] | None = None  # the first "uniform W,A" reference in the entry
    floor: float | None = None  # the band's floor as a share of each upper bound (None: no floor)

    def accepts(self, metrics: Mapping[str, float]) -> bool:
        for metric, (lo, hi) in self.limits.items():
            v = metrics[metric]
            if (hi is not None and v > hi) or (lo is not None and v < lo):
                return False
        return True

    def under_bounds(self, metrics: Mapping[str, float]) -> bool:
        """Are ``metrics`` at or under every upper bound (the band's floor aside)? What a baseline
        needs to count as an alternative within this budget, e.g. a uniform net below it."""
        return all(hi is None or metrics[metric] <= hi for metric, (_, hi) in self.limits.items())


def check_budget_entries(entries: Sequence[Any], where: str = "search.budgets") -> list[str]:
    """Syntax check of budget entries (no supernet needed): fails early, naming the key. Returns
    the budgets' names."""
    names = []
    for i, entry in enumerate(entries):
        key = f"{where}[{i}]"
        if not isinstance(entry, Mapping):
            raise QsposError(f'{key}: expected a mapping like {{bitops: "uniform 3,3"}}, got {entry!r}')
        names.append(_entry_name(entry, key))
        _floor(entry, None, key)
        for metric, bound in _metric_items(entry, key):
            for side, value in _bound_items(bound, f"{key}.{metric}"):
                _bound_value(value, f"{key}.{metric}" + (f".{side}" if isinstance(bound, Mapping) else ""))
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise QsposError(f"{where}: budget names must be unique, {dup[0]!r} is used twice")
    return names


def parse_budgets(entries: Sequence[Any], metrics: ArchMetrics, where: str = "search.budgets",
                  floor: float | None = None) -> list[Budget]:
    """Budgets from config entries, with "uniform W,A" bounds resolved against ``metrics`` and
    ``floor`` the default band floor of entries that set none.

    A budget no arch of the space can meet raises, naming the cheapest and dearest archs.
    """
    check_budget_entries(entries, where)
    return [_parse(entry, metrics, f"{where}[{i}]", floor) for i, entry in enumerate(entries)]


def _floor(entry: Mapping, default: float | None, key: str) -> float | None:
    """The entry's band floor: its own ``floor`` (a share in (0, 1], or null for none), else ``default``."""
    if "floor" not in entry:
        return default
    value = entry["floor"]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise QsposError(f"{key}.floor: a share of the bound in (0, 1] (or null), got {value!r}")
    return float(value)


def _parse(entry: Mapping, metrics: ArchMetrics, key: str, default_floor: float | None) -> Budget:
    limits: dict[str, Bound] = {}
    floor = _floor(entry, default_floor, key)
    uniform: tuple[int, int] | None = None
    for metric, bound in _metric_items(entry, key):
        where = f"{key}.{metric}"
        if metric == "latency_ms" and metrics.latency is None:
            raise QsposError(
                f"{where}: a latency budget needs search.latency_table "
                "(measure one with 'python -m qspos.core.latency CONFIG OUT.json')"
            )
        sides: dict[str, float] = {}
        for side, raw in _bound_items(bound, where):
            value = _bound_value(raw, where)
            if isinstance(value, tuple):
                uniform = uniform or value
                value = metrics(metrics.space.uniform(*value))[metric]
            sides[side] = float(value)
        lo, hi = sides.get("min"), sides.get("max")
        if lo is None and hi is not None and floor is not None:
            lo = floor * hi
        if lo is not None and hi is not None and lo > hi:
            raise QsposError(f"{where}: min {lo:.6g} is above max {hi:.6g}")
        _check_feasible(metrics, metric, lo, hi, where)
        limits[metric] = (lo, hi)
    return Budget(_entry_name(entry, key), limits, dict(entry), uniform, floor)


def _check_feasible(metrics: ArchMetrics, metric: str, lo: float | None, hi: float | None, where: str) -> None:
    smallest, largest = metrics.extreme(metric)[0], metrics.extreme(metric, largest=True)[0]
    if hi is not None and smallest > hi:
        raise QsposError(f"{where}: no arch meets {metric} <= {hi:.6g}; {_span(metric, metrics)}")
    if lo is not None and largest < lo:
        raise QsposError(f"{where}: no arch meets {metric} >= {lo:.6g} (the band's floor or min); "
                         f"{_span(metric, metrics)}")


def _span(metric: str, metrics: ArchMetrics) -> str:
    """What the space reaches: its cheapest and dearest arch in ``metric``."""
    (smallest, cheapest), (largest, dearest) = metrics.extreme(metric), metrics.extreme(metric, largest=True)
    return (f"the cheapest arch has {smallest:.6g} ({_describe(cheapest)}), "
            f"the dearest {largest:.6g} ({_describe(dearest)})")


def _describe(arch: Arch) -> str:
    choices = sorted({(c.w_bits, c.a_bits, c.width) for c in arch.values()}, key=lambda c: (c[0], c[1], c[2] or 0))
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
    items = [(k, v) for k, v in entry.items() if k not in ("name", "floor")]
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

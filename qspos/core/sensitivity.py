"""The sensitivity allocation: the fast rival of the search, and a seed of its first generation.

Per choice point, the supernet's score drop when that point alone takes each cheaper choice and
every other point keeps the top one (as HAWQ and AIMET AMP measure a layer's sensitivity, here
with the supernet's own weights after BN recalibration). ``joint`` probes score every choice of
a point; ``factored`` probes lower one of its weight bits, activation bits or width at a time
and predict a choice's drop as the sum of its factors' drops (HAWQ's per-layer weight and
activation sensitivities, plus width): 3+2+2 probes a point instead of 35 on a 4x3x3 domain, for
a domain that is the product of its bits and widths. The allocation under a budget is then a
multiple-choice knapsack: one choice per point, the predicted drop (the sum of the points' drops)
as small as possible, inside the budget's band. Every budget metric is a sum over independent
groups of choice points (:meth:`~qspos.core.metrics.ArchMetrics.groups`), so a group's cost is
exact; the dynamic programme runs on a grid of ``bound / bins`` with each group's cost rounded to
it (a slack of one cell per group at either end of the band absorbs the rounding), and every
allocation it proposes is checked against the budget exactly.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from qspos.core.arch import Arch, Choice
from qspos.core.budget import Budget
from qspos.core.metrics import ArchMetrics
from qspos.core.space import Space
from qspos.errors import QsposError

Score = Callable[[Sequence[Arch]], list[float]]


Probes = Literal["joint", "factored"]
FACTORS = ("w_bits", "a_bits", "width")  # what a factored probe lowers, one at a time


@dataclass(frozen=True)
class Sensitivity:
    """The top arch and its score and, per choice point, the score lost by each measured choice
    alone (every choice with ``joint`` probes, one factor lowered with ``factored`` ones)."""

    top: Arch
    top_score: float
    drops: dict[str, dict[Choice, float]]
    probes: Probes = "joint"

    def to_dict(self) -> dict:
        return {"top": self.top.to_dict(), "top_score": self.top_score, "probes": self.probes,
                "drops": {p: [{**c.to_dict(), "drop": d} for c, d in ds.items()] for p, ds in self.drops.items()}}

    @classmethod
    def from_dict(cls, d: Mapping) -> Sensitivity:
        drops = {p: {Choice.from_dict({k: v for k, v in e.items() if k != "drop"}): e["drop"] for e in entries}
                 for p, entries in d["drops"].items()}
        # a table written before "top" was saved is joint and lists each point's top choice first
        top = Arch.from_dict(d["top"]) if "top" in d else Arch({p: next(iter(ds)) for p, ds in drops.items()})
        return cls(top, d["top_score"], drops, d.get("probes", "joint"))

    def drop(self, point: str, choice: Choice) -> float:
        """The score ``choice`` alone loses at ``point``: measured, or the sum of its factors'."""
        measured = self.drops[point]
        if choice in measured:
            return measured[choice]
        top = self.top[point]
        return sum(measured[dataclasses.replace(top, **{f: getattr(choice, f)})]
                   for f in FACTORS if getattr(choice, f) != getattr(top, f))

    def predicted_drop(self, arch: Arch) -> float:
        return sum(self.drop(p, c) for p, c in arch.items())


def probes(space: Space, kind: Probes = "joint") -> list[Arch]:
    """The archs to score: the top one, then each choice point alone at each of its other choices
    (``joint``), or at each other value of one factor (``factored``; refused, naming the point,
    where the domain is not the product of its bits and widths)."""
    top = space.extremes()[1]
    out = [top]
    for p in space.points:
        t = top[p.name]
        if kind == "joint":
            out += [Arch({**top, p.name: c}) for c in p.domain if c != t]
            continue
        lowered = {dataclasses.replace(t, **{f: getattr(c, f)}) for c in p.domain for f in FACTORS} - {t}
        missing = sorted(lowered - set(p.domain), key=str)
        if missing:
            raise QsposError(f"{p.name}: factored sensitivity probes need every choice with one factor of the "
                             f"top one changed, and {missing[0].to_dict()} is not in its domain; "
                             "use search.sensitivity_probes: joint")
        out += [Arch({**top, p.name: c}) for c in p.domain if c in lowered]
    return out


def measure(space: Space, score: Score, kind: Probes = "joint") -> Sensitivity:
    """Score every probe (one call: the caller may batch, cache and spread them over ranks)."""
    archs = probes(space, kind)
    scores = score(archs)
    top, top_score = archs[0], scores[0]
    drops: dict[str, dict[Choice, float]] = {p.name: {top[p.name]: 0.0} for p in space.points}
    for arch, s in zip(archs[1:], scores[1:]):
        (name,) = [n for n in space.names if arch[n] != top[n]]
        drops[name][arch[name]] = top_score - s
    return Sensitivity(top, top_score, drops, kind)


def _options(sens: Sensitivity, metrics: ArchMetrics, group: list[str], metric: str,
             cheapest: Arch, base: float) -> list[tuple[dict[str, Choice], float, float]]:
    """Every choice of a group: (choices, exact cost above the cheapest arch, predicted drop)."""
    space = metrics.space
    out = []
    for combo in itertools.product(*(space[n].domain for n in group)):
        choices = dict(zip(group, combo))
        cost = metrics(Arch({**cheapest, **choices}))[metric] - base
        out.append((choices, cost, sum(sens.drop(n, c) for n, c in choices.items())))
    return out


def allocate(sens: Sensitivity, metrics: ArchMetrics, budget: Budget, bins: int = 10_000,
             tries: int = 200) -> Arch | None:
    """The arch in ``budget`` with the smallest predicted drop (see the module doc), or None when
    none of the ``tries`` best grid solutions meets the budget exactly."""
    bounded = [(m, lo, hi) for m, (lo, hi) in budget.limits.items() if hi is not None]
    space = metrics.space
    if not bounded:  # no upper bound: the top arch, if the floors let it
        top = space.extremes()[1]
        return top if budget.accepts(metrics(top)) else None
    metric, lo, hi = bounded[0]
    cheapest = space.extremes()[0]
    base = metrics(cheapest)[metric]
    step = hi / bins
    groups = metrics.groups()
    top = bins + len(groups)  # the last cell a sum of rounded costs may reach inside the bound
    best = np.full(top + 1, math.inf)
    start = round(base / step)
    if start > top:
        return None
    best[start] = 0.0
    trail = []
    for group in groups:
        options = _options(sens, metrics, group, metric, cheapest, base)
        new, pick = np.full(top + 1, math.inf), np.full(top + 1, -1)
        for i, (_, cost, drop) in enumerate(options):
            k = max(0, round(cost / step))
            if k > top:
                continue
            shifted = np.full(top + 1, math.inf)
            shifted[k:] = best[: top + 1 - k] + drop
            better = shifted < new
            new[better], pick[better] = shifted[better], i
        trail.append((options, pick))
        best = new
    floor_bin = 0 if lo is None else math.floor(lo / step) - len(groups)
    ends = [b for b in np.argsort(best, kind="stable") if b >= floor_bin and math.isfinite(best[b])][:tries]
    for end in ends:
        arch = _backtrack(trail, int(end), step, cheapest)
        if budget.accepts(metrics(arch)):
            return arch
    return None


def _backtrack(trail: list, end: int, step: float, cheapest: Arch) -> Arch:
    choices = dict(cheapest)
    b = end
    for options, pick in reversed(trail):
        chosen, cost, _ = options[int(pick[b])]
        choices.update(chosen)
        b -= max(0, round(cost / step))
    return Arch(choices)


def allocations(sens: Sensitivity, metrics: ArchMetrics, budgets: Sequence[Budget]) -> dict[str, Arch]:
    """The allocation under every budget; one that finds none is refused in one line."""
    out = {}
    for b in budgets:
        arch = allocate(sens, metrics, b)
        if arch is None:
            raise QsposError(f"budget {b.name}: the sensitivity allocation found no arch inside it; loosen its band")
        out[b.name] = arch
    return out

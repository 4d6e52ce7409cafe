"""The benchmark's targets: thresholds that belong to a benchmark (its targets file, e.g.
``benchmarks/configs/accuracy_targets.yaml``), not to the library, and how the results meet them.
A file names the targets it wants; those it leaves out are not judged (the first edition compares
each budget with uniform precision at its own bits, the second with the best uniform net that fits
and with the sensitivity allocation)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from qspos.core.budget import Budget
from qspos.core.stats import mean
from qspos.errors import QsposError
from qspos.stages.bench.comparison import bitops_bound, budget_use, paired
from qspos.stages.bench.plan import Plan
from qspos.stages.bench.records import NetRecord


@dataclass(frozen=True)
class Targets:
    """What a benchmark wants (accuracies are fractions, differences in fractions too); None: not judged."""

    seeds: int  # paired seeds a difference of means needs before it is judged
    float_top1: float | None = None  # the float net's test top-1, at least
    w4a4_gap: float | None = None  # uniform W4A4 below float, at most
    searched_gain: float | None = None  # searched minus uniform at a budget's bits, at least
    searched_gain_2bit: float | None = None  # ... at the 2-bit budget
    kendall_tau: float | None = None  # supernet val against fine-tuned test top-1 of the ranking sample, at least
    wall_hours: float | None = None  # the whole benchmark, at most
    gain_over_best_uniform: float | None = None  # searched minus the best uniform net that fits, at least ...
    gain_up_to: str | None = None  # ... at every budget whose bound is at most this budget's
    loss_to_best_uniform: float | None = None  # searched below the best uniform that fits, at most, every budget
    sensitivity_gain: float | None = None  # searched minus the sensitivity allocation, at least ...
    sensitivity_gain_budgets: int = 2  # ... at this many budgets (and >= 0 at every budget)
    budget_use: float | None = None  # the searched nets' BitOps over their bound, mean, at least

    @classmethod
    def load(cls, path: str | Path, net: str | None = None) -> Targets:
        """The targets of a YAML mapping: ``seeds`` and any of the others, and optionally ``per_net``
        (net label: the targets that differ for that net, e.g. its float teacher's)."""
        path = Path(path)
        if not path.is_file():
            raise QsposError(f"targets file not found: {path}")
        d = yaml.safe_load(path.read_text())
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(d, dict) or "seeds" not in d:
            raise QsposError(f"{path}: give a mapping with seeds and any of {', '.join(names[1:])}")
        per_net = d.pop("per_net", None) or {}
        if not isinstance(per_net, dict) or not all(isinstance(v, dict) for v in per_net.values()):
            raise QsposError(f"{path}: per_net maps a net's label to its own targets")
        d.update(per_net.get(net, {}))
        unknown = sorted(set(d).union(*per_net.values()) - set(names))
        if unknown:
            raise QsposError(f"{path}: unknown target {unknown[0]!r} (known: {', '.join(names)})")
        if (d.get("gain_over_best_uniform") is None) != (d.get("gain_up_to") is None):
            raise QsposError(f"{path}: gain_over_best_uniform and gain_up_to go together")
        return cls(**d)


def _target(name: str, want: str, value: float | None, met: bool | None, by: float | None, note: str) -> dict:
    return {"target": name, "want": want, "value": value, "met": met, "by": by, "note": note}


def _at_least(name: str, want: str, d: float | None, n: int, need: float, seeds: int) -> dict:
    """A mean ``d`` of ``n`` paired differences that must reach ``need``, judged once ``seeds`` seeds are paired."""
    return _target(name, want, d, None if d is None or n < seeds else d >= need,
                   None if d is None else d - need, f"{n} paired seed(s)")


def _own_bits(nets: Sequence[NetRecord], budgets: Sequence[Budget], t: Targets) -> list[dict[str, Any]]:
    """First edition: searched against uniform at each budget's own bits."""
    out = []
    for b in budgets:
        if b.uniform is None or t.searched_gain is None:
            continue
        w, a = b.uniform
        diffs = paired(nets, lambda n, b=b: n.kind == "searched" and n.budget == b.name,
                       lambda n, pair=b.uniform: n.kind == "uniform" and n.bits == pair)
        need = t.searched_gain_2bit if (w, a) == (2, 2) and t.searched_gain_2bit is not None else t.searched_gain
        out.append(_at_least(f"searched - uniform W{w}A{a} at {b.name}",
                             f">= {100 * need:+.1f} points over >= {t.seeds} seeds", mean(diffs), len(diffs), need,
                             t.seeds))
    return out


def _extreme(rows: Sequence[dict[str, Any]], name: str, want: str, need: float, pick: int, seeds: int,
             count: int) -> dict:
    """One target over budgets: the smallest (``pick`` 0) or the k-th largest (``pick`` -k) of the
    per-budget mean differences in ``rows`` (``{"mean", "seeds"}``) against ``need``; judged once
    all ``count`` budgets have ``seeds`` paired seeds."""
    means = sorted(r["mean"] for r in rows if r["mean"] is not None)
    full = sum(1 for r in rows if r["mean"] is not None and r["seeds"] >= seeds)
    if len(means) < max(1, -pick):
        return _target(name, want, None, None, None, f"{len(means)} of {count} budget(s) measured")
    v = means[pick]
    return _target(name, want, v, v >= need if full >= count else None, v - need,
                   f"{full} of {count} budget(s) with {seeds} paired seeds")


def _best_uniform(comparisons: Sequence[dict[str, Any]], budgets: Sequence[Budget], t: Targets) -> list[dict]:
    """Second edition: searched against the best uniform net that fits, at the low budgets and at all."""
    out = []
    if t.gain_over_best_uniform is not None:
        top = {b.name: bitops_bound(b) for b in budgets}.get(t.gain_up_to)
        if top is None:
            raise QsposError(f"targets: gain_up_to names {t.gain_up_to!r}, not a budget with a BitOps bound")
        low = [c for c in comparisons if c["bitops_max"] is not None and c["bitops_max"] <= top]
        need = t.gain_over_best_uniform
        for c in low:
            d = c["searched_minus_uniform"]
            uni = "" if c["best_uniform"] is None else f" W{c['best_uniform'][0]}A{c['best_uniform'][1]}"
            out.append(_at_least(f"searched - best uniform{uni} at {c['budget']}",
                                 f">= {100 * need:+.1f} points over >= {t.seeds} seeds", d["mean"], d["seeds"], need,
                                 t.seeds))
        out.append(_extreme([c["searched_minus_uniform"] for c in low], f"searched - best uniform, every budget up to "
                            f"{t.gain_up_to}", f">= {100 * need:+.1f} points at each", need, 0, t.seeds, len(low)))
    if t.loss_to_best_uniform is not None:
        out.append(_extreme([c["searched_minus_uniform"] for c in comparisons if c["bitops_max"] is not None],
                            "searched - best uniform, worst budget", f">= {-100 * t.loss_to_best_uniform:+.1f} points",
                            -t.loss_to_best_uniform, 0, t.seeds, len(comparisons)))
    if t.sensitivity_gain is not None:
        rows = [c["searched_minus_sensitivity"] for c in comparisons]
        out.append(_extreme(rows, "searched - sensitivity allocation, worst budget", ">= +0.0 points", 0.0, 0,
                            t.seeds, len(rows)))
        k = t.sensitivity_gain_budgets
        out.append(_extreme(rows, f"searched - sensitivity allocation, {k} best budgets",
                            f">= {100 * t.sensitivity_gain:+.1f} points at {k} budgets", t.sensitivity_gain, -k,
                            t.seeds, len(rows)))
    return out


def _random(nets: Sequence[NetRecord], budgets: Sequence[Budget], plan: Plan, seeds: int) -> list[dict[str, Any]]:
    """Evolution against random search at every budget that has random-search nets."""
    out = []
    for b in budgets:
        if "random" not in plan.kinds(b.name):
            continue
        diffs = paired(nets, lambda n, b=b: n.kind == "searched" and n.budget == b.name,
                       lambda n, b=b: n.kind == "random" and n.budget == b.name)
        r = mean(diffs)
        out.append(_target(f"evolution - random search at {b.name}", "> 0 points", r,
                           None if r is None else r > 0, r, f"{len(diffs)} paired seed(s)"))
    return out


def _use(nets: Sequence[NetRecord], budgets: Sequence[Budget], need: float) -> dict[str, Any]:
    """The searched nets' mean budget use over every budget with a BitOps bound."""
    uses = [u for b in budgets if (bound := bitops_bound(b))
            for u in [budget_use(nets, "searched", b.name, bound)] if u is not None]
    m = mean([u["mean"] for u in uses])
    return _target("searched budget use", f">= {100 * need:.0f} %", m, None if m is None else m >= need,
                   None if m is None else m - need, f"{len(uses)} budget(s)")


def judge(nets: Sequence[NetRecord], rank: dict[str, Any], budgets: Sequence[Budget], comparisons: Sequence[dict],
          wall_seconds: float, complete: bool, plan: Plan, t: Targets) -> list[dict[str, Any]]:
    """Each target the file names: met (True), missed (False) or not measurable yet (None), and by
    how much (the value minus the threshold: positive is the margin, negative the miss)."""
    out = []
    if t.float_top1 is not None:
        fl = [n.test_top1 for n in nets if n.kind == "float"]
        fm = mean(fl)
        out.append(_target("float test top-1", f">= {100 * t.float_top1:.1f} %", fm,
                           None if fm is None else fm >= t.float_top1,
                           None if fm is None else fm - t.float_top1, f"{len(fl)} seed(s)"))
    if t.w4a4_gap is not None:
        gaps = paired(nets, lambda n: n.kind == "float", lambda n: n.kind == "uniform" and n.bits == (4, 4))
        gap = mean(gaps)
        out.append(_target("uniform W4A4 below float", f"<= {100 * t.w4a4_gap:.1f} points", gap,
                           None if gap is None else gap <= t.w4a4_gap,
                           None if gap is None else t.w4a4_gap - gap, f"{len(gaps)} paired seed(s)"))
    out += _own_bits(nets, budgets, t) + _best_uniform(comparisons, budgets, t) + _random(nets, budgets, plan, t.seeds)
    if t.budget_use is not None:
        out.append(_use(nets, budgets, t.budget_use))
    if t.kendall_tau is not None:
        tau = rank["kendall_tau"]
        out.append(_target("Kendall tau (supernet val vs fine-tuned test)", f">= {t.kendall_tau}", tau,
                           None if tau is None or rank["n"] < plan.rank_archs else tau >= t.kendall_tau,
                           None if tau is None else tau - t.kendall_tau, f"{rank['n']} archs"))
    if t.wall_hours is not None:
        hours = wall_seconds / 3600
        out.append(_target("whole benchmark wall time", f"<= {t.wall_hours:.0f} h", hours,
                           hours <= t.wall_hours if complete or hours > t.wall_hours else None,
                           t.wall_hours - hours, "complete" if complete else "so far; partial"))
    return out

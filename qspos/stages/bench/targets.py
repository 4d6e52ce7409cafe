"""The benchmark's targets: thresholds that belong to a benchmark (its targets file, e.g.
``benchmarks/configs/accuracy_targets.yaml``), not to the library, and how the results meet them."""

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
from qspos.stages.bench.comparison import paired
from qspos.stages.bench.records import NetRecord


@dataclass(frozen=True)
class Targets:
    """What a benchmark wants (accuracies are fractions, differences in fractions too)."""

    float_top1: float  # the float net's test top-1, at least
    w4a4_gap: float  # uniform W4A4 below float, at most
    searched_gain: float  # searched minus uniform at a budget's bits, at least
    searched_gain_2bit: float  # ... at the 2-bit budget
    kendall_tau: float  # supernet val against fine-tuned test top-1 of the ranking sample, at least
    wall_hours: float  # the whole benchmark, at most
    seeds: int  # paired seeds a searched-minus-uniform mean needs

    @classmethod
    def load(cls, path: str | Path) -> Targets:
        """The targets of a YAML file holding one mapping with every field."""
        path = Path(path)
        if not path.is_file():
            raise QsposError(f"targets file not found: {path}")
        d = yaml.safe_load(path.read_text())
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(d, dict) or set(d) != set(names):
            raise QsposError(f"{path}: give exactly the targets {', '.join(names)}")
        return cls(**d)


def _target(name: str, want: str, value: float | None, met: bool | None, by: float | None, note: str) -> dict:
    return {"target": name, "want": want, "value": value, "met": met, "by": by, "note": note}


def _budget_targets(nets: Sequence[NetRecord], budgets: Sequence[Budget], t: Targets) -> list[dict[str, Any]]:
    """Per budget with a uniform reference: searched against uniform, and evolution against random search."""
    out = []
    for b in budgets:
        if b.uniform is None:
            continue
        w, a = b.uniform
        diffs = paired(nets, lambda n, b=b: n.kind == "searched" and n.budget == b.name,
                       lambda n, pair=b.uniform: n.kind == "uniform" and n.bits == pair)
        need = t.searched_gain_2bit if (w, a) == (2, 2) else t.searched_gain
        d = mean(diffs)
        enough = len(diffs) >= t.seeds
        out.append(_target(f"searched - uniform W{w}A{a} at {b.name}", f">= +{100 * need:.1f} points over "
                           f">= {t.seeds} seeds", d, None if d is None or not enough else d >= need,
                           None if d is None else d - need, f"{len(diffs)} paired seed(s)"))
        rdiffs = paired(nets, lambda n, b=b: n.kind == "searched" and n.budget == b.name,
                        lambda n, b=b: n.kind == "random" and n.budget == b.name)
        r = mean(rdiffs)
        out.append(_target(f"evolution - random search at {b.name}", "> 0 points", r,
                           None if r is None else r > 0, r, f"{len(rdiffs)} paired seed(s)"))
    return out


def judge(nets: Sequence[NetRecord], rank: dict[str, Any], budgets: Sequence[Budget], wall_seconds: float,
          complete: bool, rank_archs: int, t: Targets) -> list[dict[str, Any]]:
    """Each target: met (True), missed (False) or not measurable yet (None), and by how much (the
    value minus the threshold: positive is the margin, negative the miss)."""
    fl = [n.test_top1 for n in nets if n.kind == "float"]
    fm = mean(fl)
    out = [_target("float test top-1", f">= {100 * t.float_top1:.1f} %", fm,
                   None if fm is None else fm >= t.float_top1,
                   None if fm is None else fm - t.float_top1, f"{len(fl)} seed(s)")]
    gaps = paired(nets, lambda n: n.kind == "float", lambda n: n.kind == "uniform" and n.bits == (4, 4))
    gap = mean(gaps)
    out.append(_target("uniform W4A4 below float", f"<= {100 * t.w4a4_gap:.1f} points", gap,
                       None if gap is None else gap <= t.w4a4_gap,
                       None if gap is None else t.w4a4_gap - gap, f"{len(gaps)} paired seed(s)"))
    out += _budget_targets(nets, budgets, t)
    tau = rank["kendall_tau"]
    out.append(_target("Kendall tau (supernet val vs fine-tuned test)", f">= {t.kendall_tau}", tau,
                       None if tau is None or rank["n"] < rank_archs else tau >= t.kendall_tau,
                       None if tau is None else tau - t.kendall_tau, f"{rank['n']} archs"))
    hours = wall_seconds / 3600
    out.append(_target("whole benchmark wall time", f"<= {t.wall_hours:.0f} h", hours,
                       hours <= t.wall_hours if complete or hours > t.wall_hours else None,
                       t.wall_hours - hours, "complete" if complete else "so far; partial"))
    return out

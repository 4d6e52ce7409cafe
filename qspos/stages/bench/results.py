"""What ``results.json`` holds, read from whatever is finished in a work directory, and the files
written from it (``results.json``, ``results.md``, the plots)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qspos.core.budget import Budget
from qspos.runtime.config import Config
from qspos.runtime.files import write_json, write_text
from qspos.runtime.progress import console
from qspos.stages.bench.analysis import diagnosis, expected, ranking, repeats, summarise
from qspos.stages.bench.comparison import bitops_bound, compare
from qspos.stages.bench.ledger import read_ledger
from qspos.stages.bench.markdown import markdown
from qspos.stages.bench.plan import Plan
from qspos.stages.bench.plots import accuracy_plot, ranking_plot
from qspos.stages.bench.records import finished_nets, search_counts
from qspos.stages.bench.staircase import against_staircase
from qspos.stages.bench.targets import Targets, judge


def collect(cfg: Config, work: str | Path, plan: Plan, budgets: Sequence[Budget],
            targets: Targets | None = None) -> dict[str, Any]:
    """``results.json``'s content from whatever is finished in ``work``, judged against ``targets``
    (none: no targets section), for ``plan`` with its uniform pairs resolved. Every net and budget
    carries the net's label (``plan.net``, else the config's name), so the results of several nets
    read as one table."""
    nets, label = finished_nets(work, plan.init), plan.net or cfg.name
    rank = {**ranking(nets), "band": plan.rank_band}
    sample = f"0/rank x{plan.rank_archs}"
    have = {f"{n.seed}/{n.name}" for n in nets} | ({sample} if rank["n"] >= plan.rank_archs else set())
    missing = [e for e in expected(plan, budgets) if e not in have]
    ledger = read_ledger(work)
    wall = sum(e["wall_seconds"] for e in ledger)
    comparisons, summary = compare(nets, budgets), summarise(nets)
    return {
        "partial": bool(missing), "missing": missing, "plan": dataclasses.asdict(plan),
        "budgets": [{"net": label, "name": b.name, "uniform": list(b.uniform) if b.uniform else None,
                     "bitops_max": bitops_bound(b)} for b in budgets],
        "nets": [{"net": label, **n.to_dict()} for n in nets], "summary": summary, "ranking": rank,
        "comparisons": comparisons, "staircase": against_staircase(summary), "searches": search_counts(work),
        "diagnosis": diagnosis(nets, budgets), "repeats": repeats(nets),
        "targets": [] if targets is None else judge(nets, rank, budgets, comparisons, wall, not missing, plan, targets),
        "wall_seconds": wall, "invocations": ledger,
    }


def write_results(cfg: Config, work: str | Path, out: str | Path, plan: Plan, budgets: Sequence[Budget],
                  provenance: dict[str, Any], plots: bool = True, targets: Targets | None = None) -> dict[str, Any]:
    """``out/results.json``, ``results.md`` and (with ``plots``) ``accuracy.png`` and
    ``ranking.png`` from what is finished in ``work``; ``provenance`` holds the command, commit
    and machine."""
    out = Path(out)
    res = collect(cfg, work, plan, budgets, targets)
    provenance = {**provenance, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    res = {**provenance, **res}
    write_json(out / "results.json", res)
    write_text(out / "results.md", markdown(res, provenance))
    if plots:
        accuracy_plot(out / "accuracy.png", res)
        ranking_plot(out / "ranking.png", res)
    partial = " (partial)" if res["partial"] else ""
    console.print(f"bench: {len(res['nets'])} nets finished, results in {out}{partial}")
    return res

"""Every searched, sensitivity and random net against the uniform staircase: the best test top-1
a uniform net reaches at or below each BitOps count. A mixed-precision net is worth its search by
how far it sits above that staircase (accuracy gained at equal BitOps) or to its left (BitOps saved
at equal accuracy). Means over seeds, as the summary rows hold them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MIXED = ("searched", "sensitivity", "random")


def staircase(summary: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The uniform nets no cheaper uniform net matches, by BitOps: each raises the best test top-1."""
    steps: list[dict[str, Any]] = []
    for row in sorted((r for r in summary if r["kind"] == "uniform"), key=lambda r: (r["bitops_mean"], r["bits"])):
        if not steps or row["test_top1_mean"] > steps[-1]["test_top1"]:
            steps.append({"bits": row["bits"], "bitops": row["bitops_mean"], "test_top1": row["test_top1_mean"]})
    return steps


def accuracy_at(steps: Sequence[dict[str, Any]], bitops: float) -> float | None:
    """The staircase's test top-1 at ``bitops``: the best uniform net at or below it (None: none is)."""
    below = [s["test_top1"] for s in steps if s["bitops"] <= bitops]
    return max(below) if below else None


def bitops_for(steps: Sequence[dict[str, Any]], top1: float) -> float | None:
    """The fewest BitOps of a uniform net reaching ``top1`` (None: none does)."""
    reach = [s["bitops"] for s in steps if s["test_top1"] >= top1]
    return min(reach) if reach else None


def against_staircase(summary: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The staircase, and per mixed-precision summary row: its accuracy minus the staircase's at its
    BitOps (None: no uniform net is that cheap) and the share of BitOps it saves against the
    cheapest uniform net as accurate (None: no uniform net is; negative: it costs more)."""
    steps = staircase(summary)
    nets = []
    for row in (r for r in summary if r["kind"] in MIXED):
        bitops, top1 = row["bitops_mean"], row["test_top1_mean"]
        level, cost = accuracy_at(steps, bitops), bitops_for(steps, top1)
        nets.append({"kind": row["kind"], "budget": row["budget"], "n": row["n"], "bitops": bitops, "test_top1": top1,
                     "accuracy_gained": None if level is None else top1 - level,
                     "bitops_saved": None if cost is None else 1 - bitops / cost})
    return {"steps": steps, "nets": nets}

"""Each budget against what a user could pick instead: the best uniform net that fits it and the
sensitivity allocation, paired by seed, and how much of the budget the nets spend. Mixed
precision is worth its search only where it beats these, so an intermediate budget is compared
with the best uniform net below it, not with an empty cell."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from qspos.core.budget import Budget
from qspos.core.stats import mean, mean_std
from qspos.stages.bench.records import NetRecord

Pick = Callable[[NetRecord], bool]


def bitops_bound(budget: Budget) -> float | None:
    """The budget's upper bound on model BitOps (None: it bounds something else)."""
    return budget.limits.get("bitops", (None, None))[1]


def paired(nets: Sequence[NetRecord], a: Pick, b: Pick) -> list[float]:
    """Per seed where both exist: a's test top-1 minus b's."""
    first = {n.seed: n.test_top1 for n in nets if a(n)}
    second = {n.seed: n.test_top1 for n in nets if b(n)}
    return [first[s] - second[s] for s in sorted(first.keys() & second.keys())]


def difference(nets: Sequence[NetRecord], a: Pick, b: Pick) -> dict[str, Any]:
    """Mean ± std (std needs two seeds) of the per-seed differences a − b, and their count."""
    diffs = paired(nets, a, b)
    m, std = mean_std(diffs) if diffs else (None, None)
    return {"mean": m, "std": std, "seeds": len(diffs)}


def best_fitting_uniform(nets: Sequence[NetRecord], bound: float) -> tuple[int, int] | None:
    """The uniform pair with the highest mean val top-1 over its seeds among those whose BitOps is
    at most ``bound`` (a tie goes to the cheaper one); None when no uniform net fits. Chosen on the
    val split and compared on the test split: the best of several nets picked on the images they
    are then compared on carries the largest of their noises, which would favour the uniform side
    (test top-1 decides only where a net has no val top-1)."""
    fits: dict[tuple[int, int], list[NetRecord]] = {}
    for n in nets:
        if n.kind == "uniform" and n.bits is not None and n.bitops <= bound:
            fits.setdefault(n.bits, []).append(n)
    if not fits:
        return None
    on_val = all(n.val_top1 is not None for group in fits.values() for n in group)

    def score(n: NetRecord) -> float:
        return n.val_top1 if on_val and n.val_top1 is not None else n.test_top1

    return max(fits, key=lambda p: (mean([score(n) for n in fits[p]]), -fits[p][0].bitops))


def budget_use(nets: Sequence[NetRecord], kind: str, budget: str, bound: float) -> dict[str, Any] | None:
    """BitOps over the bound of the ``kind`` nets of ``budget``: mean, range and count (None: none yet)."""
    use = [n.bitops / bound for n in nets if n.kind == kind and n.budget == budget]
    return {"mean": mean(use), "min": min(use), "max": max(use), "seeds": len(use)} if use else None


def compare(nets: Sequence[NetRecord], budgets: Sequence[Budget]) -> list[dict[str, Any]]:
    """Per budget: its best-fitting uniform pair, searched − that uniform net and searched −
    sensitivity allocation (paired by seed), and the budget use of the searched and sensitivity
    nets. A budget without a BitOps bound has no fitting uniform net and no budget use."""
    out = []
    for b in budgets:
        bound = bitops_bound(b)
        best = None if bound is None else best_fitting_uniform(nets, bound)

        def searched(n: NetRecord, name: str = b.name) -> bool:
            return n.kind == "searched" and n.budget == name

        out.append({
            "budget": b.name, "bitops_max": bound, "best_uniform": None if best is None else list(best),
            "searched_minus_uniform": difference(
                nets, searched, lambda n, best=best: best is not None and n.kind == "uniform" and n.bits == best),
            "searched_minus_sensitivity": difference(
                nets, searched, lambda n, name=b.name: n.kind == "sensitivity" and n.budget == name),
            "budget_use": {kind: None if bound is None else budget_use(nets, kind, b.name, bound)
                           for kind in ("searched", "sensitivity")},
        })
    return out

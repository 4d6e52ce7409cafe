"""What the finished nets say: mean ± std per kind of net, why the searched nets score as they
do, and how well the supernet ranks archs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from qspos.core.arch import Arch
from qspos.core.budget import Budget
from qspos.core.stats import kendall_tau, mean, mean_std, spearman_rho, top_k_overlap
from qspos.stages.bench.comparison import bitops_bound
from qspos.stages.bench.plan import Plan, net_name, uniform_tag
from qspos.stages.bench.records import NetRecord

TOP_K = (3, 5, 8)
KINDS = ("float", "uniform", "searched", "sensitivity", "random")  # the kinds of a summary row, in order


def summarise(nets: Sequence[NetRecord]) -> list[dict[str, Any]]:
    """Mean ± std over seeds of each kind of net (float, uniform per pair, the others per budget)."""
    groups: dict[tuple, list[NetRecord]] = {}
    for n in nets:
        if n.kind != "rank":
            groups.setdefault((n.kind, n.budget, n.bits), []).append(n)
    order = {k: i for i, k in enumerate(KINDS)}
    rows = []
    for (kind, budget, bits), group in sorted(groups.items(), key=lambda kv: (order[kv[0][0]], str(kv[0][1]),
                                                                                kv[0][2] or ())):
        m, std = mean_std([n.test_top1 for n in group])
        rows.append({"kind": kind, "budget": budget, "bits": None if bits is None else list(bits),
                     "seeds": sorted(n.seed for n in group), "n": len(group), "test_top1_mean": m, "test_top1_std": std,
                     "bitops_mean": sum(n.bitops for n in group) / len(group),
                     "size_bits_mean": sum(n.size_bits for n in group) / len(group),
                     "per_seed": [{"seed": n.seed, "test_top1": n.test_top1, "se": n.se} for n in group]})
    return rows


def diagnosis(nets: Sequence[NetRecord], budgets: Sequence[Budget]) -> list[dict[str, Any]]:
    """Per kind of net the supernet scored, the means that explain its test accuracy: the search's score
    minus the net's val top-1 before fine-tuning (the pick's luck, seen on the larger val split:
    the winner's curse), what fine-tuning adds to val top-1, and the share of its budget's BitOps
    the arch spends."""
    limit = {b.name: bitops_bound(b) for b in budgets}
    out = []
    for kind in ("uniform", "searched", "sensitivity", "random", "rank"):
        group = [n for n in nets if n.kind == kind and n.val_top1_before is not None
                 and n.search_val_top1 is not None]  # the nets the supernet scored (not W8A8)
        curse = [n.search_val_top1 - n.val_top1_before for n in group]
        gain = [n.val_top1 - n.val_top1_before for n in group if n.val_top1 is not None]
        use = [n.bitops / limit[n.budget] for n in group if limit.get(n.budget)]
        if group:
            out.append({"kind": kind, "n": len(group), "search_minus_val_before": mean(curse),
                        "finetune_val_gain": mean(gain), "budget_use": mean(use),
                        "budget_use_range": [min(use), max(use)] if use else None})
    return out


def repeats(nets: Sequence[NetRecord]) -> list[dict[str, Any]]:
    """Every arch fine-tuned more than once in one seed (the ranking sample may hold a searched or
    random pick): same supernet, seed and recipe, so their test top-1 differ only by what differed
    between the runs (thread counts change PyTorch's float sums), a measure of fine-tuning's own
    noise beside the binomial SE."""
    groups: dict[tuple, list[NetRecord]] = {}
    for n in nets:
        if n.arch is not None:
            groups.setdefault((n.seed, Arch.from_dict(n.arch).digest()), []).append(n)
    return [{"seed": seed, "digest": digest, "nets": [n.name for n in group],
             "test_top1": [n.test_top1 for n in group],
             "spread": max(n.test_top1 for n in group) - min(n.test_top1 for n in group)}
            for (seed, digest), group in sorted(groups.items()) if len(group) > 1]


def _finite(v: float) -> float | None:
    """None for a correlation that is not defined (every value tied)."""
    return None if math.isnan(v) else v


def ranking(nets: Sequence[NetRecord]) -> dict[str, Any]:
    """How the supernet's val top-1 (after BN recalibration) ranks the ranking sample's nets
    against their fine-tuned test top-1."""
    sample = [n for n in nets if n.kind == "rank" and n.search_val_top1 is not None]
    out: dict[str, Any] = {"n": len(sample), "kendall_tau": None, "spearman_rho": None, "top_k_overlap": {},
                           "archs": [{"name": n.name, "bitops": n.bitops, "supernet_val_top1": n.search_val_top1,
                                      "test_top1": n.test_top1, "se": n.se} for n in sample]}
    if len(sample) >= 2:
        x, y = [n.search_val_top1 for n in sample], [n.test_top1 for n in sample]
        out.update(kendall_tau=_finite(kendall_tau(x, y)), spearman_rho=_finite(spearman_rho(x, y)),
                   top_k_overlap={str(k): top_k_overlap(x, y, k) for k in TOP_K if k < len(sample)})
    out["overall"] = [_overall(seed, [n for n in nets if n.seed == seed]) for seed in sorted({n.seed for n in nets})]
    return out


def _overall(seed: int, nets: Sequence[NetRecord]) -> dict[str, Any]:
    """How the supernet ranks every net of one seed that it scored (uniform, searched, random,
    sensitivity and ranking nets, over the whole BitOps range): one supernet per seed."""
    scored = [n for n in nets if n.search_val_top1 is not None]
    x, y = [n.search_val_top1 for n in scored], [n.test_top1 for n in scored]
    ok = len(scored) >= 2
    return {"seed": seed, "n": len(scored), "kendall_tau": _finite(kendall_tau(x, y)) if ok else None,
            "spearman_rho": _finite(spearman_rho(x, y)) if ok else None}


def expected(plan: Plan, budgets: Sequence[Budget]) -> list[str]:
    """``seed/name`` of every net a complete benchmark has (the ranking sample counted as one), for
    ``plan`` with its uniform pairs resolved."""
    names = ["float"] if "float" in plan.parts else []
    names += [net_name("uniform", uniform_tag(p)) for p in plan.uniform or ()] if "uniform" in plan.parts else []
    names += [net_name(kind, b.name) for b in budgets for kind in plan.kinds(b.name)]
    rank = [f"0/rank x{plan.rank_archs}"] if "ranking" in plan.parts else []
    return [f"{s}/{n}" for s in range(plan.seeds) for n in names] + rank

"""The benchmark's results as Markdown (``results.md``): the accuracy table, each budget against
its alternatives, the targets, the ranking, the searches, the diagnosis and where the numbers come
from."""

from __future__ import annotations

from typing import Any

from qspos.runtime.numbers import MISSING, kib, millions, points, signed_points


def _accuracy(res: dict[str, Any]) -> list[str]:
    plan = res["plan"]
    lines = [f"Fine-tuning init: `{plan['init']}`; {plan['seeds']} seed(s) asked; test top-1 in %, "
             "mean ± std over seeds (std needs two seeds), and each seed's value ± its binomial standard error.",
             "", "| net | BitOps (M) | weights (KiB) | seeds | test top-1 | per seed |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for row in res["summary"]:
        label = "float (32-bit)" if row["kind"] == "float" else (
            f"uniform {_pair(row['bits'])}" if row["kind"] == "uniform" else f"{row['kind']} @ {row['budget']}")
        std = "" if row["test_top1_std"] is None else f" ± {points(row['test_top1_std'])}"
        per = ", ".join(f"s{p['seed']}: {points(p['test_top1'])} ± {points(p['se'])}" for p in row["per_seed"])
        lines.append(f"| {label} | {millions(row['bitops_mean'], 1)} | {kib(row['size_bits_mean'])} | "
                     f"{row['n']} | {points(row['test_top1_mean'])}{std} | {per} |")
    return lines


STATUS = {True: "met", False: "**missed**", None: "not yet measurable"}


def _pair(bits: list[int] | None) -> str:
    return MISSING if bits is None else f"W{bits[0]}A{bits[1]}"


def _difference(d: dict[str, Any]) -> str:
    """A paired difference in points: mean ± std (n seeds)."""
    if d["mean"] is None:
        return MISSING
    std = "" if d["std"] is None else f" ± {points(d['std'])}"
    return f"{signed_points(d['mean'])}{std} ({d['seeds']})"


def _use(u: dict[str, Any] | None) -> str:
    return MISSING if u is None else f"{points(u['mean'], 1)} % ({points(u['min'], 1)}–{points(u['max'], 1)})"


def _comparisons(res: dict[str, Any]) -> list[str]:
    if not res.get("comparisons"):
        return []
    lines = ["", "## Per budget: searched against the alternatives", "",
             "Test top-1 differences in points, paired by seed: mean ± std of the per-seed differences (seeds). "
             "The best uniform net that fits: of the uniform pairs within the budget's BitOps, the one with the "
             "highest mean val top-1 (chosen on the val split, compared on the test split). Budget use: BitOps "
             "over the bound, mean (range over seeds).", "",
             "| budget | bound (M BitOps) | best uniform that fits | searched − best uniform | "
             "searched − sensitivity | budget use, searched | budget use, sensitivity |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for c in res["comparisons"]:
        lines.append(f"| {c['budget']} | {millions(c['bitops_max'], 1)} | {_pair(c['best_uniform'])} | "
                     f"{_difference(c['searched_minus_uniform'])} | {_difference(c['searched_minus_sensitivity'])} | "
                     f"{_use(c['budget_use']['searched'])} | {_use(c['budget_use']['sensitivity'])} |")
    return lines


def _staircase(res: dict[str, Any]) -> list[str]:
    st = res.get("staircase")
    if not st or not st["nets"]:
        return []
    steps = ", ".join(f"{_pair(s['bits'])} {millions(s['bitops'], 1)} M: {points(s['test_top1'])} %"
                      for s in st["steps"]) or "no uniform net measured yet"
    lines = ["", "## Against the uniform staircase", "",
             f"The staircase: the best mean test top-1 of a uniform net at or below each BitOps count ({steps}). "
             "Accuracy gained at equal BitOps: a net's mean test top-1 minus the staircase's at its mean BitOps. "
             "BitOps saved at equal accuracy: one minus its BitOps over those of the cheapest uniform net as "
             "accurate (none: no uniform net is).", "",
             "| net | BitOps (M) | test top-1 | accuracy gained at equal BitOps | BitOps saved at equal accuracy |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for n in st["nets"]:
        saved = MISSING if n["bitops_saved"] is None else f"{points(n['bitops_saved'], 0)} %"
        lines.append(f"| {n['kind']} @ {n['budget']} | {millions(n['bitops'], 1)} | {points(n['test_top1'])} | "
                     f"{signed_points(n['accuracy_gained'])} | {saved} |")
    return lines


def target_number(t: dict[str, Any], v: float | None, signed: bool) -> str:
    """A target's value or margin: hours, a correlation, or accuracy points."""
    if v is None:
        return MISSING
    if "wall time" in t["target"]:
        return f"{v:+.2f} h" if signed else f"{v:.2f} h"
    if "tau" in t["target"]:
        return f"{v:+.3f}" if signed else f"{v:.3f}"
    return signed_points(v) if signed else points(v)


def _targets(res: dict[str, Any]) -> list[str]:
    if not res["targets"]:
        return []
    lines = ["", "## Targets", "", "| target | wanted | measured | status | margin |",
             "| --- | --- | ---: | --- | ---: |"]
    for t in res["targets"]:
        status = STATUS[t["met"]]
        lines.append(f"| {t['target']} | {t['want']} | {target_number(t, t['value'], False)} | {status} "
                     f"({t['note']}) | {target_number(t, t['by'], True)} |")
    return lines


def _ranking(res: dict[str, Any]) -> list[str]:
    r = res["ranking"]
    lines = ["", "## Ranking quality", ""]
    if r["kendall_tau"] is None:
        lines.append(f"{r['n']} ranking nets fine-tuned: not measurable yet.")
    else:
        overlap = ", ".join(f"top-{k}: {v:.2f}" for k, v in r["top_k_overlap"].items())
        where = (f"inside the {r['band']} band, spread over the supernet's score" if r.get("band")
                 else "spread over BitOps")
        lines.append(f"{r['n']} archs {where}: Kendall τ = {r['kendall_tau']:.3f}, Spearman ρ = "
                     f"{r['spearman_rho']:.3f}; top-k overlap {overlap or MISSING}.")
    overall = [o for o in r.get("overall", []) if o["kendall_tau"] is not None]
    if overall:
        lines += ["", "Every net a seed's supernet scored (the whole BitOps range): " + ", ".join(
            f"s{o['seed']}: τ = {o['kendall_tau']:.3f}, ρ = {o['spearman_rho']:.3f} ({o['n']} nets)" for o in overall)
            + "."]
    return lines


def _repeats(res: dict[str, Any]) -> list[str]:
    if not res.get("repeats"):
        return []
    lines = ["", "The same arch fine-tuned twice in one seed (same supernet, seed and recipe; the runs differ only "
             "in what changes float sums, such as thread counts), test top-1 (%):", ""]
    for r in res["repeats"]:
        values = " and ".join(f"{n} {points(v)}" for n, v in zip(r["nets"], r["test_top1"]))
        lines.append(f"- s{r['seed']} `{r['digest']}`: {values}: spread {points(r['spread'])} points")
    return lines


def _searches(res: dict[str, Any]) -> list[str]:
    if not res.get("searches"):
        return []
    lines = ["", "## Search evaluations", "", "Archs evaluated per seed (evolution / random search):", ""]
    for budget in dict.fromkeys(c["budget"] for c in res["searches"]):
        counts = [f"s{c['seed']}: {c['evaluations'] or '?'} / {c['random_evaluations'] or 0}"
                  for c in res["searches"] if c["budget"] == budget]
        lines.append(f"- {budget}: " + ", ".join(counts))
    return lines


def _diagnosis(res: dict[str, Any]) -> list[str]:
    if not res.get("diagnosis"):
        return []
    lines = ["", "## Diagnosis", "", "Means per kind of net (val top-1 on the val split, points; budget use: "
             "the arch's BitOps over its budget's limit):", "",
             "| nets | n | search score − val before fine-tuning | fine-tuning val gain | budget use |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for d in res["diagnosis"]:
        lo, hi = d["budget_use_range"] or (None, None)
        use = MISSING if d["budget_use"] is None else (f"{points(d['budget_use'], 0)} % "
                                                        f"({points(lo, 0)}–{points(hi, 0)} %)")
        lines.append(f"| {d['kind']} | {d['n']} | {signed_points(d['search_minus_val_before'])} | "
                     f"{signed_points(d['finetune_val_gain'])} | {use} |")
    return lines


def markdown(res: dict[str, Any], provenance: dict[str, Any]) -> str:
    """The results as Markdown: the accuracy table, the per-budget comparisons, the targets, the
    ranking, and provenance."""
    head = "# Accuracy against BitOps" + (" (PARTIAL: not every net is trained yet)" if res["partial"] else "")
    lines = [head, "", *_accuracy(res), *_comparisons(res), *_staircase(res), *_targets(res), *_ranking(res),
             *_repeats(res), *_searches(res), *_diagnosis(res)]
    if res["missing"]:
        lines += ["", f"Not trained yet ({len(res['missing'])}): " + ", ".join(f"`{m}`" for m in res["missing"])]
    lines += ["", "## Provenance", "", f"- command: `{provenance['command']}`", f"- commit: `{provenance['commit']}`",
              f"- machine: {provenance['machine']}", f"- written: {provenance['date']}",
              f"- wall time, all invocations: {res['wall_seconds'] / 3600:.2f} h over {len(res['invocations'])} "
              "invocation(s)", "", "![accuracy against BitOps](accuracy.png)", "",
              "![supernet ranking](ranking.png)", ""]
    return "\n".join(lines)

"""Several nets' benchmarks read as one (the second edition runs ResNet-14 and MobileNetV2): one
``results.json`` listing every net and budget of each, each net's short table, and the targets,
those that ask for a result "on at least one net" judged across nets."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qspos.errors import QsposError
from qspos.runtime.files import write_json, write_text
from qspos.runtime.numbers import MISSING, millions, points, signed_points
from qspos.stages.bench.ledger import elapsed_seconds
from qspos.stages.bench.markdown import STATUS, target_number

ANY_NET = "searched - best uniform, every budget up to"  # a target met when one net meets it


def read_parts(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The per-net ``results.json`` files that exist (a net not started yet has none)."""
    parts = []
    for path in map(Path, paths):
        if path.is_file():
            try:
                parts.append(json.loads(path.read_text()))
            except json.JSONDecodeError as e:
                raise QsposError(f"{path}: not a benchmark's results.json ({e.msg})") from None
    return parts


def _label(res: dict[str, Any]) -> str:
    return res["plan"]["net"]


def _any_net(parts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The targets of the ``ANY_NET`` kind, across nets: met when one net meets it, missed when every
    net misses it, otherwise not yet; the value is the best net's."""
    rows = [(_label(r), t) for r in parts for t in r["targets"] if t["target"].startswith(ANY_NET)]
    if not rows:
        return []
    best = max(rows, key=lambda nt: -1e9 if nt[1]["value"] is None else nt[1]["value"])
    mets = [t["met"] for _, t in rows]
    met = True if True in mets else False if all(m is False for m in mets) else None
    return [{"net": "at least one net", "target": rows[0][1]["target"], "want": rows[0][1]["want"],
             "value": best[1]["value"], "met": met, "by": best[1]["by"],
             "note": "best: " + best[0] + "; " + ", ".join(f"{n}: {t['note']}" for n, t in rows)}]


def _wall(hours: float, summed: float, limit: float, complete: bool) -> dict[str, Any]:
    """The whole benchmark's elapsed hours on its machine (pieces that ran at once on its cores
    counted once) against ``limit``; the note gives the pieces' summed hours too."""
    return {"net": "all nets", "target": "whole benchmark wall time", "want": f"<= {limit:.0f} h", "value": hours,
            "met": hours <= limit if complete or hours > limit else None, "by": limit - hours,
            "note": ("complete" if complete else "so far; partial") + f"; elapsed, {summed:.2f} h summed over pieces"}


def combine(parts: Sequence[dict[str, Any]], expected: Sequence[str],
            wall_hours: float | None = None) -> dict[str, Any]:
    """One results mapping from the per-net ones (``expected``: every net's label; one without
    results leaves the whole partial), with the whole benchmark's wall time judged against
    ``wall_hours`` (None: not judged)."""
    have = [_label(r) for r in parts]
    partial = any(r["partial"] for r in parts) or any(n not in have for n in expected)
    wall = sum(r["wall_seconds"] for r in parts)
    elapsed = elapsed_seconds(i for r in parts for i in r["invocations"])
    return {
        "partial": partial,
        "nets": [n for r in parts for n in r["nets"]], "budgets": [b for r in parts for b in r["budgets"]],
        "per_net": [{"net": _label(r), "partial": r["partial"], "missing": len(r["missing"]), "commit": r["commit"],
                     "summary": r["summary"], "comparisons": r["comparisons"], "staircase": r.get("staircase"),
                     "wall_seconds": r["wall_seconds"]} for r in parts],
        "not_started": [n for n in expected if n not in have],
        "targets": _any_net(parts) + [{"net": _label(r), **t} for r in parts for t in r["targets"]
                                      if not t["target"].startswith(ANY_NET)]
        + ([] if wall_hours is None else [_wall(elapsed / 3600, wall / 3600, wall_hours, not partial)]),
        "wall_seconds": wall, "elapsed_seconds": elapsed,
    }


def _row(summary: Sequence[dict[str, Any]], kind: str, budget: str | None = None,
         bits: list[int] | None = None) -> str:
    for r in summary:
        if r["kind"] == kind and r["budget"] == budget and r["bits"] == bits:
            std = "" if r["test_top1_std"] is None else f" ± {points(r['test_top1_std'])}"
            return f"{points(r['test_top1_mean'])}{std} ({r['n']})"
    return MISSING


def _net_table(p: dict[str, Any]) -> list[str]:
    gained = {(n["kind"], n["budget"]): n for n in (p["staircase"] or {}).get("nets", [])}
    lines = [f"### {p['net']}" + (f" (partial: {p['missing']} nets to go)" if p["partial"] else ""), "",
             f"Per-seed values, the ranking and the searches: [{p['net']}/results.md]({p['net']}/results.md).", "",
             "| budget | bound (M) | best uniform that fits | searched | sensitivity | random | searched − best "
             "uniform | searched: gained at equal BitOps | searched: BitOps saved |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in p["comparisons"]:
        b, best = c["budget"], c["best_uniform"]
        uni = MISSING if best is None else f"W{best[0]}A{best[1]}: {_row(p['summary'], 'uniform', None, best)}"
        d, g = c["searched_minus_uniform"], gained.get(("searched", b))
        diff = MISSING if d["mean"] is None else signed_points(d["mean"]) + (
            "" if d["std"] is None else f" ± {points(d['std'])}")
        saved = MISSING if g is None or g["bitops_saved"] is None else f"{points(g['bitops_saved'], 0)} %"
        lines.append(f"| {b} | {millions(c['bitops_max'], 1)} | {uni} | {_row(p['summary'], 'searched', b)} | "
                     f"{_row(p['summary'], 'sensitivity', b)} | {_row(p['summary'], 'random', b)} | {diff} | "
                     f"{signed_points(None if g is None else g['accuracy_gained'])} | {saved} |")
    return [*lines, "", f"![{p['net']}: accuracy against BitOps]({p['net']}/accuracy.png)", ""]


def _targets(res: dict[str, Any]) -> list[str]:
    lines = ["## Targets", "", "| net | target | wanted | measured | status | margin |",
             "| --- | --- | --- | ---: | --- | ---: |"]
    for t in res["targets"]:
        lines.append(f"| {t['net']} | {t['target']} | {t['want']} | {target_number(t, t['value'], False)} | "
                     f"{STATUS[t['met']]} ({t['note']}) | {target_number(t, t['by'], True)} |")
    return lines


def combined_markdown(res: dict[str, Any], provenance: dict[str, Any]) -> str:
    """The combined results as Markdown: per net its short table and plot, then every target."""
    head = "# Accuracy against BitOps, second edition" + (" (PARTIAL)" if res["partial"] else "")
    lines = [head, "", "Test top-1 in %, mean ± std over seeds (seeds); differences in points, paired by seed. "
             "The best uniform net that fits: of the uniform nets within the budget's BitOps, the one with the "
             "highest mean val top-1 (chosen on the val split, compared on the test split).", ""]
    for p in res["per_net"]:
        lines += _net_table(p)
    if res["not_started"]:
        lines += [f"Not started: {', '.join(res['not_started'])}.", ""]
    lines += [*_targets(res), "", "## Provenance", "", f"- command: `{provenance['command']}`",
              f"- commit: `{provenance['commit']}` (per net: " + ", ".join(f"{p['net']} `{p['commit']}`"
                                                                         for p in res["per_net"]) + ")",
              f"- machine: {provenance['machine']}", f"- written: {provenance['date']}",
              f"- wall time, all nets and invocations: {res['elapsed_seconds'] / 3600:.2f} h elapsed (pieces that ran "
              f"at once on the machine's cores counted once), {res['wall_seconds'] / 3600:.2f} h summed over "
              "pieces", ""]
    return "\n".join(lines)


def write_combined(out: str | Path, labels: Sequence[str], provenance: dict[str, Any],
                   wall_hours: float | None = None) -> dict[str, Any]:
    """``out/results.json`` and ``out/results.md`` from ``out/<label>/results.json`` of each net."""
    out = Path(out)
    res = combine(read_parts([out / label / "results.json" for label in labels]), labels, wall_hours)
    provenance = {**provenance, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    res = {**provenance, **res}
    write_json(out / "results.json", res)
    write_text(out / "results.md", combined_markdown(res, provenance))
    return res

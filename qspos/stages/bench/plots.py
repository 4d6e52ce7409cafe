"""The benchmark's plots: every net's test top-1 against BitOps (``accuracy.png``), and the
supernet's score against the fine-tuned test top-1 of the ranking sample (``ranking.png``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qspos.runtime.files import atomic_path
from qspos.runtime.numbers import points

_STYLE = {"uniform": ("s", "tab:gray"), "searched": ("*", "tab:red"), "sensitivity": ("D", "tab:purple"),
          "random": ("^", "tab:green")}


def accuracy_plot(path: str | Path, res: dict[str, Any]) -> None:
    """Every net as a point, mean ± std per kind, the uniform staircase and the searched and
    sensitivity fronts, budgets as vertical lines, float as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    nets = res["nets"]
    for kind, (marker, color) in _STYLE.items():
        pts = [n for n in nets if n["kind"] == kind]
        if pts:
            ax.scatter([n["bitops"] / 1e6 for n in pts], [100 * n["test_top1"] for n in pts], marker=marker,
                       c=color, alpha=0.35, s=25)
        rows = [r for r in res["summary"] if r["kind"] == kind]
        for i, row in enumerate(rows):
            x, y = row["bitops_mean"] / 1e6, 100 * row["test_top1_mean"]
            ax.errorbar([x], [y], yerr=[100 * (row["test_top1_std"] or 0)], fmt=marker, c=color, ms=8, capsize=4,
                        label=kind if i == 0 else None)
            label = f"W{row['bits'][0]}A{row['bits'][1]}" if kind == "uniform" else row["budget"]
            ax.annotate(label, (x, y), fontsize=7, color=color, textcoords="offset points", xytext=(5, 4))
    _fronts(ax, res)
    ranked = [n for n in nets if n["kind"] == "rank"]
    if ranked:
        ax.scatter([n["bitops"] / 1e6 for n in ranked], [100 * n["test_top1"] for n in ranked], marker=".",
                   c="tab:blue", alpha=0.5, label="ranking sample")
    for row in (r for r in res["summary"] if r["kind"] == "float"):
        ax.axhline(100 * row["test_top1_mean"], c="k", lw=1, label=f"float ({points(row['test_top1_mean'])} %)")
    for i, b in enumerate(x for x in res["budgets"] if x["bitops_max"]):
        ax.axvline(b["bitops_max"] / 1e6, ls="--", lw=0.8, c="0.5", label="budgets" if i == 0 else None)
        ax.annotate(b["name"], (b["bitops_max"] / 1e6, 0.02), xycoords=("data", "axes fraction"), rotation=90,
                    fontsize=7, color="0.4", xytext=(2, 0), textcoords="offset points")
    ax.set_xscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel("BitOps (M, log scale)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("fine-tuned nets" + (" (partial)" if res["partial"] else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path, res)


def _fronts(ax: Any, res: dict[str, Any]) -> None:
    """The uniform nets joined as a staircase (the best a uniform net reaches at or below each
    BitOps count) and the searched and sensitivity nets' means joined as their fronts."""
    steps = (res.get("staircase") or {}).get("steps") or []
    if steps:
        right = max([s["bitops"] for s in steps] + [n["bitops"] for n in res["nets"]]) * 1.05
        ax.step([s["bitops"] / 1e6 for s in steps] + [right / 1e6], [100 * s["test_top1"] for s in steps]
                + [100 * steps[-1]["test_top1"]], where="post", c="tab:gray", lw=1.2, label="uniform staircase")
    for kind in ("searched", "sensitivity"):
        rows = sorted((r for r in res["summary"] if r["kind"] == kind), key=lambda r: r["bitops_mean"])
        if len(rows) > 1:
            ax.plot([r["bitops_mean"] / 1e6 for r in rows], [100 * r["test_top1_mean"] for r in rows],
                    c=_STYLE[kind][1], lw=1, alpha=0.7)


def ranking_plot(path: str | Path, res: dict[str, Any]) -> None:
    """Supernet val top-1 against fine-tuned test top-1 of the ranking sample."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = res["ranking"]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    if r["archs"]:
        ax.errorbar([100 * a["supernet_val_top1"] for a in r["archs"]], [100 * a["test_top1"] for a in r["archs"]],
                    yerr=[100 * (a["se"] or 0.0) for a in r["archs"]], fmt="o", ms=4, capsize=2)
    title = (f"n = {r['n']}, Kendall τ = {r['kendall_tau']:.2f}, Spearman ρ = {r['spearman_rho']:.2f}"
             if r["kendall_tau"] is not None else f"n = {r['n']}: " + (
                 "not measured yet" if r["n"] < 2 else "undefined (every value tied)"))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("supernet val top-1 (%, BN recalibrated)")
    ax.set_ylabel("fine-tuned test top-1 (%)")
    ax.grid(alpha=0.3)
    _save(fig, path, res)


def _save(fig: Any, path: str | Path, res: dict[str, Any]) -> None:
    """Write the figure, stamped with where its numbers come from (commit, date)."""
    import matplotlib.pyplot as plt

    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.text(0.99, 0.005, f"commit {res['commit']}, {res['date']}, {res['wall_seconds'] / 3600:.2f} h of benchmark "
             f"wall time; see results.md", ha="right", va="bottom", fontsize=6, color="0.4")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)

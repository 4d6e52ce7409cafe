"""Pareto front of everything the search evaluated: validation top-1 (or the run's score) against BitOps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from qspos.results.search_results import ParetoPoint
from qspos.runtime.files import atomic_path
from qspos.runtime.progress import ScoreFormat


def pareto_front(points: Sequence[ParetoPoint]) -> list[ParetoPoint]:
    """The points no other point beats on both val top-1 and BitOps, by BitOps."""
    front: list[ParetoPoint] = []
    for p in sorted(points, key=lambda p: (p.bitops, -p.val_top1, p.digest)):
        if not front or p.val_top1 > front[-1].val_top1:
            front.append(p)
    return front


def pareto_markdown(front: Sequence[ParetoPoint], score: ScoreFormat) -> str:
    """The front as a Markdown table (BitOps in G, weight size in KiB, the score as ``score``
    reads: top-1 in %)."""
    lines = [
        f"| BitOps (G) | weights (KiB) | val {score.name}{score.unit} | arch |",
        "|---:|---:|---:|---|",
    ]
    for p in front:
        lines.append(f"| {p.bitops / 1e9:.4g} | {p.size_bits / 8 / 1024:.1f} | {score.number(p.val_top1)} "
                     f"| `{p.digest}` |")
    return "\n".join(lines) + "\n"


def pareto_plot(path: str | Path, points: Sequence[ParetoPoint], front: Sequence[ParetoPoint],
                marks: Sequence[tuple[str, float, float]] = (),
                finetuned: Sequence[tuple[str, float, float, float]] = (),
                limits: Sequence[tuple[str, float]] = (),
                baseline: tuple[str, float] | None = None, *, score: ScoreFormat) -> None:
    """Scatter of every evaluated arch (supernet val top-1), the front as a step line, labelled
    marks (``(label, bitops, val_top1)``: each budget's best and uniform baselines), fine-tuned
    nets (``(label, bitops, test_top1, standard error)``) with error bars, budgets as vertical
    lines (``(name, bitops bound)``) and a reference accuracy (``(label, top1)``: the float net)
    as a horizontal one; every "top-1" is the run's score, on the axis ``score`` gives it."""
    y = score.scaled
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    if points:
        ax.scatter([p.bitops / 1e9 for p in points], [y(p.val_top1) for p in points],
                   s=8, c="0.7", label=f"evaluated ({len(points)})")
    ax.step([p.bitops / 1e9 for p in front], [y(p.val_top1) for p in front],
            where="post", c="tab:red", marker="o", ms=3, label="Pareto front")
    for label, bitops, top1 in marks:
        ax.scatter([bitops / 1e9], [y(top1)], marker="*" if "uniform" not in label else "x", s=60, zorder=3)
        ax.annotate(label, (bitops / 1e9, y(top1)), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for i, (label, bitops, top1, se) in enumerate(finetuned):
        ax.errorbar([bitops / 1e9], [y(top1)], yerr=[y(se)], fmt="o", c="tab:blue", ms=5, capsize=3,
                    zorder=4, label="fine-tuned (test ± SE)" if i == 0 else None)
        ax.annotate(label, (bitops / 1e9, y(top1)), textcoords="offset points", xytext=(4, -10), fontsize=8,
                    color="tab:blue")
    for i, (name, bound) in enumerate(limits):
        ax.axvline(bound / 1e9, ls="--", lw=0.8, c="0.4", label="budgets (BitOps bound)" if i == 0 else None)
        ax.annotate(name, (bound / 1e9, 0.02), xycoords=("data", "axes fraction"), rotation=90, fontsize=7,
                    color="0.4", xytext=(2, 0), textcoords="offset points")
    if baseline is not None:
        ax.axhline(y(baseline[1]), ls=":", lw=1.2, c="tab:green", label=baseline[0])
    ax.set_xlabel("BitOps (G)")
    ax.set_ylabel(f"{score.name}{score.unit}: supernet val, fine-tuned test" if finetuned
                  else f"val {score.name}{score.unit}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)

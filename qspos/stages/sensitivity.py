"""``qspos sensitivity``: the per-choice-point sensitivity table of a trained supernet and the
allocation it gives under every budget (``qspos.core.sensitivity``).

Writes ``search/sensitivity.json`` (the score of the top arch, every drop, each budget's
allocation with its cost and predicted and measured score), ``search/sensitivity.md`` and
``search/sensitivity.png`` (each choice point's drop by choice). The search uses the same
measurement with ``search.method: sensitivity`` (the allocation is then each budget's pick) and
with ``search.sensitivity_seed`` (the allocation joins the evolution's first generation).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qspos.core.arch import Arch, Choice
from qspos.core.budget import Budget
from qspos.core.metrics import ArchMetrics
from qspos.core.sensitivity import Probes, Score, Sensitivity, allocations, measure
from qspos.core.sensitivity import probes as probe_archs
from qspos.core.space import Space, choice_order
from qspos.results.search_results import choice_text
from qspos.runtime.build import load_supernet
from qspos.runtime.config import Config
from qspos.runtime.data import load_splits
from qspos.runtime.distributed import pick_device
from qspos.runtime.evaluate import CandidateEvaluator, search_evaluator
from qspos.runtime.files import atomic_path, write_json, write_text
from qspos.runtime.progress import ScoreFormat, console, progress_bar, stdout, table
from qspos.runtime.rundir import RunDir, holds_run_dir
from qspos.stages.budgets import search_budgets


@dataclass
class SensitivityResult:
    sensitivity: Sensitivity
    allocations: dict[str, Arch]  # budget name -> allocated arch
    scores: dict[str, float]  # budget name -> the allocation's measured supernet score
    costs: dict[str, float]  # budget name -> the allocation's BitOps

    def to_dict(self) -> dict[str, Any]:
        return {**self.sensitivity.to_dict(),
                "allocations": {name: {"arch": arch.to_dict(), "digest": arch.digest(),
                                       "predicted_drop": self.sensitivity.predicted_drop(arch),
                                       "val_top1": self.scores[name], "bitops": self.costs[name]}
                                for name, arch in self.allocations.items()}}


def measure_and_allocate(space: Space, score: Score, metrics: ArchMetrics, budgets: Sequence[Budget],
                         probes: Probes = "joint") -> SensitivityResult:
    """The table (one batch of ``probes`` through ``score``), then each budget's allocation, scored."""
    sens = measure(space, score, probes)
    allocs = allocations(sens, metrics, budgets)
    names = list(allocs)
    measured = score([allocs[n] for n in names])
    return SensitivityResult(sens, allocs, dict(zip(names, measured)),
                             {n: metrics(a)["bitops"] for n, a in allocs.items()})


@contextlib.contextmanager
def probe_progress(evaluator: CandidateEvaluator, space: Space, probes: Probes, budgets: Sequence[Budget],
                   enabled: bool, interval_s: float) -> Iterator[None]:
    """A progress display while ``evaluator`` scores the table's probes and the allocations (the
    table is minutes of work with no other output)."""
    todo = sum(a.digest() not in evaluator.cache for a in probe_archs(space, probes)) + len(budgets)
    with progress_bar(enabled=enabled, interval_s=interval_s) as bar:
        task = bar.add_task("sensitivity", total=todo, info=f"{probes} probes")
        evaluator.on_evaluated = lambda: bar.update(task, advance=1)
        try:
            yield
        finally:
            evaluator.on_evaluated = None


def sensitivity_markdown(result: SensitivityResult, space: Space, score: ScoreFormat) -> str:
    """Per choice point, the score lost by each choice alone (every other point at the top)."""
    s = result.sensitivity
    columns = _columns(s, space)
    lines = [f"Top arch (every choice point at its top choice): val {score.name} {score.text(s.top_score)}.", "",
             f"Drop of val {score.name}{score.unit} when one choice point alone takes a choice"
             + (" (factored probes: one factor lowered at a time; a choice's drop is predicted as the sum of its "
                "factors')" if s.probes == "factored" else "") + ":", "",
             "| choice point | " + " | ".join(_text(c) for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for p in space.points:
        lines.append(f"| {p.name} | " + " | ".join(_cell(s, p.name, c, score) for c in columns) + " |")
    lines += ["", "| budget | allocation | BitOps (M) | predicted drop | measured val |", "|---|---|---:|---:|---:|"]
    for name, arch in result.allocations.items():
        lines.append(f"| {name} | `{arch.digest()}` | {result.costs[name] / 1e6:.1f} | "
                     f"{score.number(s.predicted_drop(arch))} | {score.text(result.scores[name])} |")
    return "\n".join(lines) + "\n"


def sensitivity_plot(path: Path, result: SensitivityResult, space: Space, score: ScoreFormat) -> None:
    """One line per choice point: its drop by choice, choices ordered as the domain lists them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = _columns(result.sensitivity, space)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(columns) + 2), 4))
    for p in space.points:
        drops = result.sensitivity.drops[p.name]
        xs = [i for i, c in enumerate(columns) if c in drops]
        ax.plot(xs, [score.scaled(drops[columns[i]]) for i in xs], marker="o", ms=3, label=p.name)
    ax.set_xticks(range(len(columns)), [_text(c) for c in columns], rotation=60, fontsize=7)
    ax.set_ylabel(f"val {score.name} drop{score.unit}")
    ax.set_title("sensitivity: one choice point lowered, the rest at the top")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def _columns(s: Sensitivity, space: Space) -> list[Choice]:
    """Every choice some point measured, cheapest first: the table's and the plot's columns (with
    factored probes, the choices one factor below the top)."""
    return sorted({c for p in space.points for c in p.domain if c in s.drops[p.name]}, key=choice_order)


def write_sensitivity(run: RunDir, result: SensitivityResult, space: Space, score: ScoreFormat) -> None:
    """The table, its data and its plot into the run's ``search/``."""
    write_json(run.sensitivity_json, result.to_dict())
    write_text(run.sensitivity_md, sensitivity_markdown(result, space, score))
    sensitivity_plot(run.sensitivity_png, result, space, score)


def _text(c: Choice) -> str:
    return choice_text(c.to_dict())


def _cell(s: Sensitivity, point: str, choice: Choice, score: ScoreFormat) -> str:
    drop = s.drops[point].get(choice)
    return "" if drop is None else score.number(drop)


@holds_run_dir
def sensitivity(cfg: Config, run_dir: str | Path | RunDir | None = None) -> SensitivityResult:
    """Measure the supernet of ``run_dir`` and allocate under every budget of ``cfg.search``."""
    run = RunDir.of(cfg, run_dir)
    device = pick_device(cfg.search.device)
    supernet = load_supernet(cfg, run.supernet, device=device)
    metrics, budgets = search_budgets(cfg, supernet)
    evaluator = search_evaluator(cfg, supernet, load_splits(cfg.data, cfg.model), device)
    probes = cfg.search.sensitivity_probes
    with probe_progress(evaluator, supernet.space, probes, budgets, True, cfg.log.interval_s):
        result = measure_and_allocate(supernet.space, evaluator, metrics, budgets, probes)
    fmt = ScoreFormat(cfg.score)
    run.record_config(cfg)
    write_sensitivity(run, result, supernet.space, fmt)
    columns = _columns(result.sensitivity, supernet.space)
    rows = [[p.name] + [_cell(result.sensitivity, p.name, c, fmt) for c in columns] for p in supernet.space.points]
    stdout.print(table(f"val {fmt.name} drop, one choice point lowered",
                        ["choice point"] + [_text(c) for c in columns], rows))
    console.print(f"sensitivity: {run.sensitivity_md}")
    return result

"""Screen the search levers (issue 25) on one trained supernet and one budget: the evolution as it
was (no band, no fill), the evolution with the budget band and the fill step (the new defaults),
the sensitivity allocation, and the evolution with about 500 evaluations (population 50, 10
generations: the paper's population, half its generations) instead of the config's. Each arm's
pick is fine-tuned with the config's recipe. ``--arms`` picks some of them (by their number).

Each arm searches a copy of ``--supernet`` (a finished ``supernet.pt``) in its own run directory
under ``--work``; finished pieces are skipped, so a killed screen continues.

    .venv/bin/python benchmarks/bench_search_screen.py configs/fashion_mnist.yaml \\
        --supernet runs/screen/teacher/supernet.pt --budget w2a2 --work runs/search_screen [--set ...]

Writes benchmarks/results/levers/NAME.{json,md} (``--name``, default ``search_screen``; command,
commit, machine, wall time; partial results are marked partial).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from _screen import RESULTS, provenance, provenance_lines, screen_parser, write_results

from qspos.core.stats import binomial_se
from qspos.results.search_results import SearchResult
from qspos.runtime.config import Config, load_config
from qspos.runtime.rundir import RunDir
from qspos.stages.finetune import Target, finetune
from qspos.stages.search import search

ARMS = {
    "evolution (no band, no fill)": ["search.floor=null", "search.fill=false"],
    "evolution + band 0.9 + fill": [],
    "sensitivity allocation": ["search.method=sensitivity"],
    "evolution + band 0.9 + fill, 500 evaluations": ["search.population=50", "search.iterations=10", "search.topk=10",
                                                      "search.mutation_count=25", "search.crossover_count=25"],
}


def _dir(arm: str) -> str:
    return arm.split(" ")[0] + ("-old" if "no band" in arm else "") + ("-500" if "500" in arm else "")


def run_arm(base: Config, arm: str, work: Path, supernet: Path, ledger: dict) -> None:
    run = RunDir(work / _dir(arm))
    cfg = load_config(base, ARMS[arm])
    t0 = time.perf_counter()
    if not run.search_finished():
        run.path.mkdir(parents=True, exist_ok=True)
        if not run.supernet.is_file():
            shutil.copyfile(supernet, run.supernet)
        search(cfg, run, resume=run.search_state.is_file())
        ledger[f"{arm}/search"] = round(time.perf_counter() - t0, 1)
    found = SearchResult.load(run.search_results)
    for b in found.budgets:
        if not run.net(b.name).result.is_file():
            t0 = time.perf_counter()
            finetune(cfg, run, resume=True, targets=[Target(b.name, b.best[0].arch, b.best[0].val_top1)])
            ledger[f"{arm}/{b.name}"] = round(time.perf_counter() - t0, 1)


def collect(work: Path, chosen: list[str]) -> dict:
    arms = {}
    for arm in chosen:
        run = RunDir(work / _dir(arm))
        if not run.search_results.is_file():
            arms[arm] = None
            continue
        found = SearchResult.load(run.search_results)
        budgets = {}
        for b in found.budgets:
            r = json.loads(run.net(b.name).result.read_text()) if run.net(b.name).result.is_file() else None
            budgets[b.name] = {
                "pick": b.best[0].digest, "search_val_top1": b.best[0].val_top1, "bitops": b.best[0].bitops,
                "budget_use": b.budget_use, "fill_steps": len(b.fill) if b.fill is not None else None,
                "evaluations": found.evaluations,
                **({"val_top1": r["val_top1"], "test_top1": r["test_top1"],
                    "test_se": binomial_se(r["test_top1"], r.get("test_images"))} if r else {}),
            }
        arms[arm] = budgets
    return arms


def markdown(result: dict) -> str:
    lines = [f"# Search levers on one supernet ({result['supernet']}), seed {result['seed']}"
             + (" (partial)" if result["partial"] else ""), "",
             "| arm | budget | BitOps (M) | budget use | fill steps | archs scored | supernet val | "
             "fine-tuned val | test top-1 ± SE |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for arm, budgets in result["arms"].items():
        for name, b in (budgets or {}).items():
            test = f"{100 * b['test_top1']:.2f} ± {100 * b['test_se']:.2f}" if "test_top1" in b else "–"
            val = f"{100 * b['val_top1']:.2f}" if "val_top1" in b else "–"
            lines.append(f"| {arm} | {name} | {b['bitops'] / 1e6:.1f} | {100 * b['budget_use']:.0f} % "
                         f"| {b['fill_steps'] if b['fill_steps'] is not None else '–'} | {b['evaluations']} "
                         f"| {100 * b['search_val_top1']:.2f} | {val} | {test} |")
    lines += provenance_lines(result)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = screen_parser(__doc__, "runs/search_screen", "search_screen")
    parser.add_argument("--supernet", required=True, type=Path, help="a finished supernet.pt of this config")
    parser.add_argument("--budget", default=None, help="search only this budget of the config")
    parser.add_argument("--arms", type=int, nargs="+", default=list(range(3)),
                        help="which arms, by number: " + "; ".join(f"{i}: {a}" for i, a in enumerate(ARMS)))
    args = parser.parse_args()
    chosen = [list(ARMS)[i] for i in args.arms]
    base = load_config(args.config, [f"seed={args.seed}", f"search.seed={args.seed}", "search.random_baseline=false",
                                     *args.overrides])
    if args.budget:
        kept = [b for b in base.search.budgets if b.get("name") == args.budget]
        base = load_config(base, [f"search.budgets={json.dumps(kept)}"])
    ledger: dict = {}
    info = provenance()
    if not args.report_only:
        for arm in chosen:
            run_arm(base, arm, args.work, args.supernet, ledger)
    arms = collect(args.work, chosen)
    partial = any(b is None or any("test_top1" not in x for x in b.values()) for b in arms.values())
    result = {**info, "seed": args.seed, "supernet": str(args.supernet), "ledger": ledger, "arms": arms,
              "partial": partial}
    write_results(RESULTS, args.name, result, markdown(result))


if __name__ == "__main__":
    main()

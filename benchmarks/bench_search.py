"""Search benchmarks on a trained supernet run directory.

ratio      seconds per candidate (activate path + BN recalibration on the calibration images +
           top-1 on the val images) against the bare eval-mode forward of the same images on the
           same path, interleaved per arch in one process (target: at most 1.25x).
evolution  evolution against random search at the same number of evaluations, per budget, with
           the uniform arch of each "uniform W,A" budget as the baseline. Runs (or resumes)
           ``qspos search`` on the run directory and reads ``search/results.json``.

    python benchmarks/bench_search.py --run-dir runs/fashion_mnist --part ratio
    python benchmarks/bench_search.py --run-dir runs/fashion_mnist --part evolution

Writes ``benchmarks/results/bench_search_<part>.json`` (with the command and machine) and
prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch

from qspos.runtime.build import load_supernet
from qspos.runtime.config import load_config
from qspos.runtime.data import load_splits
from qspos.runtime.evaluate import search_evaluator
from qspos.runtime.progress import console, table
from qspos.stages.search import search

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.is_file() else []
    return {"cpu": names[0] if names else platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "load_average": os.getloadavg(),  # shared machines
            "torch": torch.__version__, "python": platform.python_version()}


@torch.no_grad()
def bare_forward(model: torch.nn.Module, batches) -> None:
    model.eval()
    for x, _ in batches:
        model(x)


def ratio(cfg, run_dir: Path, candidates: int) -> dict:
    supernet = load_supernet(cfg, run_dir / "supernet.pt")
    splits = load_splits(cfg.data, cfg.model)
    evaluator = search_evaluator(cfg, supernet, splits, "cpu")
    calib, val = evaluator.calib, evaluator.val
    n_images = sum(len(x) for x, _ in calib) + sum(len(x) for x, _ in val)
    rng = random.Random(0)
    archs = [supernet.space.sample(rng) for _ in range(candidates + 1)]
    evaluator.evaluate(archs[0])  # warm-up
    rows, t_cand, t_bare = [], 0.0, 0.0
    for arch in archs[1:]:
        t0 = time.perf_counter()
        top1 = evaluator.evaluate(arch)
        t1 = time.perf_counter()
        supernet.set_arch(arch)
        bare_forward(supernet, calib)
        bare_forward(supernet, val)
        t2 = time.perf_counter()
        t_cand += t1 - t0
        t_bare += t2 - t1
        rows.append({"digest": arch.digest(), "candidate_s": t1 - t0, "bare_forward_s": t2 - t1,
                     "ratio": (t1 - t0) / (t2 - t1), "val_top1": top1})
    return {"calib_images": sum(len(x) for x, _ in calib), "val_images": sum(len(x) for x, _ in val),
            "images_per_candidate": n_images, "candidates": rows,
            "seconds_per_candidate": t_cand / candidates, "bare_forward_seconds": t_bare / candidates,
            "ratio": t_cand / t_bare, "target": 1.25}


def evolution(cfg, run_dir: Path) -> dict:
    result = search(cfg, run_dir, resume=True)  # continues or reuses an earlier search
    budgets = []
    for b in result.budgets:
        evo, rnd, uni = b.best[0], b.random_best, b.uniform
        budgets.append({"budget": b.name, "limits": b.limits,
                        "evolution_val_top1": evo.val_top1, "evolution_bitops": evo.bitops,
                        "random_val_top1": rnd.val_top1 if rnd else None,
                        "uniform_val_top1": uni.val_top1 if uni else None,
                        "uniform_bitops": uni.bitops if uni else None})
    return {"evaluations_total": result.evaluations, "population": cfg.search.population,
            "iterations": cfg.search.iterations, "budgets": budgets,
            "results_file": str(run_dir / "search" / "results.json")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", required=True, type=Path, help="run directory holding supernet.pt")
    p.add_argument("--config", help="config (default: RUN_DIR/config.yaml)")
    p.add_argument("--part", choices=["ratio", "evolution"], required=True)
    p.add_argument("--candidates", type=int, default=5, help="archs timed by the ratio part")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=Path, help="results file (default: benchmarks/results/bench_search_PART.json)")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. what the supernet is)")
    args = p.parse_args()

    cfg = load_config(args.config or args.run_dir / "config.yaml", args.overrides)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    data = ratio(cfg, args.run_dir, args.candidates) if args.part == "ratio" else evolution(cfg, args.run_dir)
    out = args.out or RESULTS / f"bench_search_{args.part}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": " ".join(["python", *sys.argv]), "machine": machine(), "date": started,
              "config": cfg.name, "run_dir": str(args.run_dir), "overrides": args.overrides, "note": args.note,
              **data}
    out.write_text(json.dumps(record, indent=1) + "\n")

    if args.part == "ratio":
        console.print(table("seconds per candidate vs bare forward", ["arch", "candidate s", "forward s", "ratio"],
                            [[r["digest"], r["candidate_s"], r["bare_forward_s"], r["ratio"]]
                             for r in data["candidates"]]))
        console.print(f"ratio {data['ratio']:.3f} (target <= 1.25) over {data['images_per_candidate']} images")
    else:
        pct = lambda v: None if v is None else round(100 * v, 2)  # noqa: E731
        console.print(table("evolution vs random search (val top-1 %)",
                            ["budget", "evolution", "random", "uniform"],
                            [[b["budget"], pct(b["evolution_val_top1"]), pct(b["random_val_top1"]),
                              pct(b["uniform_val_top1"])] for b in data["budgets"]]))
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Accuracy against BitOps, second edition (issue 26): ResNet-14 and MobileNetV2 on Fashion-MNIST,
at budgets below uniform 2,2, at 2,2, between 2,2 and 3,3 and at 3,3, each against the best
uniform net that fits, the sensitivity allocation and (at two budgets) random search.

    .venv/bin/python benchmarks/bench_accuracy2.py [--nets resnet14,mobilenet_v2] [--seeds 3] [--seed S ...]
        [--work runs/bench_accuracy2] [--out benchmarks/results/accuracy2] [--resume] [--report-only]
        [--set k=v ...]

Each net is ``qspos bench`` on its config (``benchmarks/configs/accuracy2_<net>.yaml``) with the
parts float, uniform, searched, random and sensitivity, random-search nets at w2a2 and mid only (the
search runs its random baseline only there),
and the targets of ``benchmarks/configs/accuracy2_targets.yaml``; ResNet-14's first seed adds 8
ranking nets inside the w2a2 band (``--rank-band w2a2 --rank-archs 8``). Its checkpoints go to
``WORK/<net>``, its results to ``OUT/<net>`` (results.json, results.md, accuracy.png) and its
state (every measured net's files, each seed's supernet and search checkpoints) to
``OUT/<net>/state`` after every finished piece. ``--resume`` continues from that state where
``WORK`` lacks it, so a fresh clone goes on from the committed results: a measured net is never
redone, and a seed's nets come from one supernet. ``OUT/results.json`` and
``results.md`` combine the nets and judge the targets across them. ``--nets`` and ``--seed`` run a
subset; the combined files always cover every net that has results.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from _screen import in_pieces

from qspos.runtime.config import load_config
from qspos.runtime.provenance import git_commit, machine
from qspos.stages.bench import Plan, Targets, run_bench
from qspos.stages.bench.combine import write_combined

HERE = Path(__file__).parent
NETS = {"resnet14": HERE / "configs" / "accuracy2_resnet14.yaml",
        "mobilenet_v2": HERE / "configs" / "accuracy2_mobilenet_v2.yaml"}
TARGETS = HERE / "configs" / "accuracy2_targets.yaml"
PARTS = ("float", "uniform", "searched", "random", "sensitivity")
RANDOM_BUDGETS = ("w2a2", "mid")
# ResNet-14 also gets issue 24's ranking sample: 8 archs inside the w2a2 band (first seed only)
RANKING = {"resnet14": {"parts": (*PARTS, "ranking"), "rank_archs": 8, "rank_band": "w2a2"}}
WALL_HOURS = 14.0


def _names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in NETS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown net {unknown[0]!r} (known: {', '.join(NETS)})")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", type=_names, default=list(NETS), help="which nets to run (default: all)")
    parser.add_argument("--seeds", type=int, default=3, help="the benchmark's seeds 0..N-1 (default 3)")
    parser.add_argument("--seed", type=int, action="append", default=None, dest="train_seeds",
                        help="train only this seed (repeatable; default all)")
    parser.add_argument("--work", default="runs/bench_accuracy2", help="checkpoints (default runs/bench_accuracy2)")
    parser.add_argument("--out", default=str(HERE / "results" / "accuracy2"), help="results and state")
    parser.add_argument("--resume", action="store_true", help="continue the benchmark (from the state where "
                        "--work lacks it)")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the results")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    command = " ".join([os.path.relpath(sys.executable), *sys.argv])
    out, work = Path(args.out), Path(args.work)
    with in_pieces("bench_accuracy2"):
        try:
            for net in args.nets:
                cfg = load_config(NETS[net], args.overrides)
                plan = Plan(**{"seeds": args.seeds, "parts": PARTS, "net": net, "random_budgets": RANDOM_BUDGETS,
                               **RANKING.get(net, {})})
                run_bench(cfg, work / net, out / net, plan, resume=args.resume, report_only=args.report_only,
                          command=command, targets=Targets.load(TARGETS, net), state=out / net / "state",
                          seeds=args.train_seeds)
        finally:  # whatever has results, a stopped piece's included
            write_combined(out, list(NETS), {"command": command, "commit": git_commit(), "machine": machine()},
                           WALL_HOURS)


if __name__ == "__main__":
    main()

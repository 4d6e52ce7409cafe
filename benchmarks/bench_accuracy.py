"""Accuracy against BitOps with fine-tuned baselines over seeds, and the supernet's ranking quality
(what ``qspos bench`` does), with the results published under benchmarks/results/accuracy/.

    .venv/bin/python benchmarks/bench_accuracy.py benchmarks/configs/accuracy_fashion_mnist.yaml \\
        [--seeds N] [--out DIR] [--work DIR] [--resume] [--init supernet|scratch] [--parts P,...]
        [--uniform W,A ...] [--net LABEL] [--targets FILE] [--set k=v ...]

Per seed: the float net, the uniform WwAa nets (every pair of the space under some budget's
bounds, or each --uniform: the first edition's were 2,2 3,3 4,4 8,8), the searched, the
random-search and the sensitivity-allocated arch of each budget, each fine-tuned with the
config's ``finetune`` recipe and measured on the test split; on the first seed also 16 archs
spread over BitOps for Kendall tau / Spearman rho.
Checkpoints go to --work (default runs/bench_accuracy); every finished net is its own
``result.json`` there and is never redone: rerun with --resume to continue a cut benchmark (in
pieces, across days). After each finished net, --out (default benchmarks/results/accuracy) gets
results.json, results.md, accuracy.png and ranking.png, marked partial until every net is there,
with each invocation's command, commit, machine and wall time, judged against --targets
(default benchmarks/configs/accuracy_targets.yaml). --report-only rewrites them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from _screen import in_pieces

from qspos.cli import bench_arguments, bench_plan
from qspos.runtime.config import load_config
from qspos.stages.bench import Targets, run_bench

RESULTS = Path(__file__).parent / "results" / "accuracy"
TARGETS = Path(__file__).parent / "configs" / "accuracy_targets.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--out", default=str(RESULTS), help="results directory (default benchmarks/results/accuracy)")
    parser.add_argument("--work", default="runs/bench_accuracy", help="checkpoints (default runs/bench_accuracy)")
    parser.add_argument("--resume", action="store_true", help="continue the benchmark in --work")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    bench_arguments(parser)
    parser.set_defaults(targets=str(TARGETS))
    args = parser.parse_args()
    command = " ".join([os.path.relpath(sys.executable), *sys.argv])
    with in_pieces("bench_accuracy"):
        cfg = load_config(args.config, args.overrides)
        plan = bench_plan(args)
        run_bench(cfg, args.work, args.out, plan, resume=args.resume, report_only=args.report_only,
                  command=command, targets=Targets.load(args.targets, plan.net or cfg.name), state=args.state)


if __name__ == "__main__":
    main()

"""How many archs per second the cost model prices, with no forward pass (target: >= 10,000/s
for ResNet-18 on one core). Budgets call ``CostModel.metrics`` for every candidate of the search
and every rejection-sampling try, so this is the number that bounds them.

    .venv/bin/python benchmarks/bench_cost.py [--config configs/imagenet_resnet18.yaml] [--seconds 3]

Writes benchmarks/results/cost.json and cost.md (with the command and the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from qspos.core.cost import CostModel
from qspos.runtime.build import build_supernet
from qspos.runtime.config import load_config
from qspos.runtime.provenance import cpu_name, git_commit, machine  # noqa: F401  (the other benchmarks import them from here)

RESULTS = Path(__file__).parent / "results"


def rate(fn, archs: list, seconds: float) -> float:
    """Archs/s of ``fn`` over ``archs`` (cycled), best of 3 timed rounds of ~seconds/3 each."""
    best = 0.0
    for _ in range(3):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            for arch in archs:
                fn(arch)
            n += len(archs)
        best = max(best, n / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/imagenet_resnet18.yaml")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per method")
    parser.add_argument("--archs", type=int, default=1000, help="distinct random archs cycled through")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core; the cost itself is pure Python arithmetic

    cfg = load_config(args.config)
    machine_info = machine()
    t0 = time.perf_counter()
    supernet = build_supernet(cfg)
    t1 = time.perf_counter()
    model = CostModel(supernet, cfg.input_shape)
    t2 = time.perf_counter()
    rng = random.Random(0)
    archs = [supernet.space.sample(rng) for _ in range(args.archs)]

    result = {
        "config": args.config,
        "model": cfg.model.name,
        "input_shape": list(cfg.input_shape),
        "layers": len(model.plan),
        "choice_points": len(supernet.space),
        "build_s": round(t1 - t0, 3),
        "trace_s": round(t2 - t1, 3),
        "metrics_archs_per_s": round(rate(model.metrics, archs, args.seconds)),
        "cost_archs_per_s": round(rate(model.cost, archs, args.seconds)),
        "sample_archs_per_s": round(rate(lambda _: supernet.space.sample(rng), archs, args.seconds)),
        "command": " ".join([os.path.relpath(sys.executable), *sys.argv]),
        "machine": machine_info,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cost.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "cost.md").write_text(
        f"# Cost model throughput ({result['model']}, input {'x'.join(map(str, cfg.input_shape))})\n\n"
        f"| what | archs/s (one thread) |\n| --- | ---: |\n"
        f"| `CostModel.metrics` (totals: the budget check) | {result['metrics_archs_per_s']:,} |\n"
        f"| `CostModel.cost` (full per-layer report) | {result['cost_archs_per_s']:,} |\n"
        f"| `Space.sample` (uniform arch, for reference) | {result['sample_archs_per_s']:,} |\n\n"
        f"{result['layers']} layers, {result['choice_points']} choice points; building the supernet took "
        f"{result['build_s']} s and tracing its shapes (once) {result['trace_s']} s. Target: >= 10,000 archs/s.\n"
        f"Costs are memoised per block and choice, so past the first few archs every block is a look-up "
        f"(the regime of a search); {args.archs} distinct random archs are cycled.\n\n"
        f"- command: `{result['command']}`\n- machine: {result['machine']}\n- date: {result['date']}\n"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""The whole pipeline of a config (what ``qspos run`` does), stage by stage with wall times, and
its report kept as a published result.

    .venv/bin/python benchmarks/bench_pipeline.py configs/quickstart.yaml [--out DIR] [--resume] [--set k=v ...]

Runs train -> search -> finetune (+ test evaluation) -> export -> report into the run directory
(default runs/NAME), then writes benchmarks/results/pipeline_NAME.md (stage times, the command,
the machine, then the run's report.md), pipeline_NAME.json, pipeline_NAME_pareto.png (every arch the
search evaluated) and pipeline_NAME_report.png (the report's plot).
With --resume, finished stages are skipped (their time shows as ~0).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench_cost import git_commit, machine

import qspos
from qspos.runtime.rundir import RunDir
from qspos.stages.report import write_report
from qspos.stages.run import claim_run_dir

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--out", help="run directory (default runs/NAME)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    cfg = qspos.load_config(args.config, args.overrides)
    run_dir = RunDir.of(cfg, args.out).path
    if not args.resume:
        claim_run_dir(RunDir(run_dir))
    machine_info = machine()
    times: dict[str, float] = {}

    def stage(name: str, fn, *a, **kw):
        t = time.perf_counter()
        out = fn(*a, **kw)
        times[name] = round(time.perf_counter() - t, 1)
        return out

    stage("train", qspos.train_supernet, cfg, run_dir, resume=args.resume)
    stage("search", qspos.search, cfg, run_dir, resume=args.resume)
    nets = stage("finetune + test eval", qspos.finetune, cfg, run_dir, resume=args.resume)
    exports = stage("export", qspos.export, run_dir)
    report = stage("report", write_report, run_dir)
    total = round(sum(times.values()), 1)

    name = cfg.name
    result = {
        "config": args.config, "run_dir": str(run_dir), "stage_seconds": times, "total_seconds": total,
        "finetuned": [n.to_dict() for n in nets], "exports": [e.to_dict() for e in exports],
        "command": " ".join([os.path.relpath(sys.executable), *sys.argv]), "commit": git_commit(),
        "machine": machine_info,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"pipeline_{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    shutil.copyfile(run_dir / "search" / "pareto.png", RESULTS / f"pipeline_{name}_pareto.png")
    shutil.copyfile(run_dir / "pareto.png", RESULTS / f"pipeline_{name}_report.png")
    body = report.read_text().replace("](search/pareto.png)", f"](pipeline_{name}_pareto.png)")
    body = body.replace("](pareto.png)", f"](pipeline_{name}_report.png)")
    body = body.replace("[search/pareto.md](search/pareto.md)", "`search/pareto.md` of the run directory")
    rows = "\n".join(f"| {k} | {v} |" for k, v in times.items())
    (RESULTS / f"pipeline_{name}.md").write_text(
        f"# Pipeline on `{args.config}`: {total} s wall time\n\n| stage | seconds |\n| --- | ---: |\n{rows}\n\n"
        f"- command: `{result['command']}` at commit `{result['commit']}`\n- machine: {machine_info}\n"
        f"- date: {result['date']}\n\n"
        + "\n".join("#" + line if line.startswith("#") else line for line in body.splitlines()) + "\n"
    )
    print(json.dumps({"stage_seconds": times, "total_seconds": total}, indent=2))


if __name__ == "__main__":
    main()

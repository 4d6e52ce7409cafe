"""Folded QCDQ of a benchmark seed's fine-tuned nets (issue 27): each file's test top-1 in
onnxruntime (optimised: the integer kernels) against its PyTorch net, integer convs and speed.

    .venv/bin/python benchmarks/bench_export_trained.py runs/bench_accuracy2/resnet14/seed1 \\
        --work runs/export_trained_s1 --name seed1 [--nets searched-w1a2 ...]

Copies the seed's config and its finished nets (``finetune/<net>/``, without the training
checkpoints) into ``--work``, exports them with ``qspos export --format onnx-qcdq`` (which checks
every file on the whole test split), and writes benchmarks/results/export_trained/NAME.json and
NAME.md. A rerun on a complete ``--work`` only rewrites the report.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from _screen import in_pieces, provenance, provenance_lines, write_results

from qspos.errors import QsposError
from qspos.stages.export import ExportResult, export

RESULTS = Path(__file__).parent / "results" / "export_trained"
NET_FILES = ("model.pt", "arch.yaml", "layers.json", "result.json")
WITHIN = 0.3  # points: issue 27's bound on what the deployment form may cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seed_run", type=Path, help="a benchmark seed's run directory")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--name", required=True, help="results file stem under results/export_trained/")
    parser.add_argument("--nets", nargs="+", help="default: every finished net of the seed")
    args = parser.parse_args()
    with in_pieces("bench_export_trained"):
        started = time.time()
        nets = args.nets or sorted(p.parent.name for p in (args.seed_run / "finetune").glob("*/model.pt"))
        unfinished = [n for n in nets if not (args.seed_run / "finetune" / n / "model.pt").is_file()]
        if unfinished:
            raise QsposError(f"not fine-tuned (no model.pt) in {args.seed_run / 'finetune'}: {', '.join(unfinished)}")
        for net in nets:
            (args.work / "finetune" / net).mkdir(parents=True, exist_ok=True)
            for f in NET_FILES:
                shutil.copy2(args.seed_run / "finetune" / net / f, args.work / "finetune" / net / f)
        shutil.copy2(args.seed_run / "config.yaml", args.work / "config.yaml")
        if not all((args.work / "export" / net / "summary.json").exists() for net in nets):
            export(args.work, ["onnx-qcdq"])
        report(args, [row(args.work, net) for net in nets], time.time() - started)


def row(work: Path, net: str) -> dict:
    check = asdict(ExportResult.load(work / "export" / net / "summary.json").checks["onnx-qcdq"])
    keys = ("torch_test_top1", "optimized_test_top1", "test_change", "test_discordant", "integer_convs", "convs",
            "qcdq_ms_1", "float_ms_1", "qcdq_ms_64", "float_ms_64", "ok")
    return {"net": net, **{k: check[k] for k in keys}}


def report(args: argparse.Namespace, rows: list[dict], seconds: float) -> None:
    diffs = [100 * (r["optimized_test_top1"] - r["torch_test_top1"]) for r in rows]
    sd = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
    within = sum(abs(d) <= WITHIN for d in diffs)
    result = {**provenance(), "ledger": [round(seconds, 1)], "seed_run": str(args.seed_run), "nets": rows,
              "qcdq_minus_torch": {"mean": statistics.fmean(diffs), "sd": sd, "n": len(diffs), "within": within}}
    lines = [f"# Folded QCDQ of trained nets ({args.seed_run})", "",
             "Test top-1 (%) on every test image; QCDQ: the file in onnxruntime, optimised (integer kernels), "
             "one thread. Change: images only the file gets right minus those only PyTorch gets right, of the "
             "discordant ones. Speed-up: the float ONNX file's latency over the QCDQ file's.", "",
             "| net | PyTorch | QCDQ | QCDQ - PyTorch | change | integer convs | speed-up batch 1 | "
             "speed-up batch 64 | check |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r, d in zip(rows, diffs):
        lines.append(f"| {r['net']} | {100 * r['torch_test_top1']:.2f} | {100 * r['optimized_test_top1']:.2f} | "
                     f"{d:+.2f} | {r['test_change']:+d} of {r['test_discordant']} | "
                     f"{r['integer_convs']}/{r['convs']} | {r['float_ms_1'] / r['qcdq_ms_1']:.2f}x | "
                     f"{r['float_ms_64'] / r['qcdq_ms_64']:.2f}x | {'ok' if r['ok'] else 'FAILED'} |")
    lines += ["", f"QCDQ - PyTorch over {len(diffs)} nets: mean {statistics.fmean(diffs):+.3f} points "
              f"(sd {sd:.3f}), range {min(diffs):+.2f} to {max(diffs):+.2f}; {within} of {len(diffs)} "
              f"within {WITHIN} points; {sum(r['ok'] for r in rows)} of {len(rows)} pass the export's check."]
    write_results(RESULTS, args.name, result, "\n".join(lines + provenance_lines(result)) + "\n")


if __name__ == "__main__":
    main()

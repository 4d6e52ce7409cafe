"""BatchNorm folded from the start of fine-tuning against folded after it (issue 27, item 1).

A benchmark seed's nets (``runs/bench_accuracy2/<net>/seed<S>/finetune/<name>/``: fine-tuned with
BatchNorm, then folded by the export) are fine-tuned again from the same supernet with the same
recipe and ``finetune.fold_bn: start`` (the deployment net trains from its first step), then
exported to QCDQ. For each net: test top-1 of the PyTorch net and of its QCDQ file in onnxruntime
(optimised) on all test images, both ways; the fold-after QCDQ numbers come from that seed's
export summaries (``--after``, e.g. ``benchmarks/results/export_trained/``), which
``qspos export`` wrote for the same nets.

    .venv/bin/python benchmarks/bench_fold_screen.py runs/bench_accuracy2/resnet14/seed0 \\
        --after benchmarks/results/export_trained --nets uniform-w2a2 searched-w2a2 ...

Resumes: the nets already fine-tuned in ``--work`` are kept (the export, run once at the end,
writes every net's file again). Writes
benchmarks/results/levers/NAME.json and NAME.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from _screen import RESULTS, in_pieces, provenance, provenance_lines, write_results

from qspos.runtime.config import load_config
from qspos.runtime.files import load_arch
from qspos.stages.export import export
from qspos.stages.finetune import FinetuneResult, Target, finetune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seed_run", type=Path, help="a benchmark seed's run directory")
    parser.add_argument("--after", type=Path, required=True, help="its nets' fold-after export summaries")
    parser.add_argument("--nets", nargs="+", required=True)
    parser.add_argument("--work", type=Path, default=Path("runs/fold_screen"))
    parser.add_argument("--name", default="fold_bn")
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        help="config overrides of the fold-start fine-tuning (e.g. finetune.lr=0.01)")
    args = parser.parse_args()
    with in_pieces("bench_fold_screen"):
        started = time.time()
        work = args.work
        if not (work / "supernet.pt").exists():
            work.mkdir(parents=True, exist_ok=True)
            shutil.copy2(args.seed_run / "supernet.pt", work / "supernet.pt")
        cfg = load_config(args.seed_run / "config.yaml", ["finetune.fold_bn=start", *args.overrides])
        targets = [Target(net, load_arch(args.seed_run / "finetune" / net / "arch.yaml")) for net in args.nets]
        tuned = finetune(cfg, work, targets=targets, resume=True)
        if not all((work / "export" / net / "summary.json").exists() for net in args.nets):
            export(work, ["onnx-qcdq"])
        report(args, [measure(args, t) for t in tuned], time.time() - started)


def measure(args: argparse.Namespace, tuned: FinetuneResult) -> dict:
    """One net both ways: the seed's (fold after) and the one fine-tuned folded here."""
    net, arch = tuned.name, tuned.arch
    start = json.loads((args.work / "export" / net / "summary.json").read_text())["checks"]["onnx-qcdq"]
    after = json.loads((args.after / f"{net}.json").read_text())["checks"]["onnx-qcdq"]
    before = json.loads((args.seed_run / "finetune" / net / "result.json").read_text())
    return {"net": net, "arch": arch.digest(), "bitops": before["bitops"],
            "after_torch": before["test_top1"], "after_qcdq": after["optimized_test_top1"],
            "start_torch": tuned.test_top1, "start_qcdq": start["optimized_test_top1"],
            "start_change": start["test_change"], "start_discordant": start["test_discordant"],
            "start_train_seconds": tuned.train_seconds}


def report(args: argparse.Namespace, rows: list[dict], seconds: float) -> None:
    diffs = [100 * (r["start_qcdq"] - r["after_qcdq"]) for r in rows]
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    result = {**provenance(), "ledger": [round(seconds, 1)], "nets": rows,
              "qcdq_start_minus_after": {"mean": mean, "se": se, "n": len(diffs)}}
    lines = [f"# BatchNorm folded from the start of fine-tuning against after it ({args.seed_run})", "",
             "Test top-1 (%) on every test image; QCDQ: the file in onnxruntime, optimised (integer kernels).",
             "", "| net | arch | MBitOps | after: PyTorch | after: QCDQ | start: PyTorch | start: QCDQ | "
             "QCDQ start - after |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r, d in zip(rows, diffs):
        lines.append(f"| {r['net']} | `{r['arch']}` | {r['bitops'] / 1e6:.1f} | {100 * r['after_torch']:.2f} | "
                     f"{100 * r['after_qcdq']:.2f} | {100 * r['start_torch']:.2f} | {100 * r['start_qcdq']:.2f} | "
                     f"{d:+.2f} |")
    lines += ["", f"QCDQ, folded at the start minus folded after: mean {mean:+.2f} points (SE {se:.2f}, "
              f"{len(diffs)} nets, paired by arch)."]
    write_results(RESULTS, args.name, result, "\n".join(lines + provenance_lines(result)) + "\n")


if __name__ == "__main__":
    main()

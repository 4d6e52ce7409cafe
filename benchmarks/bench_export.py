"""Parity of every export format with PyTorch on converted networks (``qspos export``'s checks),
and the QCDQ file's integer convs and speed in onnxruntime against the same net in float.

For each case a supernet of the model, trained for a few steps on synthetic images (parity is
about the files, not accuracy), gives one net at uniform W{w}A4 on the searched layers, fine-tuned
for a few steps, then exported in every format and checked: QCDQ (the deployment net: BatchNorm
folded, int32 biases, conv outputs quantized) in onnxruntime as written and optimised, QONNX in
qonnx's executor, the packed weights as an integer model. The optimised QCDQ graph's integer convs
are counted, and it is timed against ``model_float.onnx`` at batch 1 and 64 on one thread
(median of 20 runs).

    .venv/bin/python benchmarks/bench_export.py [--cases resnet8-w2 squeezenet-w1 ...] [--name export]

Writes benchmarks/results/NAME.json and NAME.md (with the command, commit and machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from bench_cost import git_commit, machine

from qspos.runtime.build import build_supernet
from qspos.runtime.config import load_config
from qspos.stages.export import export
from qspos.stages.finetune import finetune
from qspos.stages.train import train_supernet

RESULTS = Path(__file__).parent / "results"
MODELS = {  # name -> (model spec, input size): a plain ResNet, concatenations with conv biases, inverted residuals
    "resnet8": ({"name": "resnet_small", "args": {"depth": 8, "widths": [8, 16, 32]}}, 16),
    "squeezenet": ({"name": "torchvision:squeezenet1_1", "args": {}}, 32),
    "mobilenet_v2": ({"name": "torchvision:mobilenet_v2", "args": {"width_mult": 0.25}}, 32),
    "resnet14": ({"name": "resnet_small", "args": {"depth": 14, "widths": [16, 32, 64]}}, 28),
    "mobilenet_v2_full": ({"name": "torchvision:mobilenet_v2", "args": {"width_mult": 1.0}}, 32),
    # the second accuracy benchmark's MobileNetV2 (benchmarks/configs/accuracy2_mobilenet_v2.yaml)
    "mobilenet_v2_s1": ({"name": "torchvision:mobilenet_v2", "args": {
        "width_mult": 0.5, "inverted_residual_setting": [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2],
                                                         [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]}}, 28),
}
CASES = ["resnet8-w2", "resnet8-w1", "squeezenet-w2", "squeezenet-w1", "mobilenet_v2-w2", "mobilenet_v2-w1",
         "resnet14-w2", "resnet14-w4", "mobilenet_v2_full-w2", "mobilenet_v2_s1-w2"]


def run_case(case: str, root: Path) -> dict:
    """Build, fine-tune and export one case; its checks and how long the export took."""
    model, w_bits = case.rsplit("-w", 1)
    spec, size = MODELS[model]
    cfg = load_config({
        "name": case, "seed": 0, "runs_dir": str(root),
        "model": {**spec, "num_classes": 10, "in_channels": 1, "input_size": size},
        "space": {"pairs": [[1, 4], [2, 4]], "width_multipliers": [1.0]},
        "data": {"dataset": "synthetic", "synthetic_size": 512, "val_size": 64, "batch_size": 32,
                 "eval_batch_size": 128},
        "train": {"max_steps": 10, "warmup_epochs": 0, "lr": 0.001, "threshold_init_batches": 2},
        "finetune": {"max_steps": 10},
        "export": {"check_batch": 256, "timing_runs": 20},
    })
    train_supernet(cfg, cfg.run_dir)
    finetune(cfg, cfg.run_dir, arch=build_supernet(cfg).space.uniform(int(w_bits), 4))
    start = time.perf_counter()
    (res,) = export(cfg.run_dir)
    return {"case": case, "model": spec, "input_size": size, "export_s": round(time.perf_counter() - start, 1),
            "check_ok": res.check_ok, "checks": {fmt: vars(c) for fmt, c in res.checks.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    parser.add_argument("--name", default="export", help="the results files' name (default: export)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    machine_info = machine()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_case(case, Path(tmp)) for case in args.cases]
    result = {"cases": rows, "command": "python " + " ".join(sys.argv), "commit": git_commit(),
              "wall_s": round(time.perf_counter() - start),
              "machine": machine_info, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Export parity with PyTorch, integer convs and speed (10 supernet and 10 fine-tuning steps on "
             "synthetic images)", "",
             "Max |logit difference| on 256 test images (QONNX: the first 64) and the share of images whose "
             "logits are within 1% of the largest: QCDQ as written and optimised against the deployment net "
             "(BatchNorm folded, int32 biases, conv outputs quantized), QONNX and the packed integer model against "
             "the fine-tuned net; the test top-1 of the QCDQ file against the fine-tuned net's (256 synthetic "
             "test images, nets near chance: they say whether the deployment form moves predictions, not "
             "accuracy).", "",
             "| case | max abs logit | QCDQ | QCDQ optimised | QCDQ top-1 (fine-tuned) | QONNX | packed | accumulators "
             "| all ok | export s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |"]
    for r in rows:
        c, q = r["checks"], r["checks"]["onnx-qcdq"]
        cells = [f"{c[fmt]['max_abs_logit_diff']:.2g} ({100 * c[fmt]['matching']:.0f}%)"
                 for fmt in ("onnx-qcdq", "qonnx", "packed")]
        optimized = f"{q['optimized_max_abs_logit_diff']:.2g} ({100 * q['optimized_matching']:.0f}%)"
        top1 = f"{100 * q['test_top1']:.2f} ({100 * q['torch_test_top1']:.2f})"
        exact = "exact" if c["packed"]["exact_accumulators"] else "OFF"
        lines.append(f"| {r['case']} | {q['max_abs_logit']:.3g} | {cells[0]} | {optimized} | {top1} | {cells[1]} "
                     f"| {cells[2]} | {exact} | {r['check_ok']} | {r['export_s']} |")
    lines += ["", "## QCDQ in onnxruntime against the same net in float (optimised, one thread, median ms)", "",
              "| case | integer convs | QCDQ batch 1 | float batch 1 | speed-up | QCDQ batch 64 | float batch 64 "
              "| speed-up |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        q = r["checks"]["onnx-qcdq"]
        lines.append(f"| {r['case']} | {q['integer_convs']}/{q['convs']} | {q['qcdq_ms_1']:.3g} "
                     f"| {q['float_ms_1']:.3g} "
                     f"| {q['float_ms_1'] / q['qcdq_ms_1']:.2f}x | {q['qcdq_ms_64']:.3g} | {q['float_ms_64']:.3g} "
                     f"| {q['float_ms_64'] / q['qcdq_ms_64']:.2f}x |")
    lines += ["", f"- command: `{result['command']}`", f"- commit: {result['commit']}", f"- machine: {machine_info}",
              f"- wall time: {result['wall_s']} s", f"- date: {result['date']}", ""]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

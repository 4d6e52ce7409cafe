"""Where the deployment form loses accuracy: test top-1 of fine-tuned nets after each step of
``qspos.core.fold.deployment_net``, in PyTorch, on the whole test split.

Steps: the fine-tuned net; BatchNorm folded (exact on the weight codes); biases int32 at the
accumulator's scale (what an integer conv adds), rounded; the same with the biases of channels
whose codes are all zero made exact (``core.fold.int32_biases``); the same with the weights as
int8 codes, each channel's codes times a whole factor and its scale divided by it, so that the
biases are rounded at a finer step (``core.fold.int8_weight_codes``); the deployment net that
export writes (those weights and biases, 8-bit conv outputs calibrated by their max).

    .venv/bin/python benchmarks/bench_deploy_rounding.py RUN_DIR NET [NET ...] [--name deploy_rounding]

Writes benchmarks/results/NAME.json and NAME.md (command, commit, machine, wall time).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _screen import provenance, provenance_lines

from qspos.core import fold
from qspos.runtime.build import load_finetuned
from qspos.runtime.config import load_config
from qspos.runtime.data import load_splits, make_loader
from qspos.runtime.evaluate import evaluate_top1
from qspos.stages.export import first_batches

RESULTS = Path(__file__).parent / "results"
STEPS = ("fine-tuned", "BN folded", "+ int32 biases (rounded)", "+ int32 biases (zero channels exact)",
         "+ int8 weight codes (finer bias steps)", "+ 8-bit outputs (deployed)")


def measure(run: Path, name: str, cfg, test, calib) -> dict:
    model, arch = load_finetuned(cfg, run / "finetune" / name / "model.pt")
    nets = [model, fold.fold_batchnorm(model), fold.quantize_biases(fold.fold_batchnorm(model)),
            fold.folded_int32(model), fold.folded_int32(model, int8_codes=True),
            fold.deployment_net(model, calib, int8_codes=True)]
    return {"net": name, "arch": arch.digest(), **{s: evaluate_top1(m, test, "cpu")[0] for s, m in zip(STEPS, nets)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("nets", nargs="+")
    parser.add_argument("--name", default="deploy_rounding")
    args = parser.parse_args()
    started = time.time()
    cfg = load_config(args.run / "config.yaml")
    splits = load_splits(cfg.data, cfg.model)
    test = make_loader(splits.test, cfg.data.eval_batch_size, shuffle=False)
    calib = torch.cat(first_batches(make_loader(splits.calib, cfg.data.eval_batch_size, shuffle=False, workers=0),
                                    cfg.export.check_batch))  # the export's calibration images
    rows = [measure(args.run, n, cfg, test, calib) for n in args.nets]
    result = {**provenance(), "ledger": [round(time.time() - started, 1)], "run": str(args.run), "nets": rows}
    lines = [f"# Where the deployment form loses accuracy ({args.run})", "",
             f"Test top-1 (%) on {len(splits.test)} test images, in PyTorch, after each step.", "",
             "| net | " + " | ".join(STEPS) + " |", "| --- |" + " ---: |" * len(STEPS)]
    lines += [f"| {r['net']} | " + " | ".join(f"{100 * r[s]:.2f}" for s in STEPS) + " |" for r in rows]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    text = "\n".join(lines + provenance_lines(result)) + "\n"
    (RESULTS / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

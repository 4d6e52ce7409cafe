"""Screen the float teacher's levers on the cheapest signal (issue 24): uniform W2A2 fine-tuned from
supernets trained with and without the teacher, each fine-tuned with and without distillation.

Arms (one seed; each supernet in its own run directory under ``--work``):

- ``none``: today's supernet (from scratch, labels only);
- ``teacher``: the supernet starts from the teacher's weights and learns from its logits
  (``train.init: teacher``, ``train.distill: teacher``);
- ``inplace``: it starts from the teacher's weights and trains with BigNAS's sandwich rule
  (``train.distill: inplace``: the largest path on the labels, the smallest and two sampled paths
  on its logits), for as many epochs (about 4x the compute);
- ``inplace-eqtime``: the same for a quarter of the epochs, about the wall time of the others.

``--arms`` picks some (default: ``none`` and ``teacher``).

Each arm's uniform W2A2 net is fine-tuned twice: on the labels (``uniform-w2a2``) and with
``finetune.distill: teacher`` (``uniform-w2a2-kd``). The teacher is a finished ``qspos float`` run
(``--teacher RUN/float/model.pt``, passed as ``float.checkpoint``). Finished pieces are skipped,
so the script continues where a killed one stopped.

    .venv/bin/python benchmarks/bench_teacher_screen.py configs/fashion_mnist.yaml \\
        --teacher runs/kd0/float/model.pt --work runs/screen [--seed 0] [--set key=value ...]

Writes benchmarks/results/levers/NAME.{json,md} (``--name``, default ``teacher_screen``; command,
commit, machine, wall time; partial results are marked partial).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from _screen import RESULTS, provenance, provenance_lines, screen_parser, write_results

from qspos.core.stats import binomial_se
from qspos.runtime.build import build_supernet
from qspos.runtime.config import Config, load_config
from qspos.runtime.numbers import points
from qspos.runtime.rundir import RunDir
from qspos.stages.finetune import Target, finetune
from qspos.stages.float_baseline import FloatResult
from qspos.stages.train import train_supernet

ARMS = {"none": [], "teacher": ["train.init=teacher", "train.distill=teacher"],
        "inplace": ["train.init=teacher", "train.distill=inplace"],
        "inplace-eqtime": ["train.init=teacher", "train.distill=inplace", "train.epochs=1.75"]}
FINETUNES = {"uniform-w2a2": [], "uniform-w2a2-kd": ["finetune.distill=teacher"]}


def arm_config(base: Config, arm: str, finetune_name: str) -> Config:
    return load_config(base, ARMS[arm] + FINETUNES[finetune_name])


def supernet_record(run: RunDir) -> dict | None:
    """The arm's supernet training, from its metrics (None until it is finished)."""
    if not run.supernet.is_file():
        return None
    rows = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    train = [r for r in rows if r.get("stage") == "train"]
    done = [r for r in train if "val_top1_max" in r]
    if not done:
        return None
    steps = [r for r in train if "img_s" in r]
    return {"val_top1_max": done[-1]["val_top1_max"], "val_top1_min": done[-1]["val_top1_min"],
            "img_s_median": sorted(r["img_s"] for r in steps)[len(steps) // 2] if steps else None}


def run_arm(base: Config, arm: str, work: Path, ledger: dict) -> None:
    run = RunDir(work / arm)
    if supernet_record(run) is None:
        t0 = time.perf_counter()
        train_supernet(arm_config(base, arm, "uniform-w2a2"), run, resume=run.supernet.is_file())
        ledger[f"{arm}/supernet"] = round(time.perf_counter() - t0, 1)
    for name in FINETUNES:
        if run.net(name).result.is_file():
            continue
        cfg = arm_config(base, arm, name)
        t0 = time.perf_counter()
        finetune(cfg, run, resume=True, targets=[Target(name, build_supernet(cfg).space.uniform(2, 2))])
        ledger[f"{arm}/{name}"] = round(time.perf_counter() - t0, 1)


def collect(work: Path, teacher: Path, chosen: list[str]) -> dict:
    arms = {}
    for arm in chosen:
        run = RunDir(work / arm)
        nets = {}
        for name in FINETUNES:
            if run.net(name).result.is_file():
                r = json.loads(run.net(name).result.read_text())
                nets[name] = {k: r[k] for k in ("val_top1_before", "val_top1", "test_top1", "bitops", "steps",
                                                "train_seconds")}
                nets[name]["test_se"] = binomial_se(r["test_top1"], r.get("test_images") or 10000)
        arms[arm] = {"supernet": supernet_record(run), "nets": nets}
    float_result = teacher.parent / "result.json"
    return {"teacher": FloatResult.load(float_result).to_dict() if float_result.is_file() else None, "arms": arms}


def markdown(result: dict) -> str:
    lines = [f"# Float-teacher screen: uniform W2A2 on ResNet-14 / Fashion-MNIST, seed {result['seed']}"
             + (" (partial)" if result["partial"] else ""), ""]
    t = result["teacher"]
    if t:
        lines += [f"Teacher: float ResNet-14, {t['steps']} steps, test top-1 {points(t['test_top1'])} %, "
                  f"val top-1 {points(t['val_top1'])} %.", ""]
    lines += ["| supernet | fine-tuning | supernet val max / min | val before | val after | test top-1 ± SE |",
              "| --- | --- | ---: | ---: | ---: | ---: |"]
    for arm, a in result["arms"].items():
        s = a["supernet"] or {}
        for name in FINETUNES:
            n = a["nets"].get(name)
            kd = "labels + KD" if name.endswith("-kd") else "labels"
            cells = (f"{points(n['val_top1_before'])} | {points(n['val_top1'])} | "
                     f"{points(n['test_top1'])} ± {points(n['test_se'])}") if n else "– | – | –"
            lines.append(f"| {arm} | {kd} | {points(s.get('val_top1_max'))} / {points(s.get('val_top1_min'))} "
                         f"| {cells} |")
    speeds = {arm: (a["supernet"] or {}).get("img_s_median") for arm, a in result["arms"].items()}
    if speeds.get("none") and all(speeds.values()):
        lines += ["", "Supernet step cost against today's (median img/s, same machine): " + ", ".join(
            f"{arm} {speeds['none'] / s:.2f}x ({s:.0f} img/s)" for arm, s in speeds.items() if arm != "none") + "."]
    lines += provenance_lines(result)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = screen_parser(__doc__, "runs/screen", "teacher_screen")
    parser.add_argument("--teacher", required=True, type=Path, help="the teacher: a finished float/model.pt")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=["none", "teacher"])
    args = parser.parse_args()
    base = load_config(args.config, [f"seed={args.seed}", f"search.seed={args.seed}",
                                     f"float.checkpoint={args.teacher}", *args.overrides])
    ledger: dict = {}
    info = provenance()
    if not args.report_only:
        for arm in args.arms:
            run_arm(base, arm, args.work, ledger)
    result = {**info, "seed": args.seed, "ledger": ledger, **collect(args.work, args.teacher, args.arms)}
    result["partial"] = any(len(a["nets"]) < len(FINETUNES) for a in result["arms"].values())
    write_results(RESULTS, args.name, result, markdown(result))


if __name__ == "__main__":
    main()

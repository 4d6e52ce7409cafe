"""Supernet training under torch.compile: compilations and step times over many sampled paths.

    .venv/bin/python benchmarks/bench_compile_supernet.py [--config configs/fashion_mnist.yaml]
        [--paths 100] [--sliced-paths 3] [--batch 256]

Every option trains the same sequence of uniformly sampled paths (one step each, ``MaskedSGD``
on the active parts, label-smoothed cross-entropy, one fixed batch of random images):

- ``float eager``: the supernet with every quantizer off (sliced float convs): the target;
- ``eager``: the supernet as ``qspos train`` runs it by default (sliced, eager kernels);
- ``compile, sliced``: ``torch.compile`` of the default supernet, which specialises on every
  channel count and so compiles again for every new path: timed on ``--sliced-paths`` paths only;
- ``compile, masked``: ``train.compile: true``, max-width compute with channel masks
  (``Supernet.set_masked``) and the compiled quant kernels: one graph for every path.

A step "compiles" when Dynamo produced new graphs during it. Step times are medians over the
steps that did not compile. Writes benchmarks/results/compile_supernet.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch._dynamo
import torch._inductor.config
from bench_cost import git_commit, machine
from torch import nn

from qspos.core.supernet import Supernet
from qspos.runtime.build import build_supernet
from qspos.runtime.config import load_config
from qspos.runtime.optim import MaskedSGD, param_groups

RESULTS = Path(__file__).parent / "results"
TARGET = "a handful of compilations over the paths, and a step no slower than float eager"


def _graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def run_option(supernet: Supernet, step_fn: Callable[[], None], archs: list, label: str) -> dict:
    """Train one step per path; per step: wall time and whether it compiled."""
    times, compiled_at, t_all = [], [], time.perf_counter()
    for i, arch in enumerate(archs):
        supernet.set_arch(arch)
        before = _graphs()
        t = time.perf_counter()
        step_fn()
        times.append(time.perf_counter() - t)
        if _graphs() > before:
            compiled_at.append(i)
        print(f"{label}: path {i + 1}/{len(archs)} {times[-1]:.2f} s{' (compiled)' if _graphs() > before else ''}",
              file=sys.stderr, flush=True)
    steady = [t for i, t in enumerate(times) if i not in compiled_at]
    return {"paths": len(archs), "compiling_steps": len(compiled_at), "compiled_at": compiled_at,
            "compile_seconds": round(sum(times[i] for i in compiled_at), 1),
            "median_step_ms": round(1000 * statistics.median(steady), 1) if steady else None,  # every step compiled
            "wall_seconds": round(time.perf_counter() - t_all, 1)}


def make_step(supernet: Supernet, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = MaskedSGD(param_groups(supernet, 5e-4), lr=0.05, momentum=0.9, nesterov=True)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)

    def step() -> None:
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step(supernet.active_slices())

    return step


def fresh(cfg, backend: str, quantized: bool = True, masked: bool = False) -> Supernet:  # noqa: ANN001
    torch.manual_seed(0)
    supernet = build_supernet(cfg, "cpu")
    supernet.set_quant_backend(backend)
    supernet.set_masked(masked)
    for _, layer in supernet.layer_items():
        if not quantized:
            layer.weight_quant.quantized = layer.input_quant.quantized = False
    return supernet.train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fashion_mnist.yaml")
    parser.add_argument("--paths", type=int, default=100)
    parser.add_argument("--sliced-paths", type=int, default=3, help="paths for the per-path-compiling option")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    torch._dynamo.config.recompile_limit = max(64, args.sliced_paths + 2)  # count them, do not fall back
    torch._inductor.config.force_disable_caches = True  # compile times of a fresh machine, not of a warm cache
    cfg = load_config(args.config)
    g = torch.Generator().manual_seed(0)
    c, s = cfg.model.in_channels, cfg.model.input_size
    x = torch.randn(args.batch, c, s, s, generator=g)
    y = torch.randint(0, cfg.model.num_classes, (args.batch,), generator=g)
    probe = build_supernet(cfg, "cpu")
    rng = random.Random(0)
    archs = [probe.space.sample(rng) for _ in range(args.paths)]
    t0 = time.perf_counter()
    options = {}
    for label, backend, quantized, masked, compiled, n in [
        ("float eager", "fused", False, False, False, args.paths),
        ("eager", "fused", True, False, False, args.paths),
        ("compile, sliced", "compiled", True, False, True, args.sliced_paths),
        ("compile, masked", "compiled", True, True, True, args.paths),
    ]:
        supernet = fresh(cfg, backend, quantized, masked)
        model = torch.compile(supernet) if compiled else supernet
        torch._dynamo.reset()
        options[label] = {"backend": backend, "quantized": quantized, "masked": masked, "compiled": compiled,
                          **run_option(supernet, make_step(supernet, model, x, y), archs[:n], label)}
    ref = options["float eager"]["median_step_ms"]
    for o in options.values():
        o["x_float_eager"] = round(o["median_step_ms"] / ref, 3) if o["median_step_ms"] is not None else None
    masked = options["compile, masked"]
    out = {"command": " ".join(["python", *sys.argv]), "commit": git_commit(), "machine": machine(),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "wall_seconds": round(time.perf_counter() - t0, 1), "config": args.config, "batch": args.batch,
           "threads": torch.get_num_threads(), "target": TARGET, "options": options,
           "met": {"compilations": masked["compiling_steps"] <= 5, "step": masked["x_float_eager"] <= 1.0}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compile_supernet.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["# Supernet training under torch.compile", "",
             f"`{out['command']}` at commit `{out['commit']}`, {out['date']}; {out['machine']}; "
             f"{out['threads']} threads; wall {out['wall_seconds']} s.", "",
             f"{args.config}, batch {args.batch}; one step per uniformly sampled path, the same paths for every "
             "option. A step compiles when Dynamo made new graphs in it; step time: median of the steps that did "
             f"not. Target: {TARGET}.", "",
             "| option | paths | steps that compiled | compile s | median step ms | x float eager |",
             "|---|---:|---:|---:|---:|---:|"]
    for label, o in options.items():
        ratio = "-" if o["x_float_eager"] is None else f"{o['x_float_eager']:.3f}"
        step = "- (every step compiled)" if o["median_step_ms"] is None else o["median_step_ms"]
        lines.append(f"| {label} | {o['paths']} | {o['compiling_steps']} | {o['compile_seconds']} | {step} | {ratio} |")
    lines += ["", f"Compilations target ({masked['compiling_steps']} <= 5): "
              f"{'met' if out['met']['compilations'] else 'missed'}; step target "
              f"({masked['x_float_eager']:.3f}x float eager <= 1): "
              f"{'met' if out['met']['step'] else 'missed, by ' + format(masked['x_float_eager'] - 1, '.1%')}."]
    (RESULTS / "compile_supernet.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))



if __name__ == "__main__":
    main()

"""Supernet training-step cost against (a) the fixed-arch Brevitas net of the same arch
(``supernet.extract(arch)``) and (b) the float net of that arch (plain Conv2d/Linear copies), and
the distilled supernet steps against the plain one: ``train.distill: teacher`` (the teacher's
forward included) and ``inplace`` (the sandwich rule: the largest, the smallest and
``train.inplace_paths`` sampled paths per step).
Targets: supernet step <= 1.10x the fixed-arch Brevitas step; teacher-distilled <= 1.5x the plain
step (the sandwich step has no target: it trains several paths, and is reported as its ratio).

The supernet step is the real one of ``qspos train``: activate the path, forward, label-smoothed
loss, backward, ``MaskedSGD`` on the active parts. The two baselines take ``torch.optim.SGD``.
Models are timed in interleaved rounds (median per-step time), so load from other processes
hits all three alike.

    .venv/bin/python benchmarks/bench_train_step.py [--config configs/fashion_mnist.yaml] [--threads 1]
        [--backends reference fused] [--name train_step]

Writes benchmarks/results/NAME.json and NAME.md (with the command and the machine). Any model a
config names works: ``--config configs/fashion_mnist_mobilenet_v2.yaml --name train_step_mobilenet_v2``
measures a converted torchvision model.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from bench_cost import git_commit, machine
from brevitas.nn import QuantConv2d, QuantLinear
from torch import nn

from qspos.runtime.build import build_supernet, float_model
from qspos.runtime.config import load_config
from qspos.runtime.optim import MaskedSGD, param_groups
from qspos.runtime.sampler import PathSampler
from qspos.runtime.sandwich import Sandwich
from qspos.runtime.teacher import Teacher

RESULTS = Path(__file__).parent / "results"


def float_copy(net: nn.Module) -> nn.Module:
    """The same net with every Brevitas layer replaced by its float torch layer (weights kept)."""
    for name, child in net.named_children():
        if isinstance(child, QuantConv2d):
            conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                             child.padding, child.dilation, groups=child.groups, bias=child.bias is not None)
            conv.load_state_dict({k: v for k, v in child.state_dict().items() if k in ("weight", "bias")})
            setattr(net, name, conv)
        elif isinstance(child, QuantLinear):
            lin = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
            lin.load_state_dict({k: v for k, v in child.state_dict().items() if k in ("weight", "bias")})
            setattr(net, name, lin)
        else:
            float_copy(child)
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fashion_mnist.yaml")
    parser.add_argument("--batch", type=int, default=None, help="default: data.batch_size of the config")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--backends", nargs="+", default=None,
                        help="quant backends of the supernet, one row each (default: the config's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled arch")
    parser.add_argument("--name", default="train_step", help="results file stem (benchmarks/results/NAME.json/.md)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = load_config(args.config)
    backends = args.backends or [cfg.quant.backend]
    batch = args.batch or cfg.data.batch_size
    machine_info, t_start = machine(), time.perf_counter()
    torch.manual_seed(0)
    supernet = build_supernet(cfg)
    arch = supernet.space.sample(random.Random(args.seed))
    static = supernet.extract(arch)
    plain = float_copy(supernet.extract(arch))
    x = torch.randn(batch, *cfg.input_shape)
    y = torch.randint(0, cfg.model.num_classes, (batch,))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    t = cfg.train

    def sgd(model: nn.Module, cls):  # noqa: ANN001
        return cls(param_groups(model, t.weight_decay), lr=1e-3, momentum=t.momentum, nesterov=t.nesterov)

    opt_super, opt_static, opt_float = sgd(supernet, MaskedSGD), sgd(static, torch.optim.SGD), sgd(plain,
                                                                                                torch.optim.SGD)

    def step_super(backend: str):
        def step() -> None:
            supernet.set_quant_backend(backend)
            supernet.set_arch(arch)
            active = supernet.active_slices()
            opt_super.zero_grad(set_to_none=True)
            loss_fn(supernet(x), y).backward()
            opt_super.step(active)
        return step

    teacher = Teacher(float_model(cfg).eval().requires_grad_(False), t.distill_temperature, t.distill_weight,
                      "a float net of the config's model", "")

    def step_distilled(backend: str):  # the real step of train.distill: teacher (its forward included)
        def step() -> None:
            supernet.set_quant_backend(backend)
            supernet.set_arch(arch)
            active = supernet.active_slices()
            opt_super.zero_grad(set_to_none=True)
            teacher.loss(x, supernet(x), y, t.label_smoothing).backward()
            opt_super.step(active)
        return step

    sandwich = Sandwich(supernet, PathSampler(supernet.space, args.seed), t.inplace_paths, t.label_smoothing,
                        t.distill_temperature, t.distill_weight)

    def step_inplace(backend: str):  # the real step of train.distill: inplace (its paths drawn included)
        def step() -> None:
            supernet.set_quant_backend(backend)
            active = sandwich.before_step(0)
            opt_super.zero_grad(set_to_none=True)
            sandwich(supernet, x, y)[0].backward()
            opt_super.step(active)
        return step

    def step_plain(model: nn.Module, opt: torch.optim.Optimizer):
        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
        return step

    steps = {f"supernet ({b})": step_super(b) for b in backends}
    distilled = f"supernet ({backends[0]}, teacher KD)"
    steps[distilled] = step_distilled(backends[0])
    inplace = f"supernet ({backends[0]}, in-place sandwich, {t.inplace_paths} + 2 paths)"
    steps[inplace] = step_inplace(backends[0])
    steps.update({"fixed_brevitas": step_plain(static, opt_static), "float": step_plain(plain, opt_float)})
    for model in (supernet, static, plain):
        model.train()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for fn in steps.values():  # warm-up
        fn()
        fn()
    for _ in range(args.rounds):
        for name, fn in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[name].append((time.perf_counter() - start) / args.steps)
    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    first = f"supernet ({backends[0]})"
    result = {
        "config": args.config, "backends": backends, "model": cfg.model.name, "args": cfg.model.args,
        "batch": batch, "threads": torch.get_num_threads(), "arch": arch.to_dict(),
        "step_ms": {k: round(v, 2) for k, v in ms.items()},
        "images_per_s": {k: round(batch / v * 1000, 1) for k, v in ms.items()},
        "supernet_over_fixed_brevitas": {b: round(ms[f"supernet ({b})"] / ms["fixed_brevitas"], 3) for b in backends},
        "supernet_over_float": {b: round(ms[f"supernet ({b})"] / ms["float"], 3) for b in backends},
        "fixed_brevitas_over_float": round(ms["fixed_brevitas"] / ms["float"], 3),
        "distilled_over_supernet": round(ms[distilled] / ms[first], 3),
        "target_distilled_over_supernet": 1.5,
        "inplace_over_supernet": round(ms[inplace] / ms[first], 3),
        "target_supernet_over_fixed_brevitas": 1.10,
        "command": "python " + " ".join(sys.argv),
        "machine": machine_info,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(), "wall_s": round(time.perf_counter() - t_start, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "\n".join(f"| {k} | {ms[k]:.1f} | {result['images_per_s'][k]:,.0f} | {ms[k] / ms['fixed_brevitas']:.3f} "
                     f"| {ms[k] / ms['float']:.3f} |" for k in steps)
    ratio = ms[first] / ms["fixed_brevitas"]
    met = "met" if ratio <= 1.10 else f"NOT met, by {100 * (ratio / 1.10 - 1):.1f}%"
    (RESULTS / f"{args.name}.md").write_text(
        f"# Training step: supernet vs fixed-arch Brevitas vs float ({cfg.model.name} {cfg.model.args}, "
        f"input {'x'.join(map(str, cfg.input_shape))}, batch {batch}, {result['threads']} threads)\n\n"
        "| model | ms/step (median) | images/s | / fixed Brevitas | / float |\n| --- | ---: | ---: | ---: | ---: |\n"
        f"{rows}\n\nTarget supernet ({backends[0]} backend) <= 1.10x fixed-arch Brevitas: {met} "
        f"({ratio:.3f}x). A distilled step (`train.distill: teacher`, the float teacher's forward included) "
        f"costs {ms[distilled] / ms[first]:.3f}x the plain supernet step (target <= 1.5x: "
        f"{'met' if ms[distilled] / ms[first] <= 1.5 else 'NOT met'}). An in-place sandwich step "
        f"(`train.distill: inplace`, {t.inplace_paths} + 2 paths) costs {ms[inplace] / ms[first]:.3f}x. "
        f"Arch (seed {args.seed}): "
        f"`{json.dumps(arch.to_dict())}`\n\n"
        f"- command: `{result['command']}` at commit `{result['commit']}`\n- machine: {machine_info}\n"
        f"- date: {result['date']}; wall time {result['wall_s']} s\n"
    )
    print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()

"""Supernet training (``qspos train``): one uniformly sampled single path per step.

Every rank samples the same path from a shared seed; with ``train.sampling: budget`` the path is
uniform among the archs inside ``train.sampling_budget`` (the paper's constraint-aware variant;
the entry has the form of a ``search.budgets`` entry, e.g. ``{bitops: {min: "uniform 2,2",
max: "uniform 3,3"}}``). Only the used part of each parameter is updated in a step.
"""

from __future__ import annotations

import argparse
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Subset

from qspos.arch import Arch
from qspos.budget import ArchMetrics, parse_budgets
from qspos.checkpoint import python_rng_state, set_python_rng_state
from qspos.config import Config, load_config
from qspos.cost import CostModel
from qspos.data import first_images, load_splits, make_loader
from qspos.distributed import init_distributed, pick_device
from qspos.errors import QsposError
from qspos.evaluate import evaluate_top1, recalibrate_bn
from qspos.optim import ActiveParts
from qspos.progress import MetricsLog, console
from qspos.rundir import SUPERNET_SECTIONS, fingerprint, open_run_dir, resolve_run_dir
from qspos.space import Space
from qspos.supernet import Supernet, build_supernet
from qspos.trainer import FitResult, claim_checkpoint, fit
from quant_kernels import fake_quant

CHECKPOINT = "supernet.pt"


@dataclass
class TrainResult:
    fit: FitResult  # steps, epochs, training loss/top-1, img/s, time, checkpoint path
    val_top1_max: float | None  # held-out val top-1 of the largest path after BN recalibration
    val_top1_min: float | None  # ... and of the smallest path (None without a val split)
    supernet: Supernet  # the trained supernet (on the main rank, BN recalibrated for the smallest path)


class PathSampler:
    """Draws the path of each step: uniform over the space, or over the archs ``accept`` allows."""

    def __init__(self, space: Space, seed: int, accept: Callable[[Arch], bool] | None = None):
        self.space, self.accept = space, accept
        self.rng = random.Random(seed)

    def __call__(self) -> Arch:
        return self.space.sample(self.rng, self.accept, max_tries=100_000)

    def state_dict(self) -> dict:
        return {"rng": python_rng_state(self.rng)}

    def load_state_dict(self, state: dict) -> None:
        set_python_rng_state(self.rng, state["rng"])


def make_sampler(cfg: Config, supernet: Supernet, probe: int = 2000) -> PathSampler:
    """The sampler ``train.sampling`` asks for; a budget that admits almost no arch is refused
    up front (``probe`` uniform archs), not after hours of training on a failed rejection."""
    if cfg.train.sampling == "uniform":
        return PathSampler(supernet.space, cfg.seed)
    metrics = ArchMetrics(CostModel(supernet, cfg.input_shape))
    (budget,) = parse_budgets([cfg.train.sampling_budget], metrics, where="train.sampling_budget")

    def accept(arch: Arch) -> bool:
        return budget.accepts(metrics(arch))

    rng = random.Random(cfg.seed)
    if not any(accept(supernet.space.sample(rng)) for _ in range(probe)):
        raise QsposError(f"train.sampling_budget admits none of {probe} uniformly sampled archs; widen it")
    return PathSampler(supernet.space, cfg.seed, accept)


@torch.no_grad()
def init_act_thresholds(supernet: Supernet, images: Iterable, device: torch.device, samples: int = 1 << 15) -> None:
    """Give the activation threshold of every bit-width of every layer a sensible start: the
    one that minimises the MSE of quantising that layer's observed input at that bit-width.

    Inputs are observed on the largest path with activations left in float and BN on batch
    statistics; every buffer (BN statistics, active path) is restored afterwards.
    """
    quants = [layer.input_quant for _, layer in supernet.layer_items() if layer.input_quant.quantized]
    seen: dict[int, list[torch.Tensor]] = {id(q): [] for q in quants}
    g = torch.Generator().manual_seed(0)

    def observe(q, args):  # noqa: ANN001 - forward pre-hook
        x = args[0].detach().flatten().float().cpu()
        seen[id(q)].append(x[torch.randint(0, x.numel(), (min(samples, x.numel()),), generator=g)])

    saved = {name: b.clone() for name, b in supernet.named_buffers()}
    was_training = supernet.training
    hooks = [q.register_forward_pre_hook(observe) for q in quants]
    try:
        supernet.set_arch(supernet.space.extremes()[1])
        for q in quants:
            q.quantized = False
        supernet.train()
        for x, _ in images:
            supernet(x.to(device))
    finally:
        for h in hooks:
            h.remove()
        for q in quants:
            q.quantized = True
        for name, b in supernet.named_buffers():
            b.copy_(saved[name])
        supernet.train(was_training)
    for q in quants:
        x = torch.cat(seen[id(q)])
        x = x[torch.randperm(x.numel(), generator=g)[:samples]]
        for i, bits in enumerate(q.bit_choices):
            q.threshold[i].fill_(mse_threshold(x, bits, q.signed, q.narrow))


def mse_threshold(x: torch.Tensor, bits: int, signed: bool, narrow: bool) -> float:
    """Clipping threshold from a geometric grid below max|x| that quantises ``x`` with least MSE."""
    top = float(x.abs().max())
    if top == 0:
        return 1.0
    grid = top * 2.0 ** (-torch.arange(64, dtype=torch.float32) / 8)
    bit_width = torch.tensor(float(bits))
    errors = torch.stack([(fake_quant(x, t, bit_width, signed, narrow, bits == 1) - x).square().mean()
                          for t in grid])
    return float(grid[int(errors.argmin())])


def evaluate_path(supernet: Supernet, arch: Arch, calib: Iterable, val: Iterable, device: torch.device) -> float:
    """Held-out top-1 of one path after recalibrating BN on the calibration images."""
    supernet.set_arch(arch)
    recalibrate_bn(supernet, calib, device)
    return evaluate_top1(supernet, val, device)[0]


def train_supernet(cfg: Config, run_dir: Path | None = None, resume: bool = False) -> TrainResult:
    """Train the supernet of ``cfg`` into ``run_dir/supernet.pt`` (default ``cfg.run_dir``).

    Works under torchrun (DDP). Ends with the val top-1 of the largest and smallest path.
    """
    run_dir = Path(run_dir) if run_dir is not None else cfg.run_dir
    path = claim_checkpoint(run_dir / CHECKPOINT, resume)
    device = pick_device(cfg.train.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist = init_distributed(device)
    torch.manual_seed(cfg.seed)
    splits = load_splits(cfg.data, cfg.model)
    supernet = build_supernet(cfg).to(device)
    sampler = make_sampler(cfg, supernet)
    if not path.exists() and cfg.train.threshold_init_batches > 0:
        n = cfg.train.threshold_init_batches * cfg.data.batch_size
        init_act_thresholds(supernet, make_loader(Subset(splits.calib, range(min(n, len(splits.calib)))),
                                                  cfg.data.batch_size, shuffle=False), device)

    def before_step(step: int) -> ActiveParts:
        supernet.set_arch(sampler())
        return supernet.active_slices()

    d = cfg.data
    metrics = MetricsLog(run_dir / "metrics.jsonl", "train", enabled=dist.main)
    result = fit(
        supernet, splits.train, cfg.train,
        batch_size=d.batch_size, seed=cfg.seed, checkpoint=path,
        fingerprint=fingerprint(cfg, *SUPERNET_SECTIONS), resume=resume,
        recipe={"data": [d.dataset, d.val_size, d.split_seed, d.train_subset, d.augment],
                "sampling": [cfg.train.sampling, cfg.train.sampling_budget, cfg.train.threshold_init_batches]},
        before_step=before_step, state={"sampler": sampler}, metrics=metrics,
        dist=dist, device=device, workers=d.workers, desc="supernet",
    )
    top_max = top_min = None
    if dist.main and len(splits.val):
        calib = make_loader(first_images(splits.calib, cfg.search.calib_images, d.eval_batch_size),
                            d.eval_batch_size, shuffle=False)
        val = splits.val if cfg.search.val_images is None else Subset(
            splits.val, range(min(cfg.search.val_images, len(splits.val))))
        val_loader = make_loader(val, d.eval_batch_size, shuffle=False, workers=d.workers)
        smallest, largest = supernet.space.extremes()
        top_max = evaluate_path(supernet, largest, calib, val_loader, device)
        top_min = evaluate_path(supernet, smallest, calib, val_loader, device)
        metrics.write(step=result.steps, val_top1_max=round(top_max, 5), val_top1_min=round(top_min, 5))
    dist.barrier()
    return TrainResult(result, top_max, top_min, supernet)


def cli_train(args: argparse.Namespace) -> int:
    """``qspos train CONFIG [--out DIR] [--resume] [--set ...]``."""
    from rich.console import Console

    from qspos.progress import table

    cfg = load_config(args.config, args.overrides)
    run_dir = resolve_run_dir(cfg, args.out)
    claim_checkpoint(run_dir / CHECKPOINT, args.resume)  # before config.yaml is rewritten
    if os.environ.get("RANK", "0") == "0":
        open_run_dir(cfg, args.out)
    res = train_supernet(cfg, run_dir, resume=args.resume)
    if os.environ.get("RANK", "0") != "0":
        return 0
    f = res.fit
    rows = [
        ["steps", f.steps], ["epochs", round(f.epochs, 3)], ["train loss (last interval)", f.loss],
        ["train top-1 (last interval)", _pct(f.top1)], ["images/s", round(f.images_per_s)],
        ["time (s)", round(f.seconds)], ["val top-1, largest path", _pct(res.val_top1_max)],
        ["val top-1, smallest path", _pct(res.val_top1_min)], ["checkpoint", str(f.checkpoint)],
    ]
    Console().print(table(f"supernet training: {cfg.name}", ["name", "value"], rows))
    console.print(f"next: qspos search {args.config}" + (f" --out {args.out}" if args.out else ""))
    return 0


def _pct(v: float | None) -> str | None:
    return None if v is None else f"{100 * v:.2f}%"

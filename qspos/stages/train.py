"""Supernet training (``qspos train``): one uniformly sampled single path per step (or, with
``train.distill: inplace``, the sandwich rule's paths: ``runtime.sandwich``).

Every rank samples the same path from a shared seed; with ``train.sampling: budget`` the path is
uniform among the archs inside ``train.sampling_budget`` (the paper's constraint-aware variant;
the entry has the form of a ``search.budgets`` entry, e.g. ``{bitops: {min: "uniform 2,2",
max: "uniform 3,3"}}``). Only the used part of each parameter is updated in a step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from qspos.core.calibrate import init_act_thresholds
from qspos.core.supernet import Supernet
from qspos.errors import QsposError
from qspos.runtime.build import build_supernet, load_float_weights, quant_backend
from qspos.runtime.config import Config
from qspos.runtime.data import load_splits, make_loader, sample_subset
from qspos.runtime.distributed import Dist, init_distributed, pick_device
from qspos.runtime.evaluate import search_evaluator
from qspos.runtime.optim import ActiveParts
from qspos.runtime.progress import console
from qspos.runtime.rundir import SUPERNET_SECTIONS, RunDir, data_identity, fingerprint, holds_run_dir
from qspos.runtime.sampler import PathSampler, make_sampler
from qspos.runtime.sandwich import Sandwich
from qspos.runtime.task import NO_TASK, Task
from qspos.runtime.teacher import Teacher, load_teacher
from qspos.runtime.train_state import check_finished, claim_checkpoint, training_recipe
from qspos.runtime.trainer import FitResult, Objective, fit
from qspos.stages.budgets import search_budgets


@dataclass
class TrainResult:
    fit: FitResult  # steps, epochs, training loss/top-1, img/s, time, checkpoint path
    val_top1_max: float | None  # held-out val top-1 of the largest path after BN recalibration
    val_top1_min: float | None  # ... and of the smallest path (None without a val split)
    supernet: Supernet  # the trained supernet (on the main rank, BN recalibrated for the smallest path)


@holds_run_dir
def train_supernet(cfg: Config, run_dir: str | Path | RunDir | None = None, resume: bool = False, *,
                   task: Task = NO_TASK) -> TrainResult:
    """Train the supernet of ``cfg`` (``task``: the caller's objects) into ``run_dir/supernet.pt``
    (default ``cfg.run_dir``).

    Works under torchrun (DDP). Ends with the val top-1 of the largest and smallest path.
    ``config.yaml`` is written once the data, the sampling budget and any checkpoint to resume
    are accepted.
    """
    run = RunDir.of(cfg, run_dir)
    path = claim_checkpoint(run.supernet, resume)
    device = pick_device(cfg.train.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist = init_distributed(device)
    torch.manual_seed(cfg.seed)
    supernet = build_supernet(cfg, device, task.model).to(device)
    backend = quant_backend(cfg, device, compiled=cfg.train.compile)
    supernet.set_quant_backend(backend)
    supernet.set_masked(cfg.train.compile)  # one graph for every path under torch.compile
    if dist.main:
        for note in supernet.notes:
            console.print(f"model: {note}")
        how = f"auto for {device.type}" if cfg.quant.backend == "auto" else "quant.backend"
        step = "; torch.compile, max width with channel masks" if cfg.train.compile else ""
        console.print(f"quant backend: {backend} ({how}){step}")
    if cfg.search.budgets:  # a budget no arch can meet is refused now, not after hours of training
        search_budgets(cfg, supernet)
    sampler = make_sampler(cfg, supernet)
    splits = load_splits(cfg.data, cfg.model, task)
    teacher = _teacher(cfg, run, device, task)
    if not path.exists() and cfg.train.init == "teacher":  # thresholds then start from the teacher's statistics
        load_float_weights(supernet, teacher.model.state_dict(), teacher.source)
        if dist.main:
            console.print(f"supernet: starts from the float teacher, {teacher.source}")
    if not path.exists() and cfg.train.threshold_init_batches > 0:
        n = cfg.train.threshold_init_batches * cfg.data.batch_size
        init_act_thresholds(supernet, make_loader(sample_subset(splits.calib, n, cfg.data.split_seed),
                                                  cfg.data.batch_size, shuffle=False), device)
    before_step, objective = _step(cfg, supernet, sampler, teacher, task, dist)
    d = cfg.data
    metrics = run.metrics_log(cfg, "train", enabled=dist.main)
    result = fit(
        supernet, splits.train, cfg.train,
        batch_size=d.batch_size, seed=cfg.seed, checkpoint=path,
        fingerprint=fingerprint(cfg, *SUPERNET_SECTIONS), resume=resume, recipe=_recipe(cfg, teacher),
        objective=objective, before_step=before_step, objects={"sampler": sampler}, metrics=metrics,
        dist=dist, device=device, workers=d.workers, desc="supernet",
        on_ready=(lambda: run.record_config(cfg)) if dist.main else None, progress_interval_s=cfg.log.interval_s,
        compile_model=cfg.train.compile,
    )
    if cfg.train.compile:  # evaluation runs eagerly: the sliced (cheaper) compute, eager kernels
        supernet.set_masked(False)
        supernet.set_quant_backend(quant_backend(cfg, device))
    top_max = top_min = None
    if dist.main and len(splits.val):
        evaluator = search_evaluator(cfg, supernet, splits, device, score=task.score)
        smallest, largest = supernet.space.extremes()
        top_max, top_min = evaluator.evaluate(largest), evaluator.evaluate(smallest)
        metrics.write(step=result.steps, val_top1_max=round(top_max, 5), val_top1_min=round(top_min, 5))
    dist.barrier()
    return TrainResult(result, top_max, top_min, supernet)


def _step(cfg: Config, supernet: Supernet, sampler: PathSampler, teacher: Teacher | None, task: Task,
          dist: Dist) -> tuple[Callable[[int], ActiveParts], Objective | Sandwich]:
    """What each training step activates and minimises: one sampled path (learning from the
    labels, or from the teacher), or the sandwich rule's paths (``train.distill: inplace``)."""
    t = cfg.train
    if t.distill == "inplace":
        if task.loss is not None:
            raise QsposError("train.distill: inplace learns from the largest path's logits, which a caller's own "
                             "loss does not give: set train.distill to none")
        if dist.enabled:
            raise QsposError("train.distill: inplace trains several paths per step, which DDP does not allow: "
                             "run it in one process")
        sandwich = Sandwich(supernet, sampler, t.inplace_paths, t.label_smoothing, t.distill_temperature,
                            t.distill_weight)
        return sandwich.before_step, sandwich

    def before_step(step: int) -> ActiveParts:
        supernet.set_arch(sampler())
        return supernet.active_slices()

    return before_step, Objective(t.label_smoothing, teacher if t.distill == "teacher" else None, task.loss)


def check_trained(cfg: Config, run_dir: str | Path | RunDir | None = None, task: Task = NO_TASK) -> None:
    """Refuse to skip training on a finished ``supernet.pt`` that another model, space or
    training recipe made (what ``qspos run --resume`` checks before it reuses one)."""
    run = RunDir.of(cfg, run_dir)
    n = len(load_splits(cfg.data, cfg.model, task).train)
    recipe = training_recipe(cfg.train, cfg.data.batch_size, cfg.seed, n, _recipe(cfg, _teacher(cfg, run, "cpu", task)))
    check_finished(run.supernet, fingerprint(cfg, *SUPERNET_SECTIONS), recipe)


def _recipe(cfg: Config, teacher: Teacher | None) -> dict[str, object]:
    """What a supernet's training depends on beyond the optimiser settings: the data, the path
    sampling, and the teacher it starts from or learns from (by the digest of its weights)."""
    t = cfg.train
    return {**data_identity(cfg), "sampling": [t.sampling, t.sampling_budget, t.threshold_init_batches],
            "teacher": teacher.digest if teacher is not None else None}


def _teacher(cfg: Config, run: RunDir, device: torch.device | str, task: Task) -> Teacher | None:
    """The float teacher, when the supernet starts from it or learns from it."""
    if cfg.train.init == "teacher" or cfg.train.distill == "teacher":
        return load_teacher(cfg, run, cfg.train, device, task)
    return None

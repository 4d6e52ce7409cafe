"""Fine-tuning (``qspos finetune``) and evaluation (``qspos eval``) of standalone quantized nets.

A chosen arch becomes a plain Brevitas network (``Supernet.extract``: fixed bits and channels,
no supernet machinery left). It starts from the supernet's weights and learned thresholds (what
the one-shot search scored), from scratch, or from a float model of the same backbone; BatchNorm
is recalibrated on training images (and, with ``finetune.fold_bn: start``, folded into the convs:
the deployment net of :mod:`qspos.core.fold` is what trains); then quantization-aware training runs
in the shared loop
(``trainer.fit``: progress, checkpoint, resume, torchrun) and the net is measured on the held-out
val split and on the test split, which only this stage and ``qspos eval`` ever see.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from qspos.core.arch import Arch
from qspos.core.calibrate import init_act_thresholds
from qspos.core.cost import CostModel
from qspos.core.fold import deployment_net, output_quantized_convs
from qspos.core.space import Space
from qspos.errors import QsposError
from qspos.results.search_results import SearchResult
from qspos.runtime.build import (
    build_supernet,
    load_finetuned,
    load_float_weights,
    load_supernet,
    quant_backend,
)
from qspos.runtime.checkpoint import atomic_save, load_state_dict_file
from qspos.runtime.config import Config
from qspos.runtime.data import DataSplits, calibration_loader, load_splits
from qspos.runtime.distributed import Dist, init_distributed, pick_device
from qspos.runtime.evaluate import recalibrate_bn, split_accuracy
from qspos.runtime.files import load_arch, save_arch, write_json
from qspos.runtime.progress import ScoreFormat, console, table
from qspos.runtime.rundir import SUPERNET_SECTIONS, NetDir, RunDir, data_identity, fingerprint, holds_run_dir
from qspos.runtime.task import NO_TASK, Task
from qspos.runtime.teacher import Teacher, teacher_of
from qspos.runtime.train_state import check_finished, training_recipe
from qspos.runtime.trainer import Objective, fit
from qspos.stages.evaluate import Measured, result_record
from quant_kernels.brevitas_impl import set_fused_kernels


@dataclass(frozen=True)
class Target:
    """One net to fine-tune: its directory under ``finetune/`` and its arch."""

    name: str
    arch: Arch
    search_val_top1: float | None = None  # the supernet's val top-1 for it, as the search measured


@dataclass
class FinetuneResult(Measured):
    """What ``result.json`` holds for one fine-tuned net (accuracies are fractions)."""

    name: str
    arch: Arch
    dir: Path
    init: str
    search_val_top1: float | None
    val_top1_before: float | None  # after BN recalibration, before any training step
    val_top1: float | None
    val_top5: float | None
    searched_bitops: int
    steps: int
    train_seconds: float
    val_images: int | None = None  # the sizes of the splits the accuracies were measured on
    test_images: int | None = None
    # the standalone Brevitas module, as finetune() returns it (not part of result.json)
    model: ClassVar[nn.Module | None] = None

    def to_dict(self) -> dict[str, Any]:
        return result_record(self, dir=str(self.dir))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FinetuneResult:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw.update(arch=Arch.from_dict(d["arch"]), dir=Path(d["dir"]))
        return cls(**kw)


# ---------------------------------------------------------------------------- what to fine-tune


def finetune_targets(
    cfg: Config, run_dir: str | Path | RunDir, space: Space, arch: Arch | None = None, pick: int | None = None
) -> list[Target]:
    """The nets to fine-tune: ``arch``; else the ``pick``-th best arch (0: the best) of every
    budget in the search results, plus each budget's uniform arch with ``finetune.baselines``."""
    run = RunDir.of(cfg, run_dir)
    if arch is not None:
        return [Target(f"arch-{space.validate(arch).digest()}", arch)]
    pick = cfg.finetune.pick if pick is None else pick
    rank = pick or 0
    targets = []
    for budget in SearchResult.load(run.search_results).budgets:
        if rank >= len(budget.best):
            raise QsposError(f"pick {rank}: budget {budget.name} has {len(budget.best)} search result(s)")
        chosen = budget.best[rank]
        targets.append(Target(budget.name if rank == 0 else f"{budget.name}-{rank}", space.validate(chosen.arch),
                              chosen.val_top1))
        u = budget.uniform
        if cfg.finetune.baselines and u and u.in_domain:
            targets.append(Target(f"{budget.name}-uniform", space.uniform(u.w_bits, u.a_bits), u.val_top1))
    if not targets:
        raise QsposError(f"{run.search_results} holds no budgets")
    return targets


# ---------------------------------------------------------------------------- building the net


def init_model(cfg: Config, arch: Arch, run_dir: str | Path | RunDir, calib: Any, device: torch.device,
               given: nn.Module | None = None) -> nn.Module:
    """The standalone Brevitas net of ``arch`` (of the caller's ``given`` model, if any),
    initialised as ``finetune.init`` says, with its BatchNorm statistics recalibrated on
    ``calib`` (a loader of training images)."""
    run = RunDir.of(cfg, run_dir)
    init = cfg.finetune.init
    if init == "supernet":
        supernet = load_supernet(cfg, run.supernet, device=device, given=given)
    else:  # fresh weights (or the float model's); thresholds from them and from the data
        torch.manual_seed(cfg.seed)
        supernet = build_supernet(cfg, device, given).to(device)
        if init == "float":
            path = cfg.finetune.float_checkpoint
            load_float_weights(supernet, load_state_dict_file(path), path)
        init_act_thresholds(supernet, calib, device)
    model = supernet.extract(arch)
    if quant_backend(cfg, device) != "reference":  # same values, fewer passes: the fused tensor_quant
        set_fused_kernels(model)
    recalibrate_bn(model, calib, device)
    return model


# ---------------------------------------------------------------------------- fine-tuning


@holds_run_dir
def finetune(
    cfg: Config,
    run_dir: str | Path | RunDir | None = None,
    arch: Arch | str | Path | None = None,
    pick: int | None = None,
    resume: bool = False,
    targets: list[Target] | None = None,
    *,
    task: Task = NO_TASK,
) -> list[FinetuneResult]:
    """Fine-tune the chosen archs of a run (see :func:`finetune_targets`), or the named
    ``targets`` (e.g. a benchmark's baselines), into ``run_dir/finetune/<name>/``. With
    ``resume``, finished nets are kept and a killed one goes on from its checkpoint; without it,
    existing outputs are refused. ``task``: the caller's objects. Works under torchrun.
    ``config.yaml`` is written once the first net's training is accepted (or, when every net is
    already done, at the end)."""
    run = RunDir.of(cfg, run_dir)
    if isinstance(arch, (str, Path)):
        arch = load_arch(arch)
    reference = build_supernet(cfg, given=task.model)
    if targets is None:
        targets = finetune_targets(cfg, run, reference.space, arch, pick)
    else:
        targets = [Target(t.name, reference.space.validate(t.arch), t.search_val_top1) for t in targets]
    if not resume:
        claim_outputs(run, targets)
    device = pick_device(cfg.finetune.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist = init_distributed(device)
    splits = load_splits(cfg.data, cfg.model, task)
    costs = CostModel(reference, cfg.input_shape)
    objective = Objective(cfg.finetune.label_smoothing, teacher_of(cfg, run, cfg.finetune, device, task), task.loss)
    recorded = False

    def record() -> None:
        nonlocal recorded
        if dist.main and not recorded:
            run.record_config(cfg)
        recorded = True

    results = []
    for target in targets:
        net = run.net(target.name)
        if resume and net.done:  # kept only if it was tuned as this config says
            check_finished(net.train_checkpoint, *_identity(cfg, target, len(splits.train), objective.teacher))
        else:
            _finetune_one(cfg, target, run, splits, costs, device, dist, resume, record, objective, task)
        result = FinetuneResult.from_dict(json.loads(net.result.read_text()))
        result.model = load_finetuned(cfg, net.model, task.model)[0]
        results.append(result)
    record()
    return results


def claim_outputs(run: RunDir, targets: list[Target]) -> None:
    """Refuse to start over a net that was (or is being) fine-tuned: nothing is overwritten."""
    for t in targets:
        if run.net(t.name).started:
            raise QsposError(f"{run.net(t.name).path} already holds a fine-tuned net: pass --resume to continue, "
                             "or choose another --out")


def _finetune_one(cfg: Config, target: Target, run: RunDir, splits: DataSplits, costs: CostModel,
                  device: torch.device, dist: Dist, resume: bool, on_ready: Any, objective: Objective,
                  task: Task) -> None:
    net = run.net(target.name)
    d, f = cfg.data, cfg.finetune
    calib = calibration_loader(splits.calib, cfg.search.calib_images, d.eval_batch_size, d.split_seed)
    model = init_model(cfg, target.arch, run, calib, device, task.model)
    if f.fold_bn == "start":  # output quantizers calibrated on the BN recalibration images
        model = deployment_net(model, torch.cat([x for x, _ in calib]).to(device))
    val_before = split_accuracy(model, splits.val, d.eval_batch_size, d.workers, device, task.score)[0]
    if dist.main:
        console.print(f"finetune {target.name}: arch {target.arch.digest()}, init {f.init}, "
                      f"val {cfg.score} before {ScoreFormat(cfg.score).text(val_before)}")
    supernet_fp = fingerprint(cfg, *SUPERNET_SECTIONS)
    res = fit(
        model, splits.train, f,
        batch_size=d.batch_size, seed=cfg.seed, checkpoint=net.train_checkpoint,
        fingerprint=_identity(cfg, target, len(splits.train), objective.teacher)[0], resume=resume,
        recipe=_recipe(cfg, objective.teacher), objective=objective,
        metrics=run.metrics_log(cfg, f"finetune/{target.name}", enabled=dist.main),
        dist=dist, device=device, workers=d.workers, desc=f"finetune {target.name}",
        on_ready=on_ready, progress_interval_s=cfg.log.interval_s,
    )
    if dist.main:
        val1, val5 = split_accuracy(model, splits.val, d.eval_batch_size, d.workers, device, task.score)
        test1, test5 = split_accuracy(model, splits.test, d.eval_batch_size, d.workers, device, task.score)
        cost = costs.metrics(target.arch)
        result = FinetuneResult(
            name=target.name, arch=target.arch, dir=net.path, init=f.init, search_val_top1=target.search_val_top1,
            val_top1_before=val_before, val_top1=val1, val_top5=val5, test_top1=test1, test_top5=test5,
            steps=res.steps, train_seconds=round(res.seconds, 1), val_images=len(splits.val),
            test_images=len(splits.test), **cost,
        )
        save_finetuned(net, model, target, supernet_fp, f.fold_bn == "start")
        write_json(net.layers, layer_table(costs, target.arch))
        write_json(net.result, result.to_dict())
    dist.barrier()


def _recipe(cfg: Config, teacher: Teacher | None) -> dict[str, object]:
    """What a fine-tuned net depends on beyond the optimiser settings (the teacher it learns
    from, by the digest of its weights)."""
    f = cfg.finetune
    return {**data_identity(cfg), "init": [f.init, f.float_checkpoint],
            "teacher": teacher.digest if teacher is not None else None}


def _identity(cfg: Config, target: Target, dataset_size: int, teacher: Teacher | None) -> tuple[str, dict]:
    """The (fingerprint, full recipe) of ``target``'s training, as its checkpoint records them."""
    fp = f"{fingerprint(cfg, *SUPERNET_SECTIONS)}-{target.arch.digest()}"
    return fp, training_recipe(cfg.finetune, cfg.data.batch_size, cfg.seed, dataset_size, _recipe(cfg, teacher))


def save_finetuned(net: NetDir, model: nn.Module, target: Target, supernet_fp: str, folded: bool) -> None:
    """``model.pt`` (state dict, arch, fingerprint: never a pickled module; a net trained folded
    also names its output-quantized convs, which its rebuild needs) and ``arch.yaml``."""
    extra = {"deployment_outputs": output_quantized_convs(model)} if folded else {}
    atomic_save({"model": model.state_dict(), "arch": target.arch.to_dict(), "fingerprint": supernet_fp,
                 "name": target.name, "complete": True, **extra}, net.model)
    save_arch(target.arch, net.arch)


def layer_table(costs: CostModel, arch: Arch) -> dict[str, dict[str, Any]]:
    """``layers.json``: each Conv2d/Linear by the model's own module name, with the bits (32: float)
    and channels ``arch`` gives it, so other tools can apply the chosen precisions."""
    return {lc.name: {"kind": lc.kind, "w_bits": lc.w_bits, "a_bits": lc.a_bits, "in_channels": lc.in_channels,
                      "out_channels": lc.out_channels, "searched": lc.searched}
            for lc in costs.cost(arch).layers}


# ---------------------------------------------------------------------------- tables


def results_table(results: list[FinetuneResult], title: str, score: ScoreFormat) -> Any:
    """The fine-tuned nets' costs and scores (``score``: how the run's score reads)."""
    rows = [[r.name, f"{r.bitops / 1e6:.2f}", f"{r.size_bits / 8 / 1024:.1f}", score.text(r.search_val_top1),
             score.text(r.val_top1_before), score.text(r.val_top1), score.text(r.test_top1)] for r in results]
    columns = ["name", "MBitOps", "KiB", "search val", "val before", f"val {score.name}", f"test {score.name}"]
    return table(title, columns, rows)

"""The float teacher (``qspos float``): the config's backbone at width 1.0 with no quantizer,
trained from scratch with its own recipe (the ``float`` section, long enough to converge) in the
shared loop, or a user's pretrained state dict (``float.checkpoint``); then measured on val and
test, so a quantized net's accuracy can be read against the float net's.

It lives in ``RUN_DIR/float/`` (``model.pt``: its float state dict, whose keys are the supernet's
float keys: the teacher of ``train.init``/``distill: teacher``, see ``qspos.runtime.teacher``;
``train.pt``: the resumable checkpoint; ``result.json``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import nn

from qspos.core.cost import CostModel
from qspos.core.layers import FLOAT_BITS
from qspos.errors import QsposError
from qspos.runtime.build import build_supernet, float_model
from qspos.runtime.checkpoint import atomic_save, load_model_state, load_state_dict_file
from qspos.runtime.config import Config
from qspos.runtime.data import load_splits
from qspos.runtime.distributed import init_distributed, pick_device
from qspos.runtime.evaluate import split_accuracy
from qspos.runtime.files import write_json
from qspos.runtime.progress import ScoreFormat, console
from qspos.runtime.rundir import NetDir, RunDir, data_identity, holds_run_dir
from qspos.runtime.task import NO_TASK, Task
from qspos.runtime.teacher import float_fingerprint
from qspos.runtime.train_state import check_finished, training_recipe
from qspos.runtime.trainer import Objective, fit
from qspos.stages.evaluate import Measured


@dataclass
class FloatResult(Measured):
    """What ``float/result.json`` holds (accuracies are fractions)."""

    dir: str
    val_top1: float | None
    val_top5: float | None
    steps: int
    train_seconds: float
    val_images: int
    test_images: int
    source: str | None = None  # float.checkpoint when the teacher was pretrained, None when trained here

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, path: str | Path) -> FloatResult:
        return cls(**json.loads(Path(path).read_text()))


def float_cost(cfg: Config, given: nn.Module | None = None) -> dict[str, int]:
    """MACs of the base (width 1.0) network (the caller's ``given`` one, if any) and its BitOps
    and weight bits with 32-bit operands."""
    supernet = build_supernet(cfg, given=given)
    w, a = supernet.space.points[0].pairs[0]  # any bits: MACs and params do not depend on them
    layers = CostModel(supernet, cfg.input_shape).cost(supernet.space.uniform(w, a)).layers
    macs = sum(lc.macs for lc in layers)
    return {"macs": macs, "bitops": macs * FLOAT_BITS * FLOAT_BITS,
            "size_bits": sum(lc.params for lc in layers) * FLOAT_BITS}


@holds_run_dir
def train_float(cfg: Config, run_dir: str | Path | RunDir | None = None, resume: bool = False, *,
                task: Task = NO_TASK) -> FloatResult:
    """Train and measure the float teacher (``task``: the caller's objects) into ``run_dir/float/``
    (or, with ``float.checkpoint``, measure that pretrained net and keep a copy there). With
    ``resume`` a finished one is kept (if made as this config says) and a killed training
    continues from ``train.pt``."""
    run = RunDir.of(cfg, run_dir)
    net: NetDir = run.float_net
    splits = load_splits(cfg.data, cfg.model, task)
    fp, d, source = float_fingerprint(cfg), cfg.data, cfg.float.checkpoint
    if resume and net.done:  # kept only if it was made as this config says
        kept = FloatResult.load(net.result)
        if kept.source != source:
            raise QsposError(f"{net.path} holds the float net of {kept.source or 'a training'}, not of "
                             f"{source or 'a training'}: choose another --out")
        if source is None:
            check_finished(net.train_checkpoint, fp,
                           training_recipe(cfg.float, d.batch_size, cfg.seed, len(splits.train), data_identity(cfg)))
        return kept
    if not resume and net.started:
        raise QsposError(f"{net.path} already holds a float net: pass --resume to keep it, or choose another --out")
    device = pick_device(cfg.float.device)
    dist = init_distributed(device)
    model = float_model(cfg, task.model)
    if source is None:
        res = fit(
            model, splits.train, cfg.float,
            batch_size=d.batch_size, seed=cfg.seed, checkpoint=net.train_checkpoint, fingerprint=fp,
            resume=resume, recipe=data_identity(cfg),
            objective=Objective(cfg.float.label_smoothing, loss=task.loss),
            metrics=run.metrics_log(cfg, "float", enabled=dist.main), dist=dist, device=device,
            workers=d.workers, desc="float", progress_interval_s=cfg.log.interval_s,
            on_ready=(lambda: run.record_config(cfg)) if dist.main else None,
        )
        steps, seconds = res.steps, round(res.seconds, 1)
    else:  # a pretrained teacher: measured as it is
        load_model_state(model, load_state_dict_file(source), source)
        model.to(device)
        steps, seconds = 0, 0.0
        if dist.main:
            run.record_config(cfg)
    if dist.main:
        val1, val5 = split_accuracy(model, splits.val, d.eval_batch_size, d.workers, device, task.score)
        test1, test5 = split_accuracy(model, splits.test, d.eval_batch_size, d.workers, device, task.score)
        result = FloatResult(str(net.path), val1, val5, test_top1=test1, test_top5=test5, steps=steps,
                             train_seconds=seconds, val_images=len(splits.val), test_images=len(splits.test),
                             source=source, **float_cost(cfg, task.model))
        atomic_save({"model": model.state_dict(), "fingerprint": fp, "complete": True}, net.model)
        write_json(net.result, result.to_dict())
        console.print(f"float: test {cfg.score} {ScoreFormat(cfg.score).text(test1)}")
    dist.barrier()
    return FloatResult.load(net.result)

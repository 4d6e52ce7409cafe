"""The float baseline: the config's backbone at width 1.0 with no quantizer, trained from scratch
with the fine-tuning recipe (``finetune`` section) in the shared loop, then measured on val and
test, so a quantized net's accuracy can be read against the float net's.

It lives in ``RUN_DIR/float/`` (``model.pt``: its float state dict, whose keys are the supernet's
float keys, so ``finetune.init: float`` with ``finetune.float_checkpoint`` pointing at it starts
a quantized net from it; ``train.pt``: the resumable checkpoint; ``result.json``).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qspos.core.cost import CostModel
from qspos.models import build_model
from qspos.runtime.build import build_supernet
from qspos.runtime.checkpoint import atomic_save
from qspos.runtime.config import Config
from qspos.runtime.data import load_splits
from qspos.runtime.distributed import init_distributed, pick_device
from qspos.runtime.evaluate import split_accuracy
from qspos.runtime.files import write_json
from qspos.runtime.progress import ScoreFormat, console
from qspos.runtime.rundir import NetDir, RunDir, data_identity, fingerprint, holds_run_dir
from qspos.runtime.task import current
from qspos.runtime.trainer import check_finished, fit, training_recipe

FLOAT_BITS = 32  # an unquantized operand counts 32 bits in BitOps and size


@dataclass
class FloatResult:
    """What ``float/result.json`` holds (accuracies are fractions)."""

    dir: str
    val_top1: float | None
    val_top5: float | None
    test_top1: float
    test_top5: float
    macs: int
    bitops: int
    size_bits: int
    steps: int
    train_seconds: float
    val_images: int
    test_images: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, path: str | Path) -> FloatResult:
        return cls(**json.loads(Path(path).read_text()))


def float_model(cfg: Config) -> nn.Module:
    """The config's backbone (or the running task's model) as a plain float network, fresh
    weights drawn from ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    given = current().model
    if given is not None:
        return copy.deepcopy(given)
    args = {k: v for k, v in cfg.model.args.items() if k != "weights"}  # trained from scratch
    return build_model(cfg.model.name, cfg.model.num_classes, cfg.model.in_channels, args)[0]


def float_cost(cfg: Config) -> dict[str, int]:
    """MACs of the base (width 1.0) network and its BitOps and weight bits with 32-bit operands."""
    supernet = build_supernet(cfg)
    w, a = supernet.space.points[0].pairs[0]  # any bits: MACs and params do not depend on them
    layers = CostModel(supernet, cfg.input_shape).cost(supernet.space.uniform(w, a)).layers
    macs = sum(lc.macs for lc in layers)
    return {"macs": macs, "bitops": macs * FLOAT_BITS * FLOAT_BITS,
            "size_bits": sum(lc.params for lc in layers) * FLOAT_BITS}


@holds_run_dir
def train_float(cfg: Config, run_dir: str | Path | RunDir | None = None, resume: bool = False) -> FloatResult:
    """Train and measure the float baseline into ``run_dir/float/``. With ``resume`` a finished
    one is kept (if trained as this config says) and a killed one continues from ``train.pt``."""
    run = RunDir.of(cfg, run_dir)
    net: NetDir = run.float_net
    splits = load_splits(cfg.data, cfg.model)
    fp, d = f"{fingerprint(cfg, 'model')}-float", cfg.data
    if resume and net.done:  # kept only if it was trained as this config says
        check_finished(net.train_checkpoint, fp,
                       training_recipe(cfg.finetune, d.batch_size, cfg.seed, len(splits.train), data_identity(cfg)))
        return FloatResult.load(net.result)
    device = pick_device(cfg.finetune.device)
    dist = init_distributed(device)
    model = float_model(cfg)
    res = fit(
        model, splits.train, cfg.finetune,
        batch_size=d.batch_size, seed=cfg.seed, checkpoint=net.train_checkpoint, fingerprint=fp,
        resume=resume, recipe=data_identity(cfg),
        metrics=run.metrics_log(cfg, "float", enabled=dist.main), dist=dist, device=device,
        workers=d.workers, desc="float", progress_interval_s=cfg.log.interval_s,
    )
    if dist.main:
        val1, val5 = split_accuracy(model, splits.val, d.eval_batch_size, d.workers, device) if len(splits.val) \
            else (None, None)
        test1, test5 = split_accuracy(model, splits.test, d.eval_batch_size, d.workers, device)
        result = FloatResult(str(net.path), val1, val5, test1, test5, steps=res.steps,
                             train_seconds=round(res.seconds, 1), val_images=len(splits.val),
                             test_images=len(splits.test), **float_cost(cfg))
        atomic_save({"model": model.state_dict(), "fingerprint": fp, "complete": True}, net.model)
        write_json(net.result, result.to_dict())
        console.print(f"float: test {cfg.score} {ScoreFormat(cfg.score).text(test1)}")
    dist.barrier()
    return FloatResult.load(net.result)

"""What a training's trajectory lives in, and the checkpoint that holds it.

A resumable training checkpoint is :meth:`TrainState.state_dict` plus the RNG of every process,
the caller's identity of the model (``fingerprint``), the recipe it was trained with and whether
it finished. Its keys are the names below, read and written nowhere else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from qspos.errors import QsposError
from qspos.runtime.checkpoint import load_checkpoint, load_model_state
from qspos.runtime.config import LOOP_SETTINGS, OptimConfig
from qspos.runtime.rundir import IMPLIED

MODEL = "model"
OPTIMIZER = "optimizer"
SCHEDULER = "scheduler"
SCALER = "scaler"
OBJECTS = "state"  # the caller's objects, e.g. the path sampler
STEP = "step"
SUMMARY = "summary"  # loss and top-1 of the last log interval
RNG = "rng"  # one entry per process
FINGERPRINT = "fingerprint"
RECIPE = "recipe"
COMPLETE = "complete"
TRAIN_STATE_KEYS = (FINGERPRINT, RECIPE, MODEL, OPTIMIZER, SCHEDULER, SCALER, RNG, STEP, OBJECTS, SUMMARY)


class Stateful(Protocol):
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class TrainState:
    """Model, optimiser, scheduler, AMP scaler, the caller's objects and the step: everything
    an update changes, so that saving and loading it resumes a training to the bit. The RNG is
    per process and the trainer keeps it beside this state."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    objects: dict[str, Stateful] = field(default_factory=dict)
    step: int = 0  # updates done, over every session of the training
    summary: dict[str, float] = field(default_factory=lambda: {"loss": math.nan, "top1": math.nan})

    def state_dict(self) -> dict[str, Any]:
        return {MODEL: self.model.state_dict(), OPTIMIZER: self.optimizer.state_dict(),
                SCHEDULER: self.scheduler.state_dict(), SCALER: self.scaler.state_dict(), STEP: self.step,
                OBJECTS: {name: obj.state_dict() for name, obj in self.objects.items()}, SUMMARY: self.summary}

    def load_state_dict(self, state: Mapping[str, Any], source: Path) -> None:
        """Load a checkpoint's training state; one that does not fit this run is a one-line error
        naming ``source``. The model keeps its parameter objects, which the optimiser holds."""
        load_model_state(self.model, state[MODEL], source)
        try:
            self.optimizer.load_state_dict(state[OPTIMIZER])
            self.scheduler.load_state_dict(state[SCHEDULER])
            self.scaler.load_state_dict(state[SCALER])
            for name, obj in self.objects.items():
                obj.load_state_dict(state[OBJECTS][name])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
            raise QsposError(f"{source} does not fit this run: {(str(e).splitlines() or [repr(e)])[0]}") from None
        self.step, self.summary = state[STEP], state[SUMMARY]


def training_recipe(optim: OptimConfig, batch_size: int, seed: int, dataset_size: int,
                    extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything a training trajectory depends on: a resume must match it exactly. The loop
    settings (``LoopSettings``: logging, checkpointing, device) are not part of it, nor a setting
    added later at the value that behaved as before (``rundir.IMPLIED``)."""
    implied = {key: value for (_, key), value in IMPLIED.items()}
    return {
        **{f.name: getattr(optim, f.name) for f in fields(optim)
           if f.name not in LOOP_SETTINGS and not (f.name in implied and getattr(optim, f.name) == implied[f.name])},
        "batch_size": batch_size, "seed": seed, "dataset_size": dataset_size, **(extra or {}),
    }


def claim_checkpoint(path: Path, resume: bool) -> Path:
    """``path``, after refusing to start a run over a checkpoint that exists without ``resume``."""
    if path.exists() and not resume:
        raise QsposError(f"{path} already exists: pass --resume to continue it, or choose another --out")
    return path


def check_finished(path: Path, fingerprint: str, recipe: dict[str, Any]) -> None:
    """Refuse to reuse a finished training (its checkpoint at ``path``) for another model or
    recipe: a resumed run must not keep results that its config no longer describes."""
    check_resumable(load_checkpoint(path, require=TRAIN_STATE_KEYS), path, fingerprint, recipe)


def check_resumable(ckpt: Mapping[str, Any], path: Path, fingerprint: str, recipe: Mapping[str, Any]) -> None:
    """Refuse a checkpoint of another model (``fingerprint``) or recipe, naming the first key that differs."""
    if ckpt.get(FINGERPRINT) != fingerprint:
        raise QsposError(f"{path} was written for another model/config (fingerprint "
                         f"{ckpt.get(FINGERPRINT)} != {fingerprint}); choose another --out")
    old = ckpt[RECIPE]
    for key in sorted(set(old) | set(recipe)):
        if old.get(key) != recipe.get(key):
            raise QsposError(f"cannot resume {path}: {key} was {old.get(key)!r}, now {recipe.get(key)!r}")

"""SGD that updates only the part of each parameter a step used, and its learning-rate schedule.

In a single-path step the supernet uses one row of each threshold table and the first k channels
of each sliced weight/BN; the rest has zero gradient, but plain SGD would still move it through
momentum and weight decay. :class:`MaskedSGD` leaves it exactly unchanged instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from qspos.runtime.config import OptimConfig

# Basic (view-producing) index of the used part of a parameter, e.g. (row, slice(0, k)).
Index = tuple[int | slice, ...]
ActiveParts = Mapping[nn.Parameter, Index | None]


class MaskedSGD(torch.optim.Optimizer):
    """``torch.optim.SGD`` (momentum, Nesterov, coupled weight decay, no dampening), restricted
    per step to the given part of each parameter; with no parts it matches ``torch.optim.SGD``."""

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        super().__init__(params, {"lr": lr, "momentum": momentum, "nesterov": nesterov,
                                  "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, active: ActiveParts | None = None) -> None:  # type: ignore[override]
        """One update; ``active[p]`` is the index of the part of ``p`` to update (others: all)."""
        active = active or {}
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                idx = active.get(p)
                idx = idx if idx is not None else (...,)
                w, d = p[idx], p.grad[idx]
                if wd:
                    d = d.add(w, alpha=wd)
                if mom:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    buf = state["momentum_buffer"][idx]
                    buf.mul_(mom).add_(d)
                    d = d.add(buf, alpha=mom) if group["nesterov"] else buf
                w.add_(d, alpha=-lr)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv/linear weights only: not on thresholds, BN parameters or biases."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if name.endswith("weight") and p.dim() > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base lr for update ``step`` (0-based): linear warm-up, then decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def make_optimizer(
    model: nn.Module, cfg: OptimConfig, total_steps: int, warmup_steps: int
) -> tuple[MaskedSGD, torch.optim.lr_scheduler.LambdaLR]:
    """The optimiser and scheduler an :class:`OptimConfig` describes, for ``total_steps`` updates."""
    opt = MaskedSGD(param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum,
                    nesterov=cfg.nesterov and cfg.momentum > 0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total_steps, warmup_steps, cfg.schedule)
    )
    return opt, sched

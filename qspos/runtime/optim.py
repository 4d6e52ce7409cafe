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

# Basic (view-producing) index of the used part of a parameter, e.g. (row, slice(0, k)); or a
# mask of the elements several paths used (see :func:`union_parts`); None: all of it.
Index = tuple[int | slice, ...]
ActiveParts = Mapping[nn.Parameter, Index | torch.Tensor | None]


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
        """One update; ``active[p]`` is the index (or mask) of the part of ``p`` to update (others: all)."""
        active = active or {}
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                idx = active.get(p)
                if isinstance(idx, torch.Tensor):
                    self._masked_step(p, idx, group)
                    continue
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

    def _masked_step(self, p: nn.Parameter, mask: torch.Tensor, group: dict[str, Any]) -> None:
        """The same update on the elements ``mask`` selects; the others, momentum included, stay."""
        lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
        d = p.grad.add(p, alpha=wd) if wd else p.grad
        if mom:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buf = state["momentum_buffer"]
            new_buf = buf.mul(mom).add_(d)
            d = d.add(new_buf, alpha=mom) if group["nesterov"] else new_buf
            buf.copy_(torch.where(mask, new_buf, buf))
        p.copy_(torch.where(mask, p.add(d, alpha=-lr), p))


def union_parts(parts: Iterable[ActiveParts]) -> dict[nn.Parameter, Index | torch.Tensor | None]:
    """The parts that several paths used, for one update after all of them (BigNAS's sandwich
    rule): their common index where they agree, else a mask of every element any of them used.
    A parameter that some path uses whole (or does not list) is updated whole."""
    parts = list(parts)
    seen: dict[nn.Parameter, list] = {}
    for part in parts:
        for p, idx in part.items():
            seen.setdefault(p, []).append(idx)
    union: dict[nn.Parameter, Index | torch.Tensor | None] = {}
    for p, idxs in seen.items():
        if len(idxs) < len(parts) or any(i is None for i in idxs):
            union[p] = None
            continue
        if all(i == idxs[0] for i in idxs):
            union[p] = idxs[0]
            continue
        mask = torch.zeros(p.shape, dtype=torch.bool, device=p.device)
        for i in idxs:
            mask[i] = True
        union[p] = mask
    return union


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

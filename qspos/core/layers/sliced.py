"""Sliced operations: the channel rounding rule of width multipliers, and the BatchNorm that
normalises the first k of its channels (Once-for-All's dynamic BatchNorm, statistics shared)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def channels(base: int, multiplier: float | None) -> int:
    """Active channel count for a width multiplier on ``base`` channels (the one rounding rule)."""
    if multiplier is None:
        return base
    return max(1, int(round(base * multiplier)))


def check_channels(n: int, n_max: int, what: str) -> int:
    """``n``, after refusing a channel count outside 1..``n_max``."""
    if not 1 <= n <= n_max:
        raise ValueError(f"{what} channels {n} outside 1..{n_max}")
    return n


class SlicedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm at max width that normalises the first k channels (statistics shared).

    Masked (see ``SearchableLayer.masked``), it normalises every channel, zeroes the inactive
    ones and keeps their running statistics unchanged, as the sliced form does. The active count
    lives in the ``num_active`` buffer and its Python mirror ``n_active`` (as in ``SearchableLayer``).
    """

    masked = False

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1):
        super().__init__(num_features, eps, momentum)
        self.register_buffer("num_active", torch.tensor(num_features))
        self.n_active = num_features

    def set_channels(self, n: int) -> None:
        self.n_active = check_channels(n, self.num_features, "BatchNorm")
        self.num_active.fill_(self.n_active)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.n_active = int(self.num_active)

    def active_slices(self) -> dict[nn.Parameter, tuple]:
        """The active channels of weight and bias (see ``SearchableLayer.active_slices``)."""
        c = (slice(self.n_active),)
        return {self.weight: c, self.bias: c}

    def forward(self, x: Tensor) -> Tensor:
        if self.masked:
            return self._masked_forward(x)
        c = x.shape[1]
        return F.batch_norm(
            x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
            self.training or not self.track_running_stats, self._update_factor(), self.eps,
        )

    def _update_factor(self) -> float:
        """The running statistics' update factor of this forward (0: no update), as
        ``nn.BatchNorm2d`` computes it; counts the batch. ``momentum=None`` (a cumulative average)
        reads the batch count back, as ``nn.BatchNorm2d`` does."""
        if not (self.training and self.track_running_stats):
            return 0.0
        self.num_batches_tracked.add_(1)
        return 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum

    def _masked_forward(self, x: Tensor) -> Tensor:
        keep = torch.arange(self.num_features, device=x.device) < self.num_active
        updating = self.training and self.track_running_stats
        factor = self._update_factor()
        # batch_norm updates copies; only the active channels' statistics are taken back
        mean, var = self.running_mean.clone(), self.running_var.clone()
        y = F.batch_norm(x, mean, var, self.weight, self.bias, self.training or not self.track_running_stats,
                         factor, self.eps)
        if updating:
            with torch.no_grad():
                self.running_mean.copy_(torch.where(keep, mean, self.running_mean))
                self.running_var.copy_(torch.where(keep, var, self.running_var))
        return y * keep.view(1, -1, 1, 1).to(y.dtype)

    @torch.no_grad()
    def to_static(self) -> nn.BatchNorm2d:
        c = self.n_active
        bn = nn.BatchNorm2d(c, self.eps, self.momentum)
        bn.weight.copy_(self.weight[:c])
        bn.bias.copy_(self.bias[:c])
        bn.running_mean.copy_(self.running_mean[:c])
        bn.running_var.copy_(self.running_var[:c])
        bn.num_batches_tracked.copy_(self.num_batches_tracked)
        return bn

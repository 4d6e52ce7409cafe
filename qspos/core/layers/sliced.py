"""Sliced operations: the channel rounding rule of width multipliers, and the BatchNorm that
normalises the first k of its channels (Once-for-All's dynamic BatchNorm, statistics shared),
optionally with one affine transform per bit-width of the layer it reads."""

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
    After :meth:`configure_bits` it keeps one affine transform per bit-width (``bits_index``, mirrored
    by ``bits_active``).
    """

    masked = False

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1):
        super().__init__(num_features, eps, momentum)
        self.register_buffer("num_active", torch.tensor(num_features))
        self.n_active = num_features
        self.weight_offsets: nn.Parameter | None = None
        self.bias_offsets: nn.Parameter | None = None
        self.bits_active = 0

    def configure_bits(self, n: int) -> None:
        """Keep ``n`` affine transforms, one per weight bit-width of the layer this BatchNorm reads
        (the switchable BatchNorm of Any-Precision DNNs and AdaBits): each starts as the shared one,
        ``weight`` and ``bias`` (frozen from then on: a float teacher's BatchNorm loads into them),
        and learns its own offset. The statistics stay shared: every path that qspos measures gets
        its own by recalibration (``runtime.evaluate.recalibrate_bn``)."""
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)
        self.weight_offsets = nn.Parameter(torch.zeros(n, self.num_features, device=self.weight.device))
        self.bias_offsets = nn.Parameter(torch.zeros(n, self.num_features, device=self.weight.device))
        self.register_buffer("bits_index", torch.tensor(0))

    def select_bits(self, index: int) -> None:
        """Use the affine transform of bit-width choice ``index`` (of :meth:`configure_bits`)."""
        self.bits_active = index
        self.bits_index.fill_(index)

    def active_affine(self, c: int) -> tuple[Tensor, Tensor]:
        """The weight and bias of the first ``c`` channels on the active bit-width."""
        if self.weight_offsets is None:
            return self.weight[:c], self.bias[:c]
        i = self.bits_active
        return self.weight[:c] + self.weight_offsets[i, :c], self.bias[:c] + self.bias_offsets[i, :c]

    def set_channels(self, n: int) -> None:
        self.n_active = check_channels(n, self.num_features, "BatchNorm")
        self.num_active.fill_(self.n_active)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.n_active = int(self.num_active)
        if self.weight_offsets is not None:
            self.bits_active = int(self.bits_index)

    def active_slices(self) -> dict[nn.Parameter, tuple]:
        """The active channels of weight and bias (see ``SearchableLayer.active_slices``), and of
        the active bit-width's offsets."""
        c = (slice(self.n_active),)
        if self.weight_offsets is None:
            return {self.weight: c, self.bias: c}
        row = (slice(self.bits_active, self.bits_active + 1), slice(self.n_active))
        return {self.weight_offsets: row, self.bias_offsets: row}

    def forward(self, x: Tensor) -> Tensor:
        if self.masked:
            return self._masked_forward(x)
        c = x.shape[1]
        return F.batch_norm(
            x, self.running_mean[:c], self.running_var[:c], *self.active_affine(c),
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
        y = F.batch_norm(x, mean, var, *self.active_affine(self.num_features),
                         self.training or not self.track_running_stats, factor, self.eps)
        if updating:
            with torch.no_grad():
                self.running_mean.copy_(torch.where(keep, mean, self.running_mean))
                self.running_var.copy_(torch.where(keep, var, self.running_var))
        return y * keep.view(1, -1, 1, 1).to(y.dtype)

    @torch.no_grad()
    def to_static(self) -> nn.BatchNorm2d:
        c = self.n_active
        bn = nn.BatchNorm2d(c, self.eps, self.momentum)
        weight, bias = self.active_affine(c)
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
        bn.running_mean.copy_(self.running_mean[:c])
        bn.running_var.copy_(self.running_var[:c])
        bn.num_batches_tracked.copy_(self.num_batches_tracked)
        return bn

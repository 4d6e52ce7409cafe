"""In-place distillation: BigNAS's sandwich rule for supernet training (``train.distill: inplace``).

Each step trains several paths on one batch before one update: the largest path learns from the
labels, and the smallest path plus ``n`` sampled ones learn from the largest path's logits
(detached), as the ``distill_*`` settings say. The largest and smallest paths bound every other,
so training both pulls the whole space along (Yu et al., "BigNAS", ECCV 2020). The update covers
the union of what the paths used (``optim.union_parts``); the rest stays unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qspos.core.arch import Arch
from qspos.core.supernet import Supernet
from qspos.runtime.optim import ActiveParts, union_parts
from qspos.runtime.teacher import distill_loss
from qspos.runtime.trainer import check_labels


class Sandwich:
    """The step hooks of in-place distillation: :meth:`before_step` draws the step's paths and
    returns the parts they use; calling it is the step's objective."""

    def __init__(self, supernet: Supernet, sample: Callable[[], Arch], n: int, label_smoothing: float,
                 temperature: float, weight: float):
        self.supernet, self.sample, self.n = supernet, sample, n
        self.smallest, self.largest = supernet.space.extremes()
        self.label_smoothing, self.temperature, self.weight = label_smoothing, temperature, weight
        self.paths: list[Arch] = []

    def before_step(self, step: int) -> ActiveParts:
        """The step's paths: the largest, the smallest, then ``n`` sampled ones."""
        self.paths = [self.largest, self.smallest, *(self.sample() for _ in range(self.n))]
        parts = []
        for arch in self.paths:
            self.supernet.set_arch(arch)
            parts.append(self.supernet.active_slices())
        return union_parts(parts)

    def __call__(self, net: nn.Module, x: Tensor, y: Tensor, check: bool = False) -> tuple[Tensor, Tensor]:
        """The summed loss of the step's paths, and the largest path's logits. The active path
        lives in integer buffers that ``set_arch`` overwrites, so each path's graph keeps its
        own copy of them (its saved integer tensors), for the one backward of the sum."""
        with torch.autograd.graph.saved_tensors_hooks(_own_integers, _same):
            return self._paths_loss(net, x, y, check)

    def _paths_loss(self, net: nn.Module, x: Tensor, y: Tensor, check: bool) -> tuple[Tensor, Tensor]:
        self.supernet.set_arch(self.paths[0])
        logits = net(x)
        if check:
            check_labels(logits, y)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        soft = logits.detach()
        for arch in self.paths[1:]:
            self.supernet.set_arch(arch)
            loss = loss + distill_loss(net(x), soft, y, self.temperature, self.weight, self.label_smoothing)
        return loss, logits


def _own_integers(t: Tensor) -> Tensor:
    return t if t.is_floating_point() else t.clone()


def _same(t: Tensor) -> Tensor:
    return t

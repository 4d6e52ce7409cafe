"""Accuracy of one path: BatchNorm recalibration on fixed images, then top-1/top-5 on a split.

Shared by supernet training (validation of sampled paths), the search (every candidate) and
fine-tuning. A path of a weight-sharing supernet needs its own BN statistics: the running
statistics accumulated during training mix every path and would hurt each one of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.distributed
from torch import Tensor, nn
from torch.utils.data import Dataset

from qspos.core.arch import Arch
from qspos.runtime.config import Config
from qspos.runtime.data import DataSplits, make_loader, sample_subset, subset_in_memory
from qspos.runtime.distributed import Dist
from qspos.runtime.task import Score

IN_MEMORY_BYTES = 1 << 30  # fixed image sets up to this size are held as ready batches


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Iterable, device: torch.device | str) -> None:
    """Replace every BatchNorm's running statistics by their average over ``loader``.

    Statistics are reset, then accumulated as a cumulative average (``momentum=None``) with only
    the BatchNorms in train mode, so dropout and the like stay deterministic. Every module's
    mode and every BatchNorm's momentum are restored afterwards.

    >>> supernet.set_arch(arch); qspos.recalibrate_bn(supernet, [(x, None)], "cpu")  # doctest: +SKIP
    """
    norms = _batchnorms(model)
    modes = {m: m.training for m in model.modules()}
    momenta = {bn: bn.momentum for bn in norms}
    try:
        model.eval()
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        for x, _ in loader:
            model(x.to(device, non_blocking=True))
    finally:
        for m, training in modes.items():
            m.training = training
        for bn, momentum in momenta.items():
            bn.momentum = momentum


@torch.no_grad()
def evaluate_top1(model: nn.Module, loader: Iterable, device: torch.device | str,
                  score: Score | None = None) -> tuple[float, float | None]:
    """(top-1, top-5) accuracy over ``loader`` as fractions in [0, 1], in eval mode; with the
    caller's ``score`` (``runtime.task``), (score, None).

    Top-5 is top-k with k = min(5, number of classes). The model's mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    if score is not None:
        try:
            return float(score(model, _OnDevice(loader, device))), None
        finally:
            model.train(was_training)
    correct1 = correct5 = total = 0
    try:
        for x, y in loader:
            logits = model(x.to(device, non_blocking=True))
            y = y.to(logits.device)
            c1, c5 = _correct(logits, y)
            correct1 += c1
            correct5 += c5
            total += y.numel()
    finally:
        model.train(was_training)
    if total == 0:
        return 0.0, 0.0
    return correct1 / total, correct5 / total


class _OnDevice:
    """``loader``'s (input, target) batches moved to ``device``, for a caller's score."""

    def __init__(self, loader: Iterable, device: torch.device | str):
        self.loader, self.device = loader, device

    def __iter__(self):  # noqa: ANN204
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def split_accuracy(model: nn.Module, dataset: Dataset, batch_size: int, workers: int, device: torch.device | str,
                   score: Score | None = None) -> tuple[float | None, float | None]:
    """(top-1, top-5), or the caller's (score, None), on a whole split; (None, None) when it is
    empty (``data.val_size: 0``)."""
    if len(dataset) == 0:
        return None, None
    return evaluate_top1(model, make_loader(dataset, batch_size, shuffle=False, workers=workers), device, score)


def _correct(logits: Tensor, y: Tensor) -> tuple[int, int]:
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hit = top == y.unsqueeze(1)
    return int(hit[:, 0].sum()), int(hit.any(1).sum())


def fixed_batches(dataset: Dataset, n: int | None, batch_size: int, seed: int, workers: int = 0) -> Iterable:
    """``n`` class-balanced items (all when None) of ``dataset``, drawn by
    :func:`~qspos.runtime.data.sample_subset`, as the same batches on every pass.

    Held in memory as a list of batches when small (no loader cost per candidate), otherwise
    read in order by a loader.
    """
    n = len(dataset) if n is None else min(n, len(dataset))
    if n == 0:
        return []
    item_bytes = dataset[0][0].numel() * 4
    if n * item_bytes > IN_MEMORY_BYTES:
        return make_loader(sample_subset(dataset, n, seed), batch_size, shuffle=False, workers=workers)
    x, y = subset_in_memory(dataset, n, batch_size, seed).tensors
    return list(zip(x.split(batch_size), y.split(batch_size)))


class CandidateEvaluator:
    """Validation top-1 of archs on one supernet, cached by arch digest.

    Each candidate gets its path activated, BN statistics recalibrated on the fixed ``calib``
    batches and top-1 measured on ``val``. Under torchrun, the archs of one call are dealt out
    over the ranks and the results gathered, so every rank ends with the same cache, equal to
    what one process computes.
    """

    def __init__(
        self,
        supernet: nn.Module,
        calib: Iterable,
        val: Iterable,
        device: torch.device | str,
        dist: Dist | None = None,
        cache: dict[str, float] | None = None,
        score: Score | None = None,
    ):
        self.supernet, self.calib, self.val, self.device, self.score = supernet, calib, val, device, score
        self.dist = dist or Dist()
        self.cache: dict[str, float] = {} if cache is None else cache
        self.computed = 0  # candidates this process evaluated (cache misses it was dealt)
        self.on_evaluated: Callable[[], object] | None = None  # after each of them (a progress display)

    def __call__(self, archs: Sequence[Arch]) -> list[float]:
        """Top-1 of each arch (cached ones are not evaluated again)."""
        todo = list({a.digest(): a for a in archs if a.digest() not in self.cache}.items())
        mine = []
        for d, a in todo[self.dist.rank :: self.dist.world]:
            mine.append((d, self.evaluate(a)))
            if self.on_evaluated is not None:
                self.on_evaluated()
        self.computed += len(mine)
        if self.dist.enabled:
            parts: list = [None] * self.dist.world
            torch.distributed.all_gather_object(parts, mine)
            found = dict(r for part in parts for r in part)
        else:
            found = dict(mine)
        for d, _ in todo:  # insertion order independent of the number of ranks
            self.cache[d] = found[d]
        return [self.cache[a.digest()] for a in archs]

    def evaluate(self, arch: Arch) -> float:
        """One uncached evaluation: activate the path, recalibrate BN, top-1 on ``val``."""
        self.supernet.set_arch(arch)
        recalibrate_bn(self.supernet, self.calib, self.device)
        return evaluate_top1(self.supernet, self.val, self.device, self.score)[0]


def search_evaluator(cfg: Config, supernet: nn.Module, splits: DataSplits, device: torch.device | str,
                     dist: Dist | None = None, cache: dict[str, float] | None = None,
                     score: Score | None = None) -> CandidateEvaluator:
    """The judge of archs on a supernet, as the search uses it: BN recalibrated on
    ``search.calib_images`` and scored on ``search.val_images``, both class-balanced samples
    fixed by ``data.split_seed``; ``score``: the caller's, instead of top-1."""
    d, s = cfg.data, cfg.search
    return CandidateEvaluator(
        supernet,
        fixed_batches(splits.calib, s.calib_images, d.eval_batch_size, d.split_seed, d.workers),
        fixed_batches(splits.val, s.val_images, d.eval_batch_size, d.split_seed, d.workers),
        device, dist, cache, score,
    )

"""What every format's check shares: the checked images, PyTorch's logits on them and the
comparison of a file's logits with those.

Every file written is run and checked against the PyTorch net on the first ``export.check_batch``
test images. A file matches on an image when its logits are all within ``LOGIT_RTOL`` of the
largest PyTorch logit. Not on every image: two float programs of one quantized net (even PyTorch's
own at two batch sizes, whose kernels differ in the last bits) now and then round a value lying
within ~1e-5 step of a rounding edge one code apart, and a deep net carries that code through its
later layers to the logits (DenseNet-121 W4A4 at 64x64: batch 1 against batch 64 moves the logits
of 41% of images by more than 1%). So every check measures that noise on its images: the PyTorch
net run again one image at a time, against itself batched (``torch_self_matching``). A file passes
when it matches on at least :func:`required_matching` of the images: ``MATCHING_SHARE``, lowered on
a net that varies itself; a wrong file is off on most images. What tells an exact file from a
defect code by code is the packed check: each layer's accumulators from the same input codes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from brevitas.nn import QuantConv2d, QuantLinear
from torch import Tensor, nn

from qspos.errors import QsposError
from qspos.runtime.progress import percent

LOGIT_RTOL = 0.01  # an image matches when every logit is within this share of the largest |logit|
MATCHING_SHARE = 0.95  # a file passes when it matches on this share of the checked images...
NOISE_FACTOR = 3  # ... or on PyTorch's own share (batch 1 against batched) to this power: required_matching
TOP1_Z = 3.0  # a file's test top-1 change from PyTorch's within this many standard deviations: top1_consistent


@dataclass
class Check:
    """One exported file run against the PyTorch net on the same test images (a format's own
    measures: its subclass)."""

    runtime: str  # what ran the file
    images: int  # test images compared
    max_abs_logit_diff: float
    max_abs_logit: float  # PyTorch's largest |logit| on those images: what LOGIT_RTOL is a share of
    matching: float  # share of those images whose logits match PyTorch's (LOGIT_RTOL)
    top1_agreement: float  # share of those images on which both predict the same class
    ok: bool
    # None in a summary.json written before checks measured their noise floor
    required_matching: float | None = None  # the share of images this file had to match on
    torch_self_matching: float | None = None  # PyTorch one image at a time against itself batched
    torch_self_max_abs_logit_diff: float | None = None  # ... and its largest |logit difference|

    def reasons(self) -> list[str]:
        """Why the check failed, in words; a mismatch is stated next to the PyTorch net's own
        variation, so a user sees whether the net itself varies that much (empty: no measure says)."""
        required = MATCHING_SHARE if self.required_matching is None else self.required_matching
        if self.matching >= required:
            return []
        own = ("" if self.torch_self_matching is None else
               f"; the PyTorch net itself, one image at a time, matches its batched logits on "
               f"{percent(self.torch_self_matching)} (max |logit diff| {self.torch_self_max_abs_logit_diff:.3g})")
        return [f"logits match PyTorch's on {percent(self.matching)} of {self.images} images, "
                f"{percent(required)} needed{own}"]

    def detail(self) -> str | None:
        """The format's own measure in words, for the export table (None: it has none)."""
        return None


CheckT = TypeVar("CheckT", bound=Check)


@dataclass
class Reference:
    """The net a format writes and what its file is checked against: the PyTorch net, the checked
    images (a batch at a time), its logits on them batched and one image at a time, the test
    loader over which a file's top-1 is compared (None: the run has a caller's score, and the
    checked images decide), images of the training split that a format may calibrate on, and how
    many times a format times a run of its file (0: it does not)."""

    model: nn.Module
    batches: list[Tensor]
    logits: Tensor
    rerun: Tensor | None = None
    loader: Any = None
    calib: Tensor | None = None
    timing_runs: int = 0

    @classmethod
    def of(cls, model: nn.Module, batches: list[Tensor], loader: Any = None, calib: Tensor | None = None,
           timing_runs: int = 0) -> Reference:
        """The reference of ``model`` on ``batches`` (its logits computed both ways)."""
        logits, rerun = pytorch_logits(model, batches)
        return cls(model, batches, logits, rerun, loader, calib, timing_runs)

    @property
    def sample(self) -> Tensor:
        """One checked image: what an exporter traces the net with."""
        return self.batches[0][:1]


def first_batches(loader: Any, n: int) -> list[Tensor]:
    """The loader's batches of its first ``n`` images: what every check compares on, a batch at a
    time (the data's ``eval_batch_size`` bounds the memory a check takes)."""
    batches, seen = [], 0
    for x, _ in loader:
        batches.append(x[: n - seen])
        seen += len(batches[-1])
        if seen >= n:
            break
    return batches


@torch.no_grad()
def pytorch_logits(model: nn.Module, batches: list[Tensor]) -> tuple[Tensor, Tensor]:
    """PyTorch's logits on the checked images, batched as loaded (what every file is compared
    with), and again one image at a time: the net's own noise floor, as another batch size runs
    other float kernels, whose last bits move a value on a step's edge to the next code."""
    return torch.cat([model(x) for x in batches]), torch.cat([model(x) for x in torch.cat(batches).split(1)])


def quant_layers(model: nn.Module) -> list[tuple[str, QuantConv2d | QuantLinear]]:
    """The quantized Conv2d/Linear layers of a fine-tuned net, in forward order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]


def compare(runtime: str, out: np.ndarray | Tensor, logits: Tensor, rerun: Tensor | None = None, ok: bool = True,
            kind: type[CheckT] = Check, **extra: Any) -> CheckT:
    """A ``kind`` of check of a file's logits against PyTorch's on the same images; ``rerun``:
    PyTorch's own on them one image at a time (:func:`pytorch_logits`; None: not measured, the
    file must match on ``MATCHING_SHARE``), ``ok`` the format's own criterion (if any), ``extra``
    its own measures."""
    out = torch.as_tensor(np.asarray(out), dtype=logits.dtype)
    if out.shape != logits.shape:
        raise QsposError(f"{runtime} gave logits of shape {tuple(out.shape)}, PyTorch {tuple(logits.shape)}")
    diff, scale = logit_diff(out, logits), float(logits.abs().max())
    matching = float((diff <= LOGIT_RTOL * scale).double().mean())
    agreement = float((out.argmax(1) == logits.argmax(1)).double().mean())
    own = {}
    if rerun is not None:
        own_diff = logit_diff(rerun, logits)
        own = {"torch_self_matching": float((own_diff <= LOGIT_RTOL * scale).double().mean()),
               "torch_self_max_abs_logit_diff": float(own_diff.max())}
    required = required_matching(own.get("torch_self_matching"))
    return kind(runtime, len(logits), float(diff.max()), scale, matching, agreement, ok and matching >= required,
                required_matching=required, **own, **extra)


def logit_diff(out: Tensor, logits: Tensor) -> Tensor:
    """Per image, the largest |logit difference|."""
    return (out - logits).abs().flatten(1).amax(1)


def required_matching(self_matching: float | None) -> float:
    """The share of the checked images a file must match on: ``MATCHING_SHARE``, lowered to
    ``self_matching ** NOISE_FACTOR`` where the PyTorch net matches itself on fewer
    (``self_matching``: one image at a time against batched; None: not measured).

    Why that power: an image matches when no value of it lands on the other side of a rounding
    edge, which, with flips that rare, happens with probability exp(-k * noise), ``noise`` the
    float difference between the two programs. A file whose float results differ from PyTorch's
    up to ``NOISE_FACTOR`` times as much as PyTorch's own batch sizes do then matches on
    ``self_matching ** NOISE_FACTOR`` of the images (DenseNet-121 W4A4 at 64x64 after a
    fine-tuning step: PyTorch 59.0%, its QCDQ file 48.8% = 59.0% ** 1.36, QONNX 48.4% of 64
    images, where PyTorch is at 60.9%: ** 1.46, the exact packed model 59.8%); a wrong file
    matches on next to none."""
    return MATCHING_SHARE if self_matching is None else min(MATCHING_SHARE, self_matching ** NOISE_FACTOR)


def top1_consistent(change: int, discordant: int) -> bool:
    """Is a file's test top-1, against PyTorch's on the same images, what rounding noise gives?

    ``change``: the images only the file gets right minus those only PyTorch gets right (the
    difference of the two top-1s times the images); ``discordant``: the images exactly one of them
    gets right. Both nets see the same images, so only the discordant ones tell them apart, and a
    file that differs by noise alone wins or loses each at even odds: ``change`` then has mean 0
    and standard deviation ``sqrt(discordant)`` (McNemar's test). It passes within ``TOP1_Z`` of
    those: a right file fails 3 times in 1,000, a file that costs accuracy fails once the loss
    stands out from that noise (never on up to ``TOP1_Z ** 2`` discordant images, as
    ``|change| <= discordant``), whatever the test split's size; a fixed tolerance in points
    means nothing on a few hundred images."""
    return abs(change) <= TOP1_Z * math.sqrt(discordant)


@torch.no_grad()
def top1_hits(loader: Any, *nets: Callable[[Tensor], Tensor]) -> list[Tensor]:
    """Per image of ``loader``, whether each net's top-1 class is its label (``topk``, as the
    evaluator takes it), all in one pass: the nets are compared image by image."""
    hits: list[list[Tensor]] = [[] for _ in nets]
    for x, y in loader:
        for hit, net in zip(hits, nets):
            hit.append(net(x).topk(1, dim=1).indices[:, 0] == y)
    return [torch.cat(hit) for hit in hits]


def paired_change(torch_hit: Tensor, file_hit: Tensor) -> tuple[int, int]:
    """(change, discordant) of :func:`top1_consistent` from the two nets' per-image hits."""
    gained, lost = int((file_hit & ~torch_hit).sum()), int((torch_hit & ~file_hit).sum())
    return gained - lost, gained + lost


def share(hit: Tensor) -> float:
    """The share of True in ``hit``."""
    return float(hit.double().mean())

"""What a training loop watches without a host sync per step: a non-finite loss, and the
loss and top-1 it reports."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn

from qspos.errors import QsposError
from qspos.runtime.distributed import Dist


class DivergenceWatch:
    """Watches for a non-finite loss without a host sync per step: the first such step is kept
    on the device and read at log and checkpoint time, which then stops training with a clear
    error, before a checkpoint could take in the bad weights (the last good one stays on disk)."""

    def __init__(self, desc: str, lr: float, path: Path, device: torch.device, dist: Dist):
        self.desc, self.lr, self.path, self.dist = desc, lr, path, dist
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def see(self, step: int, loss: Tensor) -> None:
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, torch.full_like(self.first_bad, step), self.first_bad)

    def check(self) -> None:
        first_bad = self.first_bad.clone()
        if self.dist.enabled:
            torch_dist.all_reduce(first_bad, torch_dist.ReduceOp.MAX)
        if int(first_bad) >= 0:
            self.fail(int(first_bad), "the loss is not finite")

    def check_weights(self, model: nn.Module, steps: int) -> None:
        bad = [n for n, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            self.fail(steps - 1, f"{len(bad)} tensors are not finite, e.g. {bad[0]}")

    def fail(self, step: int, why: str) -> None:
        """Stop; ``step`` is 0-based, the message counts steps from 1 as the progress does."""
        at = f" at step {step + 1}"
        kept = f"; {self.path} keeps the last good checkpoint" if self.path.exists() else ""
        raise DivergedError(f"{self.desc}: training diverged{at} ({why}): lower the learning rate "
                            f"(now {self.lr:g}) and start again in another --out{kept}")


class DivergedError(QsposError):
    """Training produced non-finite values; nothing non-finite was saved."""

    exit_code = 3


class StepMeter:
    """Loss and top-1 summed on the device (no sync per step), reduced over ranks at log time."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss*n, correct, n
        self.t0 = time.perf_counter()

    def add(self, loss: Tensor, logits: Tensor | None, y: Tensor) -> None:
        """One batch; without logits (a caller's loss) its top-1 is not a number."""
        n = y.shape[0]
        correct = (logits.argmax(1) == y).sum() if logits is not None else torch.tensor(math.nan, device=self.device)
        self.sums += torch.stack([loss.double() * n, correct.double(), torch.tensor(float(n), device=self.device,
                                                                                    dtype=torch.float64)])

    def flush(self, dist: Dist) -> dict[str, float]:
        sums = self.sums.clone()
        if dist.enabled:
            torch_dist.all_reduce(sums)
        loss, correct, n = sums.tolist()
        out = {"loss": round(loss / n, 5), "top1": round(correct / n, 5), "images": n,
               "seconds": time.perf_counter() - self.t0}
        self.reset()
        return out

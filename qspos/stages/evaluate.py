"""``qspos eval``: test-split accuracy and cost of a fine-tuned net, or of one supernet path.

The test split is seen only here and at the end of fine-tuning; the search never sees it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from qspos.core.arch import Arch
from qspos.core.cost import CostModel
from qspos.errors import QsposError
from qspos.runtime.build import build_supernet, finetuned_from_state, load_supernet
from qspos.runtime.checkpoint import load_checkpoint
from qspos.runtime.config import Config
from qspos.runtime.data import calibration_loader, load_splits
from qspos.runtime.distributed import pick_device
from qspos.runtime.evaluate import recalibrate_bn, split_accuracy
from qspos.runtime.files import load_arch
from qspos.runtime.task import NO_TASK, Task


class _Measured(Protocol):
    arch: Arch
    size_bits: int


def result_record(result: _Measured, **paths: str) -> dict[str, Any]:
    """A result dataclass as JSON-ready fields: the arch as a dict with its digest, the size in
    bytes too, and ``paths`` as strings."""
    d = asdict(result)  # type: ignore[call-overload]
    d.update(paths, arch=result.arch.to_dict(), digest=result.arch.digest(), size_bytes=result.size_bits / 8)
    return d


@dataclass(kw_only=True)
class Measured:
    """What every result record of a net holds: its test accuracy (fractions; top-5 is None
    under a caller's score) and its cost."""

    test_top1: float
    test_top5: float | None
    macs: int
    bitops: int
    size_bits: int


@dataclass
class EvalResult(Measured):
    """Test-split accuracy and cost of one checkpoint (+ arch)."""

    checkpoint: Path
    kind: str  # "finetune" (arch stored inside) or "supernet" (arch given, BN recalibrated)
    arch: Arch
    searched_bitops: int

    def to_dict(self) -> dict[str, Any]:
        return result_record(self, checkpoint=str(self.checkpoint))

    @property
    def json_path(self) -> Path:
        """Where ``qspos eval`` writes this result: beside the checkpoint."""
        if self.kind == "finetune":
            return self.checkpoint.with_suffix(".eval.json")
        return self.checkpoint.with_name(f"{self.checkpoint.stem}.eval-{self.arch.digest()}.json")


def evaluate_checkpoint(cfg: Config, checkpoint: str | Path, arch: Arch | str | Path | None = None, *,
                        task: Task = NO_TASK) -> EvalResult:
    """Test top-1/top-5 (or the ``task``'s score), BitOps and size of a fine-tuned net
    (``model.pt``, arch inside), or of one path of a supernet checkpoint (``arch`` given; BN
    recalibrated on training images)."""
    path = Path(checkpoint)
    if isinstance(arch, (str, Path)):
        arch = load_arch(arch)
    state = load_checkpoint(path, require=("model",))
    device = pick_device(cfg.finetune.device)
    splits = load_splits(cfg.data, cfg.model, task)
    d = cfg.data
    if "arch" in state:
        model, stored = finetuned_from_state(cfg, state, path, task.model)
        if arch is not None and arch != stored:
            raise QsposError(f"{path} holds arch {stored.digest()}, not the given {arch.digest()}")
        arch, kind = stored, "finetune"
    else:
        if arch is None:
            raise QsposError(f"{path} is not a fine-tuned net (no arch inside): give the arch "
                             "to evaluate on this supernet with --arch")
        supernet = load_supernet(cfg, path, require_complete=False, device=device, given=task.model)
        model, kind = supernet.extract(supernet.space.validate(arch)), "supernet"
        calib = calibration_loader(splits.calib, cfg.search.calib_images, d.eval_batch_size, d.split_seed)
        recalibrate_bn(model, calib, device)
    top1, top5 = split_accuracy(model.to(device), splits.test, d.eval_batch_size, d.workers, device, task.score)
    cost = CostModel(build_supernet(cfg, given=task.model), cfg.input_shape).metrics(arch)
    return EvalResult(path, kind, arch, test_top1=top1, test_top5=top5, **cost)

"""Export of a run's fine-tuned nets (``qspos export RUN_DIR``) into ``RUN_DIR/export/<name>/``.

Each net is written in every format asked for (:mod:`qspos.formats.registry`: one module per
format, each with its writer and its checker) and every file is run against the PyTorch net on the
first ``export.check_batch`` test images (:mod:`qspos.formats.check`); the checks land in
``summary.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from qspos.core.cost import CostModel
from qspos.errors import QsposError
from qspos.formats.check import Check, Reference, first_batches
from qspos.formats.format import Skipped
from qspos.formats.metadata import describe
from qspos.formats.registry import FORMATS, select
from qspos.runtime.build import build_supernet, load_finetuned
from qspos.runtime.data import load_splits, make_loader
from qspos.runtime.files import write_json
from qspos.runtime.progress import ScoreFormat, console, percent, table
from qspos.runtime.rundir import RunDir, holds_run_dir
from qspos.runtime.task import NO_TASK, Task


@dataclass
class ExportResult:
    """What one net's ``summary.json`` holds."""

    name: str
    dir: Path
    files: dict[str, str] = field(default_factory=dict)  # format -> file name in ``dir``
    skipped: dict[str, str] = field(default_factory=dict)  # format -> why it was not written
    checks: dict[str, Check] = field(default_factory=dict)  # format -> its file run against PyTorch
    packed_bytes: int | None = None
    theoretical_bytes: float | None = None  # the cost model's size_bits / 8

    @property
    def check_ok(self) -> bool | None:
        """Did every exported file reproduce the PyTorch net (None: no check ran)?"""
        return all(c.ok for c in self.checks.values()) if self.checks else None

    def failed(self) -> list[str]:
        """The formats whose check failed."""
        return [fmt for fmt, c in self.checks.items() if not c.ok]

    def failures(self) -> list[str]:
        """Each failed check's reasons, as ``<format>: <reason>``."""
        return [f"{fmt}: {why}" for fmt in self.failed() for why in self.checks[fmt].reasons()]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "dir": str(self.dir), "check_ok": self.check_ok}

    @classmethod
    def load(cls, path: str | Path) -> ExportResult:
        """An export's ``summary.json`` (each check as its format's kind of check)."""
        d = json.loads(Path(path).read_text())
        fields = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "dir"}
        fields["checks"] = {fmt: FORMATS[fmt].result(**c) for fmt, c in d.get("checks", {}).items()}
        return cls(**fields, dir=Path(d["dir"]))


@holds_run_dir
def export(run_dir: str | Path | RunDir, formats: list[str] | None = None, *,
           task: Task = NO_TASK) -> list[ExportResult]:
    """Export every fine-tuned net of ``run_dir`` in ``formats`` (default: the config's
    ``export.formats``) and check each file; writes ``export/<name>/`` with a ``summary.json`` each.
    ``task``: the caller's model and data, for a run made from objects."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    cfg = run.read_config()
    chosen = select(list(formats or cfg.export.formats))
    nets = run.finetuned()
    if not nets:
        raise QsposError(f"no fine-tuned nets in {run.path / run.FINETUNE}: run 'qspos finetune' first")
    splits = load_splits(cfg.data, cfg.model, task)
    loader = make_loader(splits.test, cfg.data.eval_batch_size, shuffle=False, workers=cfg.data.workers)
    batches = first_batches(loader, cfg.export.check_batch)
    # training images (no augmentation) that a format may calibrate on
    calib = torch.cat(first_batches(make_loader(splits.calib, cfg.data.eval_batch_size, shuffle=False, workers=0),
                                    cfg.export.check_batch))
    # a caller's score is for its own nets, not for a wrapper of a file: a file is then judged by
    # its outputs against PyTorch's on the checked images alone
    top1_loader = loader if ScoreFormat(cfg.score).accuracy else None
    costs = CostModel(build_supernet(cfg, given=task.model), cfg.input_shape)
    results = []
    for i, net in enumerate(nets, 1):
        started = time.monotonic()
        model, arch = load_finetuned(cfg, net.model, task.model)
        ref = Reference.of(model, batches, top1_loader, calib, cfg.export.timing_runs)
        metadata = describe(cfg, arch, splits.test)
        out = run.export(net.name)
        out.mkdir(parents=True, exist_ok=True)
        res = ExportResult(net.name, out, theoretical_bytes=costs.metrics(arch)["size_bits"] / 8)
        for name, fmt in chosen.items():
            try:
                res.files[name] = fmt.write(ref, out, metadata)
            except Skipped as why:
                res.skipped[name] = str(why)
                continue
            res.checks[name] = fmt.check(out, ref)
        if "packed" in res.files:  # the packed size, against the cost model's
            res.packed_bytes = (out / res.files["packed"]).stat().st_size
        write_json(run.export_summary(net.name), res.to_dict())
        results.append(res)
        checks = ", ".join(f"{name} {'ok' if c.ok else 'FAILED'}" for name, c in res.checks.items())
        console.print(f"export {net.name} ({i}/{len(nets)}): {checks or 'nothing written'}"
                      f"{'; skipped ' + ', '.join(res.skipped) if res.skipped else ''}, "
                      f"{time.monotonic() - started:.0f} s")
    return results


def export_table(results: list[ExportResult]) -> Any:
    """One row per exported file: its check against PyTorch, and the packed size."""
    rows = []
    for r in results:
        for fmt, file in r.files.items():
            c = r.checks.get(fmt)
            rows.append([r.name, file, c and c.runtime, c and c.max_abs_logit_diff, c and percent(c.matching),
                         c and percent(c.required_matching), c and percent(c.torch_self_matching),
                         c and percent(c.top1_agreement), c and c.detail(), c and ("ok" if c.ok else "FAILED"),
                         r.packed_bytes if fmt == "packed" else None,
                         r.theoretical_bytes if fmt == "packed" else None])
    columns = ["name", "file", "run by", "max |dlogit|", "matching", "needed", "PyTorch batch 1", "same top-1",
               "also", "check", "bytes", "size_bits/8"]
    return table("exports", columns, rows)

"""A benchmark's state: every file that says what was measured (each net's ``result.json``, its
arch and layers, the searches, the sensitivity table, the configs, the logs and the ledger) and
each seed's supernet and search checkpoints, in the work directory's layout; not the fine-tuned
nets' checkpoints. Committed beside the results, it continues the benchmark on a fresh machine: a
measured net is never redone (see ``records.measured``), and a seed's nets all come from one
supernet and one search. Why the supernet too: float kernels differ between CPUs, so a supernet
retrained on another machine is another supernet (MobileNetV2's seed 1, retrained on a machine of
the same name: train loss 1.124 at step 40 against 1.142), and so is its search."""

from __future__ import annotations

import shutil
from pathlib import Path

from qspos.runtime.files import atomic_path
from qspos.runtime.rundir import RunDir

STATE_FILES = ("result.json", "arch.yaml", "layers.json", "config.yaml", "metrics.jsonl", "sensitivity.json",
               "ledger.json", *RunDir.SEARCH_OUTPUTS)
CHECKPOINTS = (RunDir.SUPERNET, f"{RunDir.SEARCH}/{RunDir.SEARCH_STATE}")  # relative to a seed's run directory


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and (
        p.name in STATE_FILES or any(p.relative_to(root).as_posix().endswith(f"/{c}") for c in CHECKPOINTS)))


def save_state(work: str | Path, dest: str | Path) -> int:
    """Copy the state files of ``work`` into ``dest`` (same layout; files already there are
    replaced, atomically, others kept); the number copied."""
    work, dest = Path(work), Path(dest)
    files = _files(work) if work.is_dir() else []
    for f in files:
        target = dest / f.relative_to(work)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            shutil.copyfile(f, tmp)
    return len(files)


def restore_state(src: str | Path, work: str | Path) -> int:
    """Copy the state files of ``src`` into ``work`` where ``work`` lacks them (what is there is
    newer, and kept); the number copied."""
    src, work = Path(src), Path(work)
    n = 0
    for f in _files(src) if src.is_dir() else []:
        target = work / f.relative_to(src)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
            n += 1
    return n

"""The pipeline's stages as Python functions, for scripts and notebooks.

Each takes a config as a :class:`~qspos.config.Config`, a dict (the YAML's structure) or a YAML
path, and returns the stage's result object; outputs land in the run directory exactly as the
CLI writes them (``run_dir`` defaults to ``runs/NAME``), so the CLI and the API can be mixed::

    import qspos

    cfg = qspos.load_config("configs/quickstart.yaml", ["train.epochs=1"])
    res = qspos.run(cfg, "runs/qs")                       # the whole pipeline
    for net in res.finetune:
        print(net.name, net.bitops, net.test_top1)

    qspos.train_supernet(cfg, "runs/qs2")                 # or stage by stage
    found = qspos.search(cfg, "runs/qs2")
    nets = qspos.finetune(cfg, "runs/qs2", arch=found.best("w2a2"))
    qspos.export("runs/qs2", ["onnx-qcdq"])
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from qspos import export as _export
from qspos import finetune as _finetune
from qspos import pipeline as _pipeline
from qspos import search as _search
from qspos import train as _train
from qspos.arch import Arch
from qspos.config import Config, load_config
from qspos.rundir import open_run_dir, resolve_run_dir
from qspos.trainer import claim_checkpoint

ConfigLike = Config | Mapping | str | Path


def train_supernet(config: ConfigLike, run_dir: str | Path | None = None, resume: bool = False) -> _train.TrainResult:
    """Train the supernet into ``run_dir/supernet.pt`` (``qspos train``)."""
    cfg = load_config(config)
    run_dir = resolve_run_dir(cfg, run_dir)
    claim_checkpoint(run_dir / _train.CHECKPOINT, resume)  # before config.yaml is rewritten
    _open(cfg, run_dir)
    return _train.train_supernet(cfg, run_dir, resume=resume)


def search(config: ConfigLike, run_dir: str | Path | None = None, resume: bool = False) -> _search.SearchResult:
    """Search the trained supernet under every budget into ``run_dir/search/`` (``qspos search``)."""
    cfg = load_config(config)
    return _search.search(cfg, resolve_run_dir(cfg, run_dir), resume=resume)


def finetune(
    config: ConfigLike,
    run_dir: str | Path | None = None,
    arch: Arch | str | Path | None = None,
    pick: int | None = None,
    resume: bool = False,
) -> list[_finetune.FinetuneResult]:
    """Fine-tune ``arch`` (an Arch or a file), else each budget's ``pick``-th best arch (default
    the best) into ``run_dir/finetune/<name>/``; each result holds val and test top-1/top-5."""
    cfg = load_config(config)
    run_dir = resolve_run_dir(cfg, run_dir)
    results = _finetune.finetune(cfg, run_dir, arch=arch, pick=pick, resume=resume)
    _open(cfg, run_dir)  # after the work: a refused run leaves the old config.yaml alone
    return results


def evaluate(config: ConfigLike, checkpoint: str | Path, arch: Arch | str | Path | None = None) -> _finetune.EvalResult:
    """Test top-1/top-5, BitOps and size of a fine-tuned net, or of a supernet path (``qspos eval``)."""
    return _finetune.evaluate_checkpoint(load_config(config), checkpoint, arch)


def export(run_dir: str | Path, formats: list[str] | None = None) -> list[_export.ExportResult]:
    """Export every fine-tuned net of a run: ``onnx-qcdq``, ``qonnx``, ``packed`` (``qspos export``)."""
    return _export.export(run_dir, formats)


def run(config: ConfigLike, run_dir: str | Path | None = None, resume: bool = False) -> _pipeline.RunResult:
    """train -> search -> finetune -> export -> report in one run directory (``qspos run``)."""
    return _pipeline.run(load_config(config), run_dir, resume=resume)


def _open(cfg: Config, run_dir: Path) -> None:
    if os.environ.get("RANK", "0") == "0":
        open_run_dir(cfg, run_dir)

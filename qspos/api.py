"""The pipeline's stages as Python functions, for scripts and notebooks.

Each takes a config as a :class:`~qspos.runtime.config.Config`, a dict (the YAML's structure) or
a YAML path, and returns the stage's result object; outputs land in the run directory exactly as
the CLI writes them (``run_dir`` defaults to ``runs/NAME``), so the CLI and the API can be mixed::

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

from collections.abc import Mapping
from pathlib import Path

from qspos.core.arch import Arch
from qspos.runtime.config import Config, load_config
from qspos.stages import evaluate as _evaluate
from qspos.stages import export as _export
from qspos.stages import finetune as _finetune
from qspos.stages import run as _run
from qspos.stages import search as _search
from qspos.stages import train as _train

ConfigLike = Config | Mapping | str | Path


def train_supernet(config: ConfigLike, run_dir: str | Path | None = None, resume: bool = False) -> _train.TrainResult:
    """Train the supernet into ``run_dir/supernet.pt`` (``qspos train``).

    >>> trained = qspos.train_supernet("configs/quickstart.yaml", "runs/qs")  # doctest: +SKIP
    """
    return _train.train_supernet(load_config(config), run_dir, resume=resume)


def search(config: ConfigLike, run_dir: str | Path | None = None, resume: bool = False) -> _search.SearchResult:
    """Search the trained supernet under every budget into ``run_dir/search/`` (``qspos search``).

    >>> found = qspos.search("configs/quickstart.yaml", "runs/qs")  # doctest: +SKIP
    >>> found.best("w2a2")  # doctest: +SKIP
    """
    return _search.search(load_config(config), run_dir, resume=resume)


def finetune(
    config: ConfigLike,
    run_dir: str | Path | None = None,
    arch: Arch | str | Path | None = None,
    pick: int | None = None,
    resume: bool = False,
) -> list[_finetune.FinetuneResult]:
    """Fine-tune ``arch`` (an Arch or a file), else each budget's ``pick``-th best arch (default
    the best) into ``run_dir/finetune/<name>/``; each result holds val and test top-1/top-5.

    >>> nets = qspos.finetune("configs/quickstart.yaml", "runs/qs")  # doctest: +SKIP
    """
    return _finetune.finetune(load_config(config), run_dir, arch=arch, pick=pick, resume=resume)


def evaluate(config: ConfigLike, checkpoint: str | Path, arch: Arch | str | Path | None = None) -> _evaluate.EvalResult:
    """Test top-1/top-5, BitOps and size of a fine-tuned net, or of a supernet path (``qspos eval``).

    >>> qspos.evaluate("configs/quickstart.yaml", "runs/qs/finetune/w2a2/model.pt").test_top1  # doctest: +SKIP
    """
    return _evaluate.evaluate_checkpoint(load_config(config), checkpoint, arch)


def export(run_dir: str | Path, formats: list[str] | None = None) -> list[_export.ExportResult]:
    """Export every fine-tuned net of a run: ``onnx-qcdq``, ``qonnx``, ``packed`` (``qspos export``).

    >>> qspos.export("runs/qs", ["onnx-qcdq"])  # doctest: +SKIP
    """
    return _export.export(run_dir, formats)


def run(config: ConfigLike, run_dir: str | Path | None = None, resume: bool = False) -> _run.RunResult:
    """train -> search -> finetune -> export -> report in one run directory (``qspos run``).

    >>> res = qspos.run("configs/quickstart.yaml", "runs/qs")  # doctest: +SKIP
    """
    return _run.run(load_config(config), run_dir, resume=resume)

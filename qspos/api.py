"""The pipeline's stages as Python functions, for scripts, notebooks and compression pipelines.

Each takes a config as a :class:`~qspos.runtime.config.Config`, a dict (the YAML's structure) or
a YAML path, and returns the stage's result object; outputs land in the run directory exactly as
the CLI writes them (``run_dir`` defaults to ``runs/NAME``), so the CLI and the API can be mixed.
Objects passed win over the config: ``model`` (any ``nn.Module``), ``train``/``val``/``test``
(``Dataset`` s or ``DataLoader`` s with your own transforms), ``loss(model, batch)`` and
``score(model, loader)`` (higher is better; see ``qspos.runtime.task``), one by one or as one
``qspos.Task`` (``task=``)::

    import qspos

    cfg = qspos.load_config("configs/quickstart.yaml", ["train.epochs=1"])
    res = qspos.run(cfg, "runs/qs")                       # the whole pipeline
    for net in res.finetune:
        print(net.name, net.bitops, net.test_top1, net.model)   # .model: the Brevitas module

    res = qspos.run(cfg, "runs/mine", model=my_net, train=my_train, val=my_val, test=my_test)
    net = qspos.load_quantized("runs/mine", "w2a2", model=my_net)
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypedDict, Unpack

from torch import nn

from qspos.core.arch import Arch
from qspos.core.budget import parse_budgets
from qspos.core.cost import CostModel
from qspos.core.evolution import evolve as _evolve
from qspos.core.metrics import ArchMetrics
from qspos.errors import QsposError
from qspos.runtime.build import Supernet, load_finetuned
from qspos.runtime.config import Config, load_config, load_search_settings
from qspos.runtime.rundir import RunDir
from qspos.runtime.task import Data, Loss, Score, Task, batch_size_of, dataset_of
from qspos.stages import evaluate as _evaluate
from qspos.stages import export as _export
from qspos.stages import finetune as _finetune
from qspos.stages import float_baseline as _float_baseline
from qspos.stages import run as _run
from qspos.stages import search as _search
from qspos.stages import train as _train

ConfigLike = Config | Mapping | str | Path


def _with_task(config: ConfigLike, task: Task) -> Config:
    """The config with what the task's objects decide: the model's recorded name, the input
    shape of the data, the batch sizes of the loaders passed and the score's name."""
    cfg = load_config(config)
    model = cfg.model
    if task.model is not None:
        model = dataclasses.replace(model, name=task.model_name(), args={})
    if task.train is not None:
        x = dataset_of(task.train)[0][0]
        if x.dim() != 3 or x.shape[1] != x.shape[2]:
            raise QsposError(f"train: the inputs must be square images (C, H, W), got shape {tuple(x.shape)}")
        model = dataclasses.replace(model, in_channels=int(x.shape[0]), input_size=int(x.shape[1]))
    data = cfg.data
    if task.train is not None:
        data = dataclasses.replace(data, dataset="objects")
    if batch_size_of(task.train):
        data = dataclasses.replace(data, batch_size=batch_size_of(task.train))
    if batch_size_of(task.val) or batch_size_of(task.test):
        data = dataclasses.replace(data, eval_batch_size=batch_size_of(task.val) or batch_size_of(task.test))
    return dataclasses.replace(cfg, model=model, data=data, score=task.score_name())


class TaskObjects(TypedDict, total=False):
    """The caller's objects every stage function takes, each winning over the config (see
    :class:`qspos.Task`); a stage ignores those it has no use for (``search`` trains nothing)."""

    model: nn.Module
    train: Data
    val: Data
    test: Data
    loss: Loss
    score: Score


def _task(task: Task | None, objects: Mapping[str, object]) -> Task:
    """The one :class:`Task` of a call: ``task=``, or the objects passed one by one."""
    unknown = sorted(set(objects) - {f.name for f in dataclasses.fields(Task)})
    if unknown:
        raise QsposError(f"unknown argument {unknown[0]}=: the objects a stage takes are model=, train=, val=, "
                         "test=, loss= and score= (or task=)")
    if task is not None and objects:
        raise QsposError(f"pass task= or {', '.join(f'{k}=' for k in objects)}, not both")
    return task if task is not None else Task(**objects)  # type: ignore[arg-type]


def train_supernet(config: ConfigLike, run_dir: str | Path | None = None, resume: bool = False, *,
                   task: Task | None = None, **objects: Unpack[TaskObjects]) -> _train.TrainResult:
    """Train the supernet into ``run_dir/supernet.pt`` (``qspos train``).

    >>> trained = qspos.train_supernet("configs/quickstart.yaml", "runs/qs")  # doctest: +SKIP
    >>> trained = qspos.train_supernet(cfg, "runs/mine", model=net, train=ds, loss=my_loss)  # doctest: +SKIP
    """
    t = _task(task, objects)
    return _train.train_supernet(_with_task(config, t), run_dir, resume=resume, task=t)


def search(config: ConfigLike, run_dir: str | Path | None = None, resume: bool = False, *,
           task: Task | None = None, **objects: Unpack[TaskObjects]) -> _search.SearchResult:
    """Search the trained supernet under every budget into ``run_dir/search/`` (``qspos search``);
    ``score`` ranks the candidates instead of top-1.

    >>> found = qspos.search("configs/quickstart.yaml", "runs/qs")  # doctest: +SKIP
    >>> found.best("w2a2")  # doctest: +SKIP
    """
    t = _task(task, objects)
    return _search.search(_with_task(config, t), run_dir, resume=resume, task=t)


def finetune(config: ConfigLike, run_dir: str | Path | None = None, arch: Arch | str | Path | None = None,
             pick: int | None = None, resume: bool = False, *, task: Task | None = None,
             **objects: Unpack[TaskObjects]) -> list[_finetune.FinetuneResult]:
    """Fine-tune ``arch`` (an Arch or a file), else each budget's ``pick``-th best arch (default
    the best) into ``run_dir/finetune/<name>/``; each result holds val and test top-1/top-5 (or
    ``score``) and ``.model``, the standalone Brevitas module.

    >>> nets = qspos.finetune("configs/quickstart.yaml", "runs/qs")  # doctest: +SKIP
    >>> nets[0].model  # doctest: +SKIP
    """
    t = _task(task, objects)
    return _finetune.finetune(_with_task(config, t), run_dir, arch=arch, pick=pick, resume=resume, task=t)


def train_float(config: ConfigLike, run_dir: str | Path | None = None, resume: bool = False, *,
                task: Task | None = None, **objects: Unpack[TaskObjects]) -> _float_baseline.FloatResult:
    """Train and measure the float teacher (the backbone unquantized, with the ``float`` recipe)
    into ``run_dir/float/`` (``qspos float``); the supernet starts from it and learns from it as
    the config says, and the run's report shows it.

    >>> base = qspos.train_float("configs/quickstart.yaml", "runs/qs")  # doctest: +SKIP
    >>> base.test_top1  # doctest: +SKIP
    """
    t = _task(task, objects)
    return _float_baseline.train_float(_with_task(config, t), run_dir, resume=resume, task=t)


def evaluate(config: ConfigLike, checkpoint: str | Path, arch: Arch | str | Path | None = None, *,
             task: Task | None = None, **objects: Unpack[TaskObjects]) -> _evaluate.EvalResult:
    """Test top-1/top-5 (or ``score``), BitOps and size of a fine-tuned net, or of a supernet
    path (``qspos eval``).

    >>> qspos.evaluate("configs/quickstart.yaml", "runs/qs/finetune/w2a2/model.pt").test_top1  # doctest: +SKIP
    """
    t = _task(task, objects)
    return _evaluate.evaluate_checkpoint(_with_task(config, t), checkpoint, arch, task=t)


def export(run_dir: str | Path, formats: list[str] | None = None, *, task: Task | None = None,
           **objects: Unpack[TaskObjects]) -> list[_export.ExportResult]:
    """Export every fine-tuned net of a run: ``onnx-qcdq``, ``qonnx``, ``packed`` (``qspos export``);
    a run made from objects needs the same ``model`` and ``train``/``test`` data again. Each file
    is checked by its outputs against the net's; a run's own score is never called on a file (the
    QCDQ file's top-1 over the test split is compared when the run's score is top-1).

    >>> qspos.export("runs/qs", ["onnx-qcdq"])  # doctest: +SKIP
    """
    return _export.export(run_dir, formats, task=_task(task, objects))


def run(config: ConfigLike, run_dir: str | Path | None = None, resume: bool = False, *,
        task: Task | None = None, **objects: Unpack[TaskObjects]) -> _run.RunResult:
    """train -> search -> finetune -> export -> report in one run directory (``qspos run``).

    >>> res = qspos.run("configs/quickstart.yaml", "runs/qs")  # doctest: +SKIP
    >>> res = qspos.run(cfg, "runs/mine", model=net, train=tr, val=va, test=te)  # doctest: +SKIP
    """
    t = _task(task, objects)
    return _run.run(_with_task(config, t), run_dir, resume=resume, task=t)


def load_quantized(run_dir: str | Path, name: str, *, model: nn.Module | None = None) -> nn.Module:
    """The fine-tuned net ``name`` of a run as a standalone Brevitas module, rebuilt from its
    state dict, arch and the run's model spec (``model``: the same object, when the run was
    made from one), in eval mode.

    >>> net = qspos.load_quantized("runs/qs", "w2a2")  # doctest: +SKIP
    """
    run_ = RunDir(run_dir)
    cfg = run_.read_config()
    net = run_.net(name)
    if not net.done:
        known = ", ".join(n.name for n in run_.finetuned()) or "none"
        raise QsposError(f"{run_.path}: no fine-tuned net {name!r} (finished ones: {known})")
    return load_finetuned(cfg, net.model, model)[0]


# ---------------------------------------------------------------------------- the low-level API


def evolve(supernet: Supernet, score: Callable[[Arch], float], budget: Mapping, seed: int = 0,
           **settings: int | float) -> list[tuple[Arch, float]]:
    """The paper's evolutionary search under ``budget`` (the config's budget form, e.g.
    ``{"bitops": "uniform 3,3"}``) with your ``score(arch)`` (higher is better: set the path,
    recalibrate BN, measure); every evaluated arch with its score, best first. ``settings`` are
    the ``search`` section's (``population``, ``iterations``, ``topk``, ``mutation_count``, ...).

    >>> best, s = qspos.evolve(sn, my_score, {"bitops": "uniform 3,3"}, population=16)[0]  # doctest: +SKIP
    """
    s = load_search_settings({"budgets": [{"name": "budget", **budget}], **settings})
    metrics = ArchMetrics(CostModel(supernet, supernet.input_shape))
    (parsed,) = parse_budgets(s.budgets, metrics, floor=s.floor)
    return _evolve(supernet.space, score, lambda a: parsed.accepts(metrics(a)), lambda a: metrics(a)["bitops"],
                   s, s.iterations, s.topk, random.Random(seed))

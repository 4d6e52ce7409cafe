"""``qspos run``: train -> search -> finetune (ending in the test evaluation) -> export -> report,
all in one run directory.

With ``--resume`` a finished stage is skipped (the complete supernet checkpoint, the search
results, each fine-tuned net, each export) and an unfinished one continues from its own
checkpoint; without it, a run directory that already holds outputs is refused, so nothing is
overwritten. Each stage records the config in ``config.yaml`` once it has accepted its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qspos.errors import QsposError
from qspos.runtime.checkpoint import load_checkpoint
from qspos.runtime.config import Config
from qspos.runtime.distributed import init_distributed, pick_device
from qspos.runtime.progress import ScoreFormat, console, stdout
from qspos.runtime.rundir import RunDir, holds_run_dir
from qspos.runtime.task import NO_TASK, Task
from qspos.runtime.teacher import needs_teacher, trains_teacher
from qspos.stages.budgets import require_budgets
from qspos.stages.export import ExportResult, export, export_table
from qspos.stages.finetune import FinetuneResult, finetune, results_table
from qspos.stages.float_baseline import train_float
from qspos.stages.report import write_report
from qspos.stages.search import SearchResult, random_baseline, search, state_fingerprint
from qspos.stages.train import TrainResult, check_trained, train_supernet


@dataclass
class RunResult:
    run_dir: Path
    train: TrainResult | None  # None when the supernet was already trained (resume)
    search: SearchResult
    finetune: list[FinetuneResult]
    export: list[ExportResult]  # empty on every process but the first under torchrun
    report: Path | None  # None likewise


@holds_run_dir
def run(cfg: Config, run_dir: str | Path | RunDir | None = None, resume: bool = False, *,
        task: Task = NO_TASK) -> RunResult:
    """The whole pipeline of ``cfg`` (``task``: the caller's objects) into ``run_dir`` (default
    ``runs/NAME``); see the module doc."""
    rd = RunDir.of(cfg, run_dir)
    require_budgets(cfg)  # the search would refuse an empty list, but only after the supernet is trained
    devices = [pick_device(name) for name in (cfg.train.device, cfg.search.device, cfg.finetune.device)]
    if not resume:
        claim_run_dir(rd)
    dist = init_distributed(devices[0])
    dist.barrier()

    if needs_teacher(cfg) and trains_teacher(cfg, task.model):  # an input of the run: kept when there
        train_float(cfg, rd, resume=True, task=task)
    trained = None
    if resume and supernet_complete(rd.supernet):
        check_trained(cfg, rd, task)
        _skip("train", rd.supernet)
    else:
        trained = train_supernet(cfg, rd, resume=resume, task=task)
    if resume and search_complete(rd, cfg):
        _skip("search", rd.search_results)
        searched = SearchResult.load(rd.search_results)
    else:
        searched = search(cfg, rd, resume=resume, task=task)
    tuned = finetune(cfg, rd, resume=resume, task=task)
    if not dist.main:  # export and report are one process's work
        return RunResult(rd.path, trained, searched, tuned, [], None)
    stdout.print(results_table(tuned, f"fine-tuned nets: {cfg.name}", ScoreFormat(cfg.score)))
    summaries = [rd.export_summary(r.name) for r in tuned]
    if resume and all(_exported(p, cfg.export.formats) for p in summaries):
        _skip("export", rd.path / rd.EXPORT)
        exported = [ExportResult.load(p) for p in summaries]
    else:
        exported = export(rd, task=task)
        stdout.print(export_table(exported))
    report = write_report(rd, task.model)
    console.print(f"report: {report}")
    return RunResult(rd.path, trained, searched, tuned, exported, report)


def claim_run_dir(run: RunDir) -> None:
    """Refuse a fresh run in a directory that holds a run's outputs."""
    found = run.in_use()
    if found:
        raise QsposError(f"{run.path} already holds a run ({', '.join(found)}): pass --resume to continue it, "
                         "or choose another --out")


def supernet_complete(path: Path) -> bool:
    return path.is_file() and bool(load_checkpoint(path).get("complete", False))


def search_complete(run: RunDir, cfg: Config) -> bool:
    """Are the search's outputs all there, from a search with these settings, with the random
    baseline under every budget that asks for one? (If not, resuming the search finishes it, or
    refuses a search saved with other settings.)"""
    if not run.search_finished():
        return False
    state = load_checkpoint(run.search_state)
    return state.get("fingerprint") == state_fingerprint(cfg) and all(
        bs.get("random") is not None for name, bs in state["budgets"].items() if random_baseline(cfg.search, name))


def _exported(summary: Path, formats: list[str]) -> bool:
    """Does this export summary cover every format asked for (written, or skipped with a reason)?"""
    if not summary.is_file():
        return False
    done = ExportResult.load(summary)
    return set(formats) <= set(done.files) | set(done.skipped)


def _skip(stage: str, where: Path) -> None:
    console.print(f"{stage}: already done ({where}), skipped")

"""``qspos run``: train -> search -> finetune (ending in the test evaluation) -> export -> report,
all in one run directory.

With ``--resume`` a finished stage is skipped (the complete supernet checkpoint, the search
results, each fine-tuned net, each export) and an unfinished one continues from its own
checkpoint; without it, a run directory that already holds outputs is refused, so nothing is
overwritten.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from qspos.checkpoint import load_checkpoint
from qspos.config import Config, load_config
from qspos.distributed import init_distributed, pick_device
from qspos.errors import QsposError
from qspos.export import EXPORT_DIR, SUMMARY, ExportResult, export, export_table
from qspos.finetune import FINETUNE_DIR, SEARCH_RESULTS, FinetuneResult, finetune, results_table
from qspos.progress import console
from qspos.report import REPORT, write_report
from qspos.rundir import open_run_dir, resolve_run_dir
from qspos.search import SearchResult, search, state_fingerprint
from qspos.train import CHECKPOINT, TrainResult, train_supernet

# The files of a finished search (results.json is written first: alone, the search may have been cut)
SEARCH_OUTPUTS = ("results.json", "pareto.md", "pareto.png")
# What a stage leaves in the run directory: any of them there means the directory is in use.
OUTPUTS = (CHECKPOINT, "metrics.jsonl", "search", FINETUNE_DIR, EXPORT_DIR, REPORT)


@dataclass
class RunResult:
    run_dir: Path
    train: TrainResult | None  # None when the supernet was already trained (resume)
    search: SearchResult
    finetune: list[FinetuneResult]
    export: list[ExportResult]  # empty on every process but the first under torchrun
    report: Path | None  # None likewise


def run(cfg: Config, out: str | Path | None = None, resume: bool = False) -> RunResult:
    """The whole pipeline of ``cfg`` into ``out`` (default ``runs/NAME``); see the module doc."""
    run_dir = resolve_run_dir(cfg, out)
    if not resume:
        claim_run_dir(run_dir)
    dist = init_distributed(pick_device(cfg.train.device))
    if dist.main:
        open_run_dir(cfg, run_dir)
    dist.barrier()

    trained = None
    if resume and supernet_complete(run_dir / CHECKPOINT):
        _skip("train", run_dir / CHECKPOINT)
    else:
        trained = train_supernet(cfg, run_dir, resume=resume)
    if resume and search_complete(run_dir, cfg):
        _skip("search", run_dir / SEARCH_RESULTS)
        searched = SearchResult.load(run_dir / SEARCH_RESULTS)
    else:
        searched = search(cfg, run_dir, resume=resume)
    tuned = finetune(cfg, run_dir, resume=resume)
    if not dist.main:  # export and report are one process's work
        return RunResult(run_dir, trained, searched, tuned, [], None)
    console.print(results_table(tuned, f"fine-tuned nets: {cfg.name}"))
    summaries = [run_dir / EXPORT_DIR / r.name / SUMMARY for r in tuned]
    if resume and all(_exported(p, cfg.export.formats) for p in summaries):
        _skip("export", run_dir / EXPORT_DIR)
        exported = [ExportResult.load(p) for p in summaries]
    else:
        exported = export(run_dir)
        console.print(export_table(exported))
    report = write_report(run_dir)
    console.print(f"report: {report}")
    return RunResult(run_dir, trained, searched, tuned, exported, report)


def claim_run_dir(run_dir: Path) -> None:
    """Refuse a fresh run in a directory that holds a run's outputs."""
    found = [name for name in OUTPUTS if (run_dir / name).exists()]
    if found:
        raise QsposError(f"{run_dir} already holds a run ({', '.join(found)}): pass --resume to continue it, "
                         "or choose another --out")


def supernet_complete(path: Path) -> bool:
    return path.is_file() and bool(load_checkpoint(path).get("complete", False))


def search_complete(run_dir: Path, cfg: Config) -> bool:
    """Are the search's outputs all there, from a search with these settings? (If not, resuming
    the search finishes it, or refuses a search saved with other settings.)"""
    out = (run_dir / SEARCH_RESULTS).parent
    if not all((out / f).is_file() for f in SEARCH_OUTPUTS) or not (out / "state.pt").is_file():
        return False
    return load_checkpoint(out / "state.pt").get("fingerprint") == state_fingerprint(cfg)


def _exported(summary: Path, formats: list[str]) -> bool:
    """Does this export summary cover every format asked for (written, or skipped with a reason)?"""
    if not summary.is_file():
        return False
    done = ExportResult.load(summary)
    return set(formats) <= set(done.files) | set(done.skipped)


def _skip(stage: str, where: Path) -> None:
    console.print(f"{stage}: already done ({where}), skipped")


def cli_run(args: argparse.Namespace) -> int:
    """``qspos run CONFIG [--out DIR] [--resume] [--set ...]``."""
    cfg = load_config(args.config, args.overrides)
    run(cfg, args.out, resume=args.resume)
    return 0

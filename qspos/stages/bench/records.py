"""The benchmark's finished nets, one record each, as ``results.json`` lists them, read from the
``result.json`` files of its work directory."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qspos.core.stats import binomial_se
from qspos.results.search_results import SearchResult
from qspos.runtime.rundir import NetDir, RunDir
from qspos.stages.bench.plan import BUDGET_KINDS, BenchDir
from qspos.stages.finetune import FinetuneResult
from qspos.stages.float_baseline import FloatResult


@dataclass(frozen=True)
class NetRecord:
    """One finished net of the benchmark, as ``results.json`` lists it."""

    kind: str  # float | uniform | searched | random | sensitivity | rank
    budget: str | None
    bits: tuple[int, int] | None  # (w_bits, a_bits) of a uniform net
    seed: int
    init: str
    name: str
    bitops: int
    size_bits: int
    test_top1: float
    test_images: int
    se: float | None  # binomial standard error of test_top1 (None without test images)
    val_top1: float | None
    search_val_top1: float | None
    steps: int
    train_seconds: float
    arch: dict | None
    val_top1_before: float | None = None  # after BN recalibration, before fine-tuning
    searched_bitops: int | None = None  # the choice points' part of ``bitops`` (papers quote it)

    def to_dict(self) -> dict[str, Any]:
        """As JSON reads it back (bits a list)."""
        return {**dataclasses.asdict(self), "bits": None if self.bits is None else list(self.bits)}


def measured(net: NetDir) -> bool:
    """Is this net's ``result.json`` there? That is all the benchmark needs of a finished net: its
    checkpoints may be gone (a fresh machine holding only the committed results)."""
    return net.result.is_file()


def _pair(tag: str) -> tuple[int, int]:
    """(w_bits, a_bits) of a uniform net's tag ``w<W>a<A>``."""
    w, a = tag[1:].split("a")
    return int(w), int(a)


def _record(seed: int, r: FinetuneResult) -> NetRecord:
    kind, tag = r.name.split("-", 1)  # uniform-w2a4, searched-<budget>, rank-<digest>, ...
    bits = _pair(tag) if kind == "uniform" else None
    n = r.test_images or 0
    return NetRecord(kind, tag if kind in BUDGET_KINDS else None, bits, seed, r.init, r.name, r.bitops,
                     r.size_bits, r.test_top1, n, binomial_se(r.test_top1, n), r.val_top1, r.search_val_top1,
                     r.steps, r.train_seconds, r.arch.to_dict(), r.val_top1_before, r.searched_bitops)


def _float_record(seed: int, r: FloatResult) -> NetRecord:
    return NetRecord("float", None, None, seed, "scratch", "float", r.bitops, r.size_bits, r.test_top1,
                     r.test_images, binomial_se(r.test_top1, r.test_images), r.val_top1, None, r.steps,
                     r.train_seconds, None)


def finished_nets(work: str | Path, init: str) -> list[NetRecord]:
    """Every finished net of the policy ``init`` (and the float nets) in ``work``."""
    wd = BenchDir(work)
    out = []
    for seed in wd.seeds():
        fl = wd.seed(seed).float_net
        if measured(fl):
            out.append(_float_record(seed, FloatResult.load(fl.result)))
        variants = sorted((wd.policy(seed, init).path / "variants").glob("*"))
        for run in [wd.policy(seed, init), *(RunDir(p) for p in variants)]:
            for result in sorted((run.path / RunDir.FINETUNE).glob("*/result.json")):
                out.append(_record(seed, FinetuneResult.from_dict(json.loads(result.read_text()))))
    return out


def search_counts(work: str | Path) -> list[dict[str, Any]]:
    """Per finished search and budget: the archs the evolution evaluated and those the random
    search found (fewer means its baseline is weaker than the equal-evaluation one asked for)."""
    wd = BenchDir(work)
    out = []
    for seed in wd.seeds():
        path = wd.seed(seed).search_results
        if path.is_file():
            out += [{"seed": seed, "budget": b.name, "evaluations": b.evaluations,
                     "random_evaluations": b.random_evaluations} for b in SearchResult.load(path).budgets]
    return out

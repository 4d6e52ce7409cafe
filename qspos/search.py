"""``qspos search``: evolutionary search of a trained supernet under one or more budgets.

Every budget gets its own evolution (and, as a baseline, a random search with as many
evaluations); all share one evaluation cache, since a candidate's accuracy does not depend on the
budget it was bred under. The state is saved after every generation, so ``--resume`` continues a
killed search to the same result. Outputs go to ``RUN_DIR/search/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qspos.arch import Arch
from qspos.budget import ArchMetrics, Budget, parse_budgets
from qspos.checkpoint import atomic_save, load_checkpoint, python_rng_state, set_python_rng_state
from qspos.config import Config, load_config
from qspos.cost import CostModel
from qspos.data import load_splits
from qspos.distributed import init_distributed, pick_device
from qspos.errors import QsposError
from qspos.evaluate import CandidateEvaluator, fixed_batches
from qspos.evolution import Accept, breed, random_archs, ranked
from qspos.latency import LatencyTable
from qspos.pareto import pareto_front, pareto_markdown, pareto_plot
from qspos.progress import MetricsLog, console, progress_bar, table
from qspos.rundir import fingerprint, open_run_dir, resolve_run_dir
from qspos.supernet import load_supernet

STATE_VERSION = 1


@dataclass
class SearchResult:
    """What ``search/results.json`` holds (see :meth:`to_dict`)."""

    budgets: list[dict]
    pareto: list[dict]
    evaluations: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def best(self, budget: str, rank: int = 0) -> Arch:
        """The ``rank``-th best arch found under the named budget."""
        for b in self.budgets:
            if b["name"] == budget:
                return Arch.from_dict(b["best"][rank]["arch"])
        raise QsposError(f"no budget named {budget!r} in the search results")

    @classmethod
    def load(cls, path: str | Path) -> SearchResult:
        path = Path(path)
        if not path.is_file():
            raise QsposError(f"no search results at {path}: run 'qspos search' first")
        try:
            d = json.loads(path.read_text())
            return cls(d["budgets"], d["pareto"], d["evaluations"])
        except (ValueError, KeyError, TypeError):
            raise QsposError(f"{path} is not a qspos search results file") from None


def state_fingerprint(cfg: Config) -> str:
    """What a saved search depends on: the supernet, the data split, the search settings
    (not the device or loader workers, which change no result)."""
    same = dataclasses.replace(
        cfg,
        search=dataclasses.replace(cfg.search, device="auto"),
        data=dataclasses.replace(cfg.data, workers=0, download=False),
    )
    return fingerprint(same, "model", "space", "quant", "data", "search")


class _Search:
    """One search run: the shared cache, per-budget evolution state, and the outputs."""

    def __init__(self, cfg: Config, run_dir: Path, resume: bool):
        self.cfg, self.scfg = cfg, cfg.search
        self.out = run_dir / "search"
        self.state_path = self.out / "state.pt"
        self.device = pick_device(self.scfg.device)
        self.dist = init_distributed(self.device)
        self.main = self.dist.main

        ckpt = run_dir / "supernet.pt"
        if not ckpt.is_file():
            raise QsposError(f"no trained supernet at {ckpt}: run 'qspos train' first (or pass --out)")
        if not resume and self.state_path.is_file():
            raise QsposError(
                f"{self.state_path} holds an earlier search: pass --resume to continue it, or use another --out"
            )
        supernet = load_supernet(cfg, ckpt).to(self.device)
        self.space = supernet.space
        self.cost_model = CostModel(supernet, cfg.input_shape)
        latency = LatencyTable.load(self.scfg.latency_table) if self.scfg.latency_table else None
        self.metrics = ArchMetrics(self.cost_model, latency)
        if not self.scfg.budgets:
            raise QsposError('search.budgets is empty: give at least one, e.g. {bitops: "uniform 4,4"}')
        self.budgets = parse_budgets(self.scfg.budgets, self.metrics)
        self.state = self._load_state() if resume and self.state_path.is_file() else self._new_state()

        splits = load_splits(cfg.data, cfg.model)
        if len(splits.val) == 0:
            raise QsposError("data.val_size is 0: the search needs images held out of the training split")
        bs, workers = cfg.data.eval_batch_size, cfg.data.workers
        self.evaluator = CandidateEvaluator(
            supernet,
            fixed_batches(splits.calib, self.scfg.calib_images, bs, workers),
            fixed_batches(splits.val, self.scfg.val_images, bs, workers),
            self.device,
            self.dist,
            cache=self.state["cache"],
        )
        if self.main:
            open_run_dir(cfg, run_dir)
        self.log = MetricsLog(run_dir / "metrics.jsonl", "search", enabled=self.main)
        self._bitops: dict[str, float] = {}

    # ------------------------------------------------------------------ state

    def _new_state(self) -> dict:
        return {"version": STATE_VERSION, "fingerprint": state_fingerprint(self.cfg),
                "cache": {}, "archs": {}, "budgets": {}}

    def _load_state(self) -> dict:
        state = load_checkpoint(self.state_path)
        if state.get("version") != STATE_VERSION or state.get("fingerprint") != state_fingerprint(self.cfg):
            raise QsposError(
                f"{self.state_path} was saved by a search with another config (model, space, data or "
                "search settings); rerun without --resume into another --out"
            )
        return state

    def _save(self) -> None:
        if self.main:
            atomic_save(self.state, self.state_path)

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, archs: Sequence[Arch]) -> list[float]:
        for a in archs:
            self.state["archs"].setdefault(a.digest(), a.to_dict())
        return self.evaluator(archs)

    def bitops(self, digest: str) -> float:
        if digest not in self._bitops:
            arch = Arch.from_dict(self.state["archs"][digest])
            self._bitops[digest] = self.metrics(arch)["bitops"]
        return self._bitops[digest]

    def ranked(self, digests: Sequence[str]) -> list[str]:
        return ranked(digests, self.state["cache"], {d: self.bitops(d) for d in set(digests)})

    def accept_fn(self, budget: Budget) -> Accept:
        return lambda arch: budget.accepts(self.metrics(arch))

    # ------------------------------------------------------------------ one budget

    def evolve(self, budget: Budget, bar, task) -> None:
        """The evolution under ``budget``, continuing from its saved state."""
        bs = self.state["budgets"].setdefault(budget.name, {})
        accept = self.accept_fn(budget)
        rng = random.Random(f"{self.scfg.seed}:evolution:{budget.name}")
        if "rng" not in bs:
            population = random_archs(self.space, rng, accept, set(), self.scfg.population, self.scfg.max_tries)
            if not population:
                raise QsposError(
                    f"budget {budget.name}: no arch in {self.scfg.max_tries} uniform samples meets all its "
                    "limits together; loosen the budget or raise search.max_tries"
                )
            bs.update(generation=0, population=[a.to_dict() for a in population], evaluated=[],
                      rng=python_rng_state(rng), random=None)
        set_python_rng_state(rng, bs["rng"])
        bar.update(task, completed=bs["generation"], info=self._info(bs["evaluated"]))
        while bs["generation"] < self.scfg.iterations and bs["population"]:
            population = [Arch.from_dict(d) for d in bs["population"]]
            scores = self.evaluate(population)
            bs["evaluated"].extend(a.digest() for a in population)
            bs["generation"] += 1
            top = self.ranked(bs["evaluated"])
            if bs["generation"] < self.scfg.iterations:
                parents = [Arch.from_dict(self.state["archs"][d]) for d in top[: self.scfg.topk]]
                children = breed(self.space, parents, rng, accept, set(bs["evaluated"]), self.scfg)
                bs["population"] = [a.to_dict() for a in children]
            else:
                bs["population"] = []
            bs["rng"] = python_rng_state(rng)
            self._save()
            best = self.state["cache"][top[0]]
            self.log.write(budget=budget.name, phase="evolution", generation=bs["generation"],
                           best_val_top1=best, mean_val_top1=sum(scores) / len(scores),
                           candidates=len(bs["evaluated"]), evaluations=len(self.state["cache"]))
            bar.update(task, completed=bs["generation"], info=self._info(bs["evaluated"]))

    def random_search(self, budget: Budget, bar, task) -> None:
        """Random archs in ``budget``, as many as the evolution evaluated (the baseline)."""
        bs = self.state["budgets"][budget.name]
        if bs["random"] is None:
            rng = random.Random(f"{self.scfg.seed}:random:{budget.name}")
            archs = random_archs(self.space, rng, self.accept_fn(budget), set(), len(bs["evaluated"]),
                                 self.scfg.max_tries)
            for a in archs:
                self.state["archs"].setdefault(a.digest(), a.to_dict())
            bs["random"] = [a.digest() for a in archs]
            self._save()
        digests = bs["random"]
        step = self.scfg.population
        bar.update(task, total=max(1, -(-len(digests) // step)))
        for i in range(0, len(digests), step):
            chunk = [Arch.from_dict(self.state["archs"][d]) for d in digests[i : i + step]]
            fresh = any(a.digest() not in self.state["cache"] for a in chunk)
            self.evaluate(chunk)
            if fresh:
                self._save()
                self.log.write(budget=budget.name, phase="random", candidates=i + len(chunk),
                               best_val_top1=self.state["cache"][self.ranked(digests[: i + len(chunk)])[0]],
                               evaluations=len(self.state["cache"]))
            bar.update(task, advance=1, info=self._info(digests[: i + len(chunk)]))

    def uniform_baseline(self, budget: Budget) -> dict | None:
        """The uniform arch a "uniform W,A" bound refers to, evaluated when it is in the domain."""
        if budget.uniform is None:
            return None
        w, a = budget.uniform
        arch = self.space.uniform(w, a)
        in_domain = all(p.contains(arch[p.name]) for p in self.space.points)
        top1 = self.evaluate([arch])[0] if in_domain else None
        return {"w_bits": w, "a_bits": a, "in_domain": in_domain, "val_top1": top1,
                "bitops": self.metrics(arch)["bitops"]}

    def _info(self, digests: Sequence[str]) -> str:
        if not digests:
            return ""
        best = max(self.state["cache"][d] for d in digests)
        return f"best {100 * best:.2f}%  candidates {len(set(digests))}  evaluated {len(self.state['cache'])}"

    # ------------------------------------------------------------------ results

    def entry(self, digest: str) -> dict:
        arch = Arch.from_dict(self.state["archs"][digest])
        cost = self.cost_model.cost(arch)
        return {"arch": arch.to_dict(), "digest": digest, "val_top1": self.state["cache"][digest],
                "macs": cost.macs, "bitops": cost.bitops, "searched_bitops": cost.searched_bitops,
                "size_bits": cost.size_bits, "layers": cost.to_dict()["layers"]}

    def result(self, uniforms: dict[str, dict | None]) -> tuple[SearchResult, list[dict]]:
        budgets = []
        for b in self.budgets:
            bs = self.state["budgets"][b.name]
            rand = bs["random"] or []
            budgets.append({
                "name": b.name,
                "limits": {m: list(v) for m, v in b.limits.items()},
                "spec": b.spec,
                "best": [self.entry(d) for d in self.ranked(bs["evaluated"])[: self.scfg.topk]],
                "uniform": uniforms[b.name],
                "random_best": self.entry(self.ranked(rand)[0]) if rand else None,
            })
        points = [
            {"digest": d, "val_top1": top1, "bitops": self.bitops(d),
             "size_bits": self.metrics(Arch.from_dict(self.state["archs"][d]))["size_bits"],
             "arch": self.state["archs"][d]}
            for d, top1 in self.state["cache"].items()
        ]
        return SearchResult(budgets, pareto_front(points), len(self.state["cache"])), points

    def write(self, result: SearchResult, points: list[dict]) -> None:
        _write_text(self.out / "results.json", json.dumps(result.to_dict(), indent=1))
        _write_text(self.out / "pareto.md", pareto_markdown(result.pareto))
        marks = []
        for b in result.budgets:
            if b["best"]:
                marks.append((f"{b['name']} best", b["best"][0]["bitops"], b["best"][0]["val_top1"]))
            u = b["uniform"]
            if u and u["val_top1"] is not None:
                marks.append((f"uniform W{u['w_bits']}A{u['a_bits']}", u["bitops"], u["val_top1"]))
        pareto_plot(self.out / "pareto.png", points, result.pareto, marks)


def search(cfg: Config, run_dir: str | Path | None = None, resume: bool = False) -> SearchResult:
    """Search ``run_dir/supernet.pt`` under every budget of ``cfg.search``; write ``run_dir/search/``.

    With ``resume``, an interrupted search continues from ``search/state.pt`` and ends with the
    same result as an uninterrupted one.
    """
    run_dir = resolve_run_dir(cfg, run_dir)
    s = _Search(cfg, run_dir, resume)
    uniforms: dict[str, dict | None] = {}
    with progress_bar(enabled=s.main) as bar:
        for b in s.budgets:
            task = bar.add_task(f"evolution {b.name}", total=s.scfg.iterations, info="")
            s.evolve(b, bar, task)
            if s.scfg.random_baseline:
                s.random_search(b, bar, bar.add_task(f"random {b.name}", total=1, info=""))
            uniforms[b.name] = s.uniform_baseline(b)
    s._save()
    result, points = s.result(uniforms)
    if s.main:
        s.write(result, points)
        for b in result.budgets:
            s.log.write(budget=b["name"], phase="done", best_val_top1=b["best"][0]["val_top1"],
                        best_bitops=b["best"][0]["bitops"],
                        uniform_val_top1=(b["uniform"] or {}).get("val_top1"),
                        random_val_top1=(b["random_best"] or {}).get("val_top1"),
                        evaluations=result.evaluations)
        console.print(chosen_table(result, s.space.names))
        console.print(f"search: {result.evaluations} archs evaluated; results in {s.out}")
    s.dist.barrier()
    return result


def chosen_table(result: SearchResult, names: Sequence[str]):
    """Rich table: the best arch of each budget, per choice point, then its scores."""
    rows: list[list[Any]] = []
    best = [b["best"][0] for b in result.budgets]
    for name in names:
        rows.append([name] + [_choice_text(e["arch"][name]) for e in best])
    rows.append(["val top-1 %"] + [round(100 * e["val_top1"], 2) for e in best])
    rows.append(["uniform top-1 %"] + [
        round(100 * b["uniform"]["val_top1"], 2) if b["uniform"] and b["uniform"]["val_top1"] is not None else None
        for b in result.budgets
    ])
    rows.append(["random best %"] + [
        round(100 * b["random_best"]["val_top1"], 2) if b["random_best"] else None for b in result.budgets
    ])
    rows.append(["BitOps (G)"] + [round(e["bitops"] / 1e9, 4) for e in best])
    rows.append(["weights (KiB)"] + [round(e["size_bits"] / 8 / 1024, 1) for e in best])
    return table("chosen archs (W bits, A bits, width)", ["layer"] + [b["name"] for b in result.budgets], rows)


def _choice_text(c: dict) -> str:
    width = c.get("width")
    return f"W{c['w_bits']}A{c['a_bits']}" + (f" x{width:g}" if width is not None else "")


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def cli_search(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    search(cfg, args.out, resume=args.resume)
    return 0


"""``qspos search``: evolutionary search of a trained supernet under one or more budgets.

Every budget gets its own evolution (and, as a baseline, a random search with as many
evaluations); all share one evaluation cache, since a candidate's accuracy does not depend on the
budget it was bred under. The state is saved after every generation, so ``--resume`` continues a
killed search to the same result. Outputs go to ``RUN_DIR/search/``.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from qspos.core.arch import Arch
from qspos.core.budget import Budget
from qspos.core.evolution import Accept, EvolutionState, generations, initial_population, random_archs, ranked
from qspos.core.fill import fill
from qspos.core.stats import binomial_se
from qspos.errors import QsposError
from qspos.results.pareto import pareto_front, pareto_markdown, pareto_plot
from qspos.results.search_results import (
    BudgetResult,
    Candidate,
    ParetoPoint,
    SearchResult,
    UniformBaseline,
    choice_text,
)
from qspos.runtime.build import build_supernet, load_supernet
from qspos.runtime.checkpoint import atomic_save
from qspos.runtime.config import Config, SearchConfig
from qspos.runtime.data import load_splits
from qspos.runtime.distributed import init_distributed, pick_device
from qspos.runtime.evaluate import search_evaluator
from qspos.runtime.files import write_json, write_text
from qspos.runtime.progress import ScoreFormat, console, progress_bar, table
from qspos.runtime.rundir import RunDir, fingerprint, holds_run_dir
from qspos.runtime.task import NO_TASK, Task
from qspos.stages.budgets import search_budgets
from qspos.stages.search_state import BudgetState, Filled, SearchState
from qspos.stages.sensitivity import measure_and_allocate, probe_progress, write_sensitivity


def state_fingerprint(cfg: Config) -> str:
    """What a saved search depends on: the supernet, the run's data (``data_identity``, as every
    stage compares it), the score candidates are ranked by, the search settings (not the device,
    which changes no result, nor the budgets of the random baseline: a resumed search adds the
    ones it lacks, and no other result depends on them)."""
    same = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, device="auto", random_baseline=True))
    return fingerprint(same, "model", "space", "quant", "data", "score", "search")


def random_baseline(scfg: SearchConfig, budget: str) -> bool:
    """Does ``budget`` get a random search as the evolution's baseline?"""
    rb = scfg.random_baseline
    return budget in rb if isinstance(rb, list) else rb


class _Search:
    """One search run: the shared cache, per-budget evolution state, and the outputs."""

    def __init__(self, cfg: Config, run: RunDir, resume: bool, task: Task):
        self.cfg, self.scfg, self.run = cfg, cfg.search, run
        self.state_path = run.search_state
        self.device = pick_device(self.scfg.device)
        self.dist = init_distributed(self.device)
        self.main = self.dist.main

        ckpt = run.supernet
        if not ckpt.is_file():
            raise QsposError(f"no trained supernet at {ckpt}: run 'qspos train' first (or pass --out)")
        if not resume and self.state_path.is_file():
            raise QsposError(
                f"{self.state_path} holds an earlier search: pass --resume to continue it, or use another --out"
            )
        supernet = load_supernet(cfg, ckpt, device=self.device, given=task.model)
        self.space = supernet.space
        self.metrics, self.budgets = search_budgets(cfg, supernet)
        self.cost_model = self.metrics.cost_model
        fp = state_fingerprint(cfg)
        self.state = SearchState.load(self.state_path, fp) if resume and self.state_path.is_file() else SearchState(fp)

        splits = load_splits(cfg.data, cfg.model, task)
        self.val_images = len(splits.val) if self.scfg.val_images is None else min(self.scfg.val_images,
                                                                                  len(splits.val))
        if len(splits.val) == 0:
            raise QsposError("data.val_size is 0: the search needs images held out of the training split")
        self.evaluator = search_evaluator(cfg, supernet, splits, self.device, self.dist, cache=self.state.cache,
                                          score=task.score)
        if self.main:
            run.record_config(cfg)
        self.log = run.metrics_log(cfg, "search", enabled=self.main)
        self._bitops: dict[str, float] = {}

    # ------------------------------------------------------------------ state

    def _save(self) -> None:
        if self.main:
            atomic_save(self.state.to_dict(), self.state_path)

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, archs: Sequence[Arch]) -> list[float]:
        for a in archs:
            self.state.archs.setdefault(a.digest(), a)
        return self.evaluator(archs)

    def bitops(self, digest: str) -> float:
        if digest not in self._bitops:
            self._bitops[digest] = self.metrics(self.state.archs[digest])["bitops"]
        return self._bitops[digest]

    def ranked(self, digests: Sequence[str]) -> list[str]:
        return ranked(digests, self.state.cache, {d: self.bitops(d) for d in set(digests)})

    def accept_fn(self, budget: Budget) -> Accept:
        return lambda arch: budget.accepts(self.metrics(arch))

    def extreme_archs(self, budget: Budget) -> list[Arch]:
        """For each limit of ``budget``, the arch at its metric's feasible extreme (the smallest
        value under an upper bound, the largest over a lower one): seeds that may meet them all."""
        return [self.metrics.extreme(metric, largest=hi is None)[1] for metric, (_, hi) in budget.limits.items()]

    # ------------------------------------------------------------------ one budget

    def evolve(self, budget: Budget, bar, task, seed: Arch | None = None) -> None:
        """The evolution under ``budget``, continuing from its saved state; ``seed`` (e.g. the
        sensitivity allocation) joins its first generation."""
        bs = self.state.budget(budget.name)
        accept = self.accept_fn(budget)
        if bs.evolution is None:
            bs.evolution = self._first_generation(budget, accept, seed)
        evo = bs.evolution
        bar.update(task, completed=evo.generation, info=self._info(bs.evaluated))
        for scores in generations(evo, self.space, self.evaluate, self.ranked, accept, self.scfg,
                                  self.scfg.iterations, self.scfg.topk):
            self._save()
            evaluated = bs.evaluated
            self.log.write(budget=budget.name, phase="evolution", generation=evo.generation,
                           best_val_top1=self.state.cache[self.ranked(evaluated)[0]],
                           mean_val_top1=sum(scores) / len(scores),
                           candidates=len(evaluated), evaluations=len(self.state.cache))
            bar.update(task, completed=evo.generation, info=self._info(evaluated))

    def _first_generation(self, budget: Budget, accept: Accept, seed: Arch | None) -> EvolutionState:
        """Uniform archs in ``budget`` (or its limits' extreme archs, when none is found), with
        ``seed`` among them when it is in the budget."""
        rng = random.Random(f"{self.scfg.seed}:evolution:{budget.name}")
        population = initial_population(self.space, rng, accept, self.scfg.population, self.scfg.max_tries,
                                        seeds=self.extreme_archs(budget))
        if seed is not None and accept(seed) and seed.digest() not in {a.digest() for a in population}:
            population = [seed, *population][: max(1, self.scfg.population)]
        if not population:
            raise QsposError(
                f"budget {budget.name}: no arch in {self.scfg.max_tries} uniform samples meets all its "
                "limits together, nor does any arch at one limit's extreme; loosen the budget"
            )
        if len(population) < self.scfg.population and self.main:
            console.print(f"[yellow]budget {budget.name}: {len(population)} of {self.scfg.population} "
                          "first-generation archs found in it (a tight budget); mutation explores from them")
        return EvolutionState(rng, population)

    def fill(self, budget: Budget) -> None:
        """Raise the evolution's pick while it stays in the budget and its score within its noise
        (``qspos.core.fill``); the steps are kept in the state, so a resumed search skips it."""
        bs = self.state.budget(budget.name)
        pool = self.pool(bs)
        if bs.fill is not None or not pool:
            return
        start = self.ranked(pool)[0]
        score = self.state.cache[start]
        noise = binomial_se(score, self.val_images) if ScoreFormat(self.cfg.score).accuracy else 0.0
        arch, steps = fill(self.space, self.state.archs[start], score, self.evaluate,
                           self.accept_fn(budget), lambda a: self.metrics(a)["bitops"], noise or 0.0)
        bs.fill = Filled(arch.digest(), steps)
        self._save()
        if self.main and steps:
            console.print(f"budget {budget.name}: the fill step raised {len(steps)} choice(s), "
                          f"{self.bitops(start) / 1e6:.1f} -> {self.bitops(arch.digest()) / 1e6:.1f} M BitOps")

    def sensitivity(self) -> dict[str, Arch]:
        """The sensitivity table and each budget's allocation (its probes go through the shared,
        saved cache, so a resumed search does not measure them again); written beside the
        search's results."""
        probes = self.scfg.sensitivity_probes
        with probe_progress(self.evaluator, self.space, probes, self.budgets, self.main, self.cfg.log.interval_s):
            result = measure_and_allocate(self.space, self.evaluate, self.metrics, self.budgets, probes)
        for name, arch in result.allocations.items():
            self.state.budget(name).sensitivity = [arch.digest()]
        self._save()
        if self.main:
            write_sensitivity(self.run, result, self.space, ScoreFormat(self.cfg.score))
        return result.allocations

    def pool(self, bs: BudgetState) -> list[str]:
        """The evaluated archs the ``search.method`` picks from, under one budget."""
        return {"evolution": bs.evaluated, "random": bs.random,
                "sensitivity": bs.sensitivity}[self.scfg.method] or []

    def random_search(self, budget: Budget, bar, task) -> None:
        """Random archs in ``budget``: as many as the evolution evaluated (its baseline), or as
        many as it would (``search.method: random``)."""
        bs = self.state.budget(budget.name)
        count = len(bs.evaluated) or self.scfg.population * self.scfg.iterations
        if bs.random is None:
            rng = random.Random(f"{self.scfg.seed}:random:{budget.name}")
            archs = random_archs(self.space, rng, self.accept_fn(budget), set(), count, self.scfg.max_tries)
            for a in archs:
                self.state.archs.setdefault(a.digest(), a)
            bs.random = [a.digest() for a in archs]
            self._save()
            if len(archs) < count and self.main:
                console.print(f"[yellow]budget {budget.name}: random search found {len(archs)} of "
                              f"{count} archs in {self.scfg.max_tries} samples; its baseline is weaker")
        digests = bs.random
        step = self.scfg.population
        bar.update(task, total=max(1, -(-len(digests) // step)))
        for i in range(0, len(digests), step):
            chunk = [self.state.archs[d] for d in digests[i : i + step]]
            fresh = any(a.digest() not in self.state.cache for a in chunk)
            self.evaluate(chunk)
            if fresh:
                self._save()
                self.log.write(budget=budget.name, phase="random", candidates=i + len(chunk),
                               best_val_top1=self.state.cache[self.ranked(digests[: i + len(chunk)])[0]],
                               evaluations=len(self.state.cache))
            bar.update(task, advance=1, info=self._info(digests[: i + len(chunk)]))

    def uniform_baseline(self, budget: Budget) -> UniformBaseline | None:
        """The uniform arch a "uniform W,A" bound refers to, evaluated when it is in the domain."""
        if budget.uniform is None:
            return None
        w, a = budget.uniform
        arch = self.space.uniform(w, a)
        in_domain = all(p.contains(arch[p.name]) for p in self.space.points)
        top1 = self.evaluate([arch])[0] if in_domain else None
        return UniformBaseline(w, a, in_domain, top1, self.metrics(arch)["bitops"])

    def _info(self, digests: Sequence[str]) -> str:
        if not digests:
            return ""
        best = max(self.state.cache[d] for d in digests)
        return (f"best {ScoreFormat(self.cfg.score).text(best)}  candidates {len(set(digests))}  "
                f"evaluated {len(self.state.cache)}")

    # ------------------------------------------------------------------ results

    def candidate(self, digest: str) -> Candidate:
        arch = self.state.archs[digest]
        cost = self.cost_model.cost(arch)
        return Candidate(arch, self.state.cache[digest], cost.macs, cost.bitops, cost.searched_bitops,
                         cost.size_bits, cost.to_dict()["layers"])

    def result(self, uniforms: dict[str, UniformBaseline | None]) -> tuple[SearchResult, list[ParetoPoint]]:
        budgets = []
        for b in self.budgets:
            bs = self.state.budget(b.name)
            rand = bs.random or []
            picks = self.ranked(self.pool(bs))
            if bs.fill is not None:  # the filled pick first, then the evolution's best
                picks = [bs.fill.pick] + [d for d in picks if d != bs.fill.pick]
            budgets.append(BudgetResult(
                name=b.name,
                limits={m: list(v) for m, v in b.limits.items()},
                spec=b.spec,
                best=[self.candidate(d) for d in picks[: self.scfg.topk]],
                uniform=uniforms[b.name],
                random_best=self.candidate(self.ranked(rand)[0]) if rand else None,
                evaluations=len(bs.evaluated),
                random_evaluations=len(rand) if bs.random is not None else None,
                fill=[step.to_dict() for step in bs.fill.steps] if bs.fill is not None else None,
            ))
        points = [
            ParetoPoint(self.state.archs[d], top1, self.bitops(d), self.metrics(self.state.archs[d])["size_bits"])
            for d, top1 in self.state.cache.items()
        ]
        return SearchResult(budgets, pareto_front(points), len(self.state.cache), self.val_images,
                            self.scfg.method), points

    def write(self, result: SearchResult, points: list[ParetoPoint]) -> None:
        write_json(self.run.search_results, result.to_dict())
        score = ScoreFormat(self.cfg.score)
        write_text(self.run.pareto_md, pareto_markdown(result.pareto, score))
        marks = []
        for b in result.budgets:
            if b.best:
                marks.append((f"{b.name} best", b.best[0].bitops, b.best[0].val_top1))
            u = b.uniform
            if u and u.val_top1 is not None:
                marks.append((f"uniform W{u.w_bits}A{u.a_bits}", u.bitops, u.val_top1))
        pareto_plot(self.run.pareto_png, points, result.pareto, marks, score=score)


@holds_run_dir
def search(cfg: Config, run_dir: str | Path | RunDir | None = None, resume: bool = False, *,
           task: Task = NO_TASK) -> SearchResult:
    """Search ``run_dir/supernet.pt`` under every budget of ``cfg.search`` (``task``: the caller's
    objects); write ``run_dir/search/``.

    With ``resume``, an interrupted search continues from ``search/state.pt`` and ends with the
    same result as an uninterrupted one.
    """
    s = _Search(cfg, RunDir.of(cfg, run_dir), resume, task)
    method = s.scfg.method
    uniforms: dict[str, UniformBaseline | None] = {}
    allocated = s.sensitivity() if method == "sensitivity" or s.scfg.sensitivity_seed else {}
    with progress_bar(enabled=s.main, interval_s=cfg.log.interval_s) as bar:
        for b in s.budgets:
            if method == "evolution":
                task = bar.add_task(f"evolution {b.name}", total=s.scfg.iterations, info="")
                s.evolve(b, bar, task, seed=allocated.get(b.name) if s.scfg.sensitivity_seed else None)
            if method == "random" or random_baseline(s.scfg, b.name):
                s.random_search(b, bar, bar.add_task(f"random {b.name}", total=1, info=""))
            if s.scfg.fill:
                s.fill(b)
            uniforms[b.name] = s.uniform_baseline(b)
    s._save()
    result, points = s.result(uniforms)
    if s.main:
        s.write(result, points)
        for b in result.budgets:
            s.log.write(budget=b.name, phase="done", best_val_top1=b.best[0].val_top1, best_bitops=b.best[0].bitops,
                        uniform_val_top1=b.uniform.val_top1 if b.uniform else None,
                        random_val_top1=b.random_best.val_top1 if b.random_best else None,
                        evaluations=result.evaluations)
        console.print(chosen_table(result, s.space.names, ScoreFormat(cfg.score)))
        console.print(f"search: {result.evaluations} archs evaluated; results in {s.run.search}")
    s.dist.barrier()
    return result


def evaluations(cfg: Config, run_dir: str | Path | RunDir | None = None,
                given: nn.Module | None = None) -> list[ParetoPoint]:
    """Every arch a search evaluated (evolution, random search and uniform baselines) with its
    supernet val top-1 and its cost, by BitOps: the pool a ranking study samples from."""
    run = RunDir.of(cfg, run_dir)
    state = SearchState.load(run.search_state)
    metrics, _ = search_budgets(cfg, build_supernet(cfg, given=given))
    points = []
    for digest, top1 in state.cache.items():
        arch = state.archs[digest]
        m = metrics(arch)
        points.append(ParetoPoint(arch, top1, m["bitops"], m["size_bits"]))
    return sorted(points, key=lambda p: (p.bitops, p.digest))


def chosen_table(result: SearchResult, names: Sequence[str], score: ScoreFormat) -> Any:
    """Rich table: the best arch of each budget, per choice point, then its scores (``score``: how
    the run's score reads)."""
    best = [b.best[0] for b in result.budgets]
    rows: list[list[Any]] = [[name] + [choice_text(e.arch[name].to_dict()) for e in best] for name in names]
    rows.append([f"val {score.name}"] + [score.text(e.val_top1) for e in best])
    rows.append([f"uniform {score.name}"] + [score.text(b.uniform.val_top1) if b.uniform else None
                                              for b in result.budgets])
    rows.append(["random best"] + [score.text(b.random_best.val_top1) if b.random_best else None
                                   for b in result.budgets])
    rows.append(["archs (evolution/random)"] + [f"{b.evaluations}/{b.random_evaluations}"
                                                if b.evaluations is not None else None for b in result.budgets])
    rows.append(["BitOps (G)"] + [round(e.bitops / 1e9, 4) for e in best])
    rows.append(["budget use"] + [f"{100 * b.budget_use:.0f}%" if b.budget_use is not None else None
                                  for b in result.budgets])
    rows.append(["fill steps"] + [len(b.fill) if b.fill is not None else None for b in result.budgets])
    rows.append(["weights (KiB)"] + [round(e.size_bits / 8 / 1024, 1) for e in best])
    return table("chosen archs (W bits, A bits, width)", ["layer"] + [b.name for b in result.budgets], rows)


"""Running a benchmark: every net of a :class:`~qspos.stages.bench.plan.Plan`, each through the
pipeline's own stage with ``resume``, skipping what is measured; the results rewritten as it goes."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qspos.core.budget import Budget
from qspos.core.metrics import ArchMetrics
from qspos.core.space import Space
from qspos.errors import QsposError
from qspos.results.search_results import ParetoPoint, SearchResult
from qspos.runtime.build import build_supernet
from qspos.runtime.config import Config, load_config
from qspos.runtime.provenance import git_commit, machine
from qspos.runtime.rundir import RunDir
from qspos.stages.bench.allocation import allocation_targets, sensitivity_current
from qspos.stages.bench.ledger import Ledger
from qspos.stages.bench.plan import DEFAULT_PLAN, BenchDir, Pair, Plan, in_space, net_name, uniform_pairs, uniform_tag
from qspos.stages.bench.records import measured
from qspos.stages.bench.results import write_results
from qspos.stages.bench.state import restore_state, save_state
from qspos.stages.bench.targets import Targets
from qspos.stages.budgets import search_budgets
from qspos.stages.finetune import Target, finetune
from qspos.stages.float_baseline import train_float
from qspos.stages.run import search_complete, supernet_complete
from qspos.stages.search import evaluations, search
from qspos.stages.sensitivity import sensitivity
from qspos.stages.train import check_trained, train_supernet

PLOT_EVERY_S = 60.0
FINETUNE_ORDER = ("searched", "sensitivity", "uniform", "random", "rank")


def seed_config(cfg: Config, seed: int, init: str) -> Config:
    """``cfg`` with every seed set to ``seed`` (the data split stays: the same test images) and
    the fine-tuning initialisation ``init``."""
    return dataclasses.replace(cfg, seed=seed, search=dataclasses.replace(cfg.search, seed=seed),
                               finetune=dataclasses.replace(cfg.finetune, init=init))


def random_where_planned(cfg: Config, plan: Plan) -> Config:
    """``cfg`` with the random baseline searched only under the budgets where ``plan`` fine-tunes a
    random-search net: each costs as much as the evolution it is compared with."""
    wanted: bool | list[str] = "random" in plan.parts
    if wanted and plan.random_budgets is not None:
        wanted = list(plan.random_budgets)
    return dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, random_baseline=wanted))


def uniform_variant(cfg: Config, pair: Pair, float_checkpoint: Path | None) -> Config:
    """A one-arch space holding uniform ``pair`` (width 1.0) for a net outside ``cfg``'s space;
    it starts from the float net when one is given, else from scratch."""
    d = cfg.to_dict()
    d["space"].update(pairs=None, weight_bits=[pair[0]], act_bits=[pair[1]], width_multipliers=[1.0])
    d["finetune"].update(init="float" if float_checkpoint else "scratch",
                         float_checkpoint=str(float_checkpoint) if float_checkpoint else None)
    return load_config(d)


def spread(points: Sequence[Any], n: int) -> list[Any]:
    """``n`` of ``points`` (sorted by BitOps) at evenly spaced ranks, the cheapest and the
    costliest included; all of them when there are no more than ``n``."""
    if len(points) <= n:
        return list(points)
    picks = sorted({round(i * (len(points) - 1) / (n - 1)) for i in range(n)})
    return [points[i] for i in picks]


def ranking_sample(plan: Plan, pool: Sequence[ParetoPoint], metrics: ArchMetrics,
                   budgets: Sequence[Budget]) -> list[ParetoPoint]:
    """``plan.rank_archs`` of the archs a search evaluated: spread over BitOps, or with
    ``plan.rank_band`` those inside that budget's band, spread over the supernet's score (so that
    the sample spans the scores the search chose between)."""
    if plan.rank_band is None:
        return spread(pool, plan.rank_archs)
    (band,) = [b for b in budgets if b.name == plan.rank_band]
    inside = sorted((p for p in pool if band.accepts(metrics(p.arch))), key=lambda p: (p.val_top1, p.digest))
    return spread(inside, plan.rank_archs)


def bench(cfg: Config, work: str | Path, plan: Plan = DEFAULT_PLAN,
          on_progress: Callable[[], object] | None = None, seeds: Sequence[int] | None = None) -> None:
    """Train every net of ``plan`` (of its ``seeds`` only, when given) into ``work`` (see the module
    doc), skipping measured ones (the float net, supernet, search and sensitivity run only when a
    net still to train needs them).
    ``on_progress`` runs after each finished piece (e.g. to rewrite the results)."""
    wd, parts, init = BenchDir(work), set(plan.parts), plan.init
    cfg = random_where_planned(cfg, plan)
    for seed in range(plan.seeds) if seeds is None else seeds:
        scfg = seed_config(cfg, seed, init)
        run, nets = wd.seed(seed), wd.policy(seed, init)
        supernet = build_supernet(scfg)
        space, (metrics, budgets) = supernet.space, search_budgets(scfg, supernet)
        pairs = uniform_pairs(plan, metrics, budgets) if "uniform" in parts else []
        variants = [(p, wd.variant(seed, init, net_name("uniform", uniform_tag(p)))) for p in pairs
                    if not in_space(space, p)]
        variants = [(p, v) for p, v in variants if not measured(v.net(net_name("uniform", uniform_tag(p))))]
        if ("float" in parts and not measured(run.float_net)) or (variants and init == "supernet"):
            train_float(scfg, run, resume=True)
            _done(on_progress)
        for p, variant in variants:
            name = net_name("uniform", uniform_tag(p))
            start = run.float_net.model if init == "supernet" else None
            finetune(uniform_variant(scfg, p, start), variant, resume=True,
                     targets=[Target(name, space.uniform(*p))])
            _done(on_progress)
        inside = [p for p in pairs if in_space(space, p)]
        searching = _searching(plan, seed, nets, inside, budgets)
        allocating = any(not measured(nets.net(net_name("sensitivity", b.name)))
                         for b in budgets if "sensitivity" in plan.kinds(b.name))
        if not (searching or allocating):
            continue
        _supernet(scfg, run, on_progress)
        targets = _search_targets(plan, scfg, run, space, inside, on_progress) if searching else []
        if searching and "ranking" in parts and seed == 0:
            targets += [Target(net_name("rank", p.digest), p.arch, p.val_top1)
                        for p in ranking_sample(plan, evaluations(scfg, run), metrics, budgets)]
        if allocating:
            if not sensitivity_current(run, metrics, budgets, scfg.search.sensitivity_probes):
                sensitivity(scfg, run)
                _done(on_progress)
            targets += allocation_targets(run, budgets)
        # one at a time, the question's nets first (searched, the allocation, the uniform nets): the
        # results grow as each net finishes, and a piece cut short has answered the most
        for t in sorted(targets, key=lambda t: FINETUNE_ORDER.index(t.name.split("-", 1)[0])):
            if not measured(nets.net(t.name)):
                finetune(scfg, nets, resume=True, targets=[t])
                _done(on_progress)


def _searching(plan: Plan, seed: int, nets: RunDir, inside: Sequence[Pair], budgets: Sequence[Budget]) -> bool:
    """Does a net of this seed that needs the search (and the supernet) still wait to be measured?
    The uniform nets ``inside`` the space count (the search scores them); the ranking sample is only
    known from the search, so it does until it has its ``rank_archs`` nets."""
    ranked = [p for p in nets.finetune_results() if p.parent.name.startswith(net_name("rank", ""))]
    if "ranking" in plan.parts and seed == 0 and len(ranked) < plan.rank_archs:
        return True
    names = [net_name("uniform", uniform_tag(p)) for p in inside]
    names += [net_name(kind, b.name) for b in budgets for kind in plan.kinds(b.name) if kind != "sensitivity"]
    return any(not measured(nets.net(n)) for n in names)


def _search_targets(plan: Plan, cfg: Config, run: RunDir, space: Space, inside: Sequence[Pair],
                    on_progress: Callable[[], object] | None) -> list[Target]:
    """The seed's search (skipped when finished with these settings) and the nets it gives: the
    uniform nets ``inside`` the space with their supernet score and the searched and random-search
    best of each budget."""
    if not search_complete(run, cfg):
        search(cfg, run, resume=True)
        _done(on_progress)
    found = SearchResult.load(run.search_results)
    targets = [Target(net_name("uniform", uniform_tag(p)), space.uniform(*p), _uniform_score(found, p))
               for p in inside]
    for b in found.budgets:
        kinds = plan.kinds(b.name)
        if "searched" in kinds:
            targets.append(Target(net_name("searched", b.name), b.best[0].arch, b.best[0].val_top1))
        if "random" in kinds and b.random_best is not None:
            targets.append(Target(net_name("random", b.name), b.random_best.arch, b.random_best.val_top1))
    return targets


def run_bench(cfg: Config, work: str | Path, out: str | Path, plan: Plan = DEFAULT_PLAN, resume: bool = False,
              command: str = "", targets: Targets | None = None, report_only: bool = False,
              state: str | Path | None = None, seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """:func:`bench` into ``work``, rewriting the results in ``out`` after every finished piece
    (so a benchmark cut short still has its partial results, judged against ``targets``) and
    recording this invocation's wall time, command, commit and machine. Without ``resume`` a
    ``work`` in use is refused; with ``report_only`` it only rewrites the results (``plan`` still
    says what the complete benchmark holds). The results show ``plan`` resolved: its uniform
    pairs and its net's label (the config's name by default). With ``state``, the files that say
    what was measured and each seed's supernet and search checkpoints (see ``bench.state``) are
    copied there after every finished piece, and with ``resume`` copied back where ``work`` lacks
    them: a fresh machine continues the benchmark from a committed ``state``. ``seeds``: train only
    these of the plan's seeds (the results still judge all of them)."""
    wd = BenchDir(work)
    bad = [s for s in seeds or () if not 0 <= s < plan.seeds]
    if bad:
        raise QsposError(f"bench: seed {bad[0]} is not one of the plan's seeds 0..{plan.seeds - 1}")
    if not (resume or report_only) and wd.path.exists() and any(wd.path.iterdir()):
        raise QsposError(f"{wd.path} already holds a benchmark: pass --resume to continue it, or choose another --out")
    if state is not None and (resume or report_only):
        restore_state(state, work)
    provenance = {"command": command, "commit": git_commit(), "machine": machine()}
    ledger = None if report_only else Ledger(work, **provenance)
    metrics, budgets = search_budgets(cfg, build_supernet(cfg))
    plan.check_budgets(budgets)
    plan = dataclasses.replace(plan, uniform=tuple(uniform_pairs(plan, metrics, budgets)), net=plan.net or cfg.name)
    plotted = -math.inf

    def progress(final: bool = False) -> dict[str, Any]:
        nonlocal plotted
        if ledger is not None:
            ledger.update()
        plots = final or time.monotonic() - plotted > PLOT_EVERY_S  # a plot costs seconds: not after every tiny net
        plotted = time.monotonic() if plots else plotted
        if state is not None and ledger is not None:
            save_state(work, state)
        return write_results(cfg, work, out, plan, budgets, provenance, plots, targets)

    if ledger is None:
        return progress(final=True)
    ledger.update()  # on the books from the start
    try:
        bench(cfg, work, plan, on_progress=progress, seeds=seeds)
    finally:  # an interrupted piece's wall time counts too
        ledger.update()
    return progress(final=True)


def _done(on_progress: Callable[[], object] | None) -> None:
    if on_progress is not None:
        on_progress()


def _uniform_score(found: SearchResult, pair: Pair) -> float | None:
    """The supernet val top-1 the search measured for uniform ``pair`` (a budget's reference), if any."""
    for b in found.budgets:
        if b.uniform and (b.uniform.w_bits, b.uniform.a_bits) == pair:
            return b.uniform.val_top1
    return None


def _supernet(cfg: Config, run: RunDir, on_progress: Callable[[], object] | None) -> None:
    """The seed's supernet, skipped when finished with these settings."""
    if supernet_complete(run.supernet):
        check_trained(cfg, run)
    else:
        train_supernet(cfg, run, resume=True)
        _done(on_progress)

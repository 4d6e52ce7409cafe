"""``qspos bench``: accuracy against BitOps with fine-tuned baselines over seeds, and how well
the supernet ranks archs.

For each seed, into ``WORK/seed<S>/`` (a run directory: ``supernet.pt``, ``search/``,
``float/``, ``finetune/<net>/``):

- ``float``: the backbone unquantized, trained from scratch with the ``float`` recipe;
- ``uniform-w<k>a<k>`` for k in :data:`UNIFORM_BITS`;
- ``searched-<budget>``: the evolution's best arch of each budget;
- ``random-<budget>``: the random search's best (as many evaluations as the evolution);
- ``rank-<digest>`` (first seed only): archs spread over the BitOps range of everything the
  search evaluated, for Kendall tau / Spearman rho between supernet val top-1 and test top-1.

Every quantized net is fine-tuned with the same ``finetune`` section and initialisation policy:
``supernet`` (inherited weights and thresholds) or ``scratch`` (nets under ``seed<S>/scratch/``).
A uniform net whose bits are outside the space (8-bit in a {2,3,4} space) has no supernet
weights: it is its own run directory (``.../variants/uniform-w8a8/``, a one-arch space) and
starts from the seed's float net under the ``supernet`` policy, from scratch under ``scratch``
(its ``init`` says which). Each stage is the pipeline's own (``train_supernet``, ``search``,
``finetune``, ``train_float``) with ``resume``: a killed net goes on from its checkpoint, and a
measured net (its ``result.json``) is never redone, even with its checkpoints gone, so the result
files alone, copied into an empty work directory, continue a benchmark on another machine (the
supernet and search are retrained only for a seed with nets still to measure). :func:`collect`
reads whatever is measured into the results.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qspos.core.budget import Budget
from qspos.core.stats import binomial_se
from qspos.errors import QsposError
from qspos.runtime.build import build_supernet
from qspos.runtime.config import Config, load_config
from qspos.runtime.files import atomic_path, write_json, write_text
from qspos.runtime.progress import console
from qspos.runtime.provenance import git_commit, machine
from qspos.runtime.rundir import NetDir, RunDir
from qspos.stages.budgets import search_budgets
from qspos.stages.finetune import FinetuneResult, Target, finetune
from qspos.stages.float_baseline import FloatResult, train_float
from qspos.stages.run import search_complete, supernet_complete
from qspos.stages.search import evaluations, search
from qspos.stages.search_results import SearchResult
from qspos.stages.train import check_trained, train_supernet

UNIFORM_BITS = (2, 3, 4, 8)
PARTS = ("float", "uniform", "searched", "random", "ranking")
INITS = ("supernet", "scratch")
RANK_ARCHS = 16
PLOT_EVERY_S = 60.0
TOP_K = (3, 5, 8)
# the issue's targets: float top-1; W4A4's gap to float; searched minus uniform (at every budget,
# and at the 2-bit one); Kendall tau; hours of the whole benchmark; seeds a mean needs
TARGET = {"float_top1": 0.935, "w4a4_gap": 0.010, "searched_gain": 0.0, "searched_gain_2bit": 0.010,
          "kendall_tau": 0.5, "wall_hours": 4.0, "seeds": 3}


@dataclass(frozen=True)
class Plan:
    """What a benchmark trains: seeds 0..seeds-1, the quantized nets' init policy, which kinds of
    net, the size of the ranking sample and the bits of the uniform nets."""

    seeds: int = 3
    init: str = "supernet"
    parts: tuple[str, ...] = PARTS
    rank_archs: int = RANK_ARCHS
    uniform_bits: tuple[int, ...] = UNIFORM_BITS

    def __post_init__(self) -> None:
        unknown = sorted(set(self.parts) - set(PARTS))
        if unknown:
            raise QsposError(f"bench: unknown part {unknown[0]!r} (known: {', '.join(PARTS)})")
        if self.init not in INITS:
            raise QsposError(f"bench: init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.seeds < 1 or self.rank_archs < 2:
            raise QsposError(f"bench: needs seeds >= 1 and rank archs >= 2, got {self.seeds} and {self.rank_archs}")



# ---------------------------------------------------------------------------- where things live


class BenchDir:
    """Every path of a benchmark's work directory (checkpoints; the results go elsewhere)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def ledger(self) -> Path:
        """Wall time of every invocation (the benchmark runs in pieces)."""
        return self.path / "ledger.json"

    def seeds(self) -> list[int]:
        return sorted(int(p.name[4:]) for p in self.path.glob("seed*") if p.name[4:].isdigit())

    def seed(self, seed: int) -> RunDir:
        """The seed's run: supernet, search, float net and the nets of the ``supernet`` policy."""
        return RunDir(self.path / f"seed{seed}")

    def policy(self, seed: int, init: str) -> RunDir:
        """Where the quantized nets of ``init`` are fine-tuned."""
        return self.seed(seed) if init == "supernet" else RunDir(self.seed(seed).path / init)

    def variant(self, seed: int, init: str, name: str) -> RunDir:
        """A net outside the space (its own one-arch run directory)."""
        return RunDir(self.policy(seed, init).path / "variants" / name)


def seed_config(cfg: Config, seed: int, init: str) -> Config:
    """``cfg`` with every seed set to ``seed`` (the data split stays: the same test images) and
    the fine-tuning initialisation ``init``."""
    return dataclasses.replace(cfg, seed=seed, search=dataclasses.replace(cfg.search, seed=seed),
                               finetune=dataclasses.replace(cfg.finetune, init=init))


def uniform_variant(cfg: Config, bits: int, float_checkpoint: Path | None) -> Config:
    """A one-arch space holding uniform ``bits``-bit (width 1.0) for a net outside ``cfg``'s space;
    it starts from the float net when one is given, else from scratch."""
    d = cfg.to_dict()
    d["space"].update(pairs=None, weight_bits=[bits], act_bits=[bits], width_multipliers=[1.0])
    d["finetune"].update(init="float" if float_checkpoint else "scratch",
                         float_checkpoint=str(float_checkpoint) if float_checkpoint else None)
    return load_config(d)


def net_name(kind: str, tag: str) -> str:
    return f"{kind}-{tag}"


def uniform_tag(bits: int) -> str:
    return f"w{bits}a{bits}"


# ---------------------------------------------------------------------------- running it


def bench(cfg: Config, work: str | Path, plan: Plan = Plan(), on_progress: Callable[[], object] | None = None) -> None:
    """Train every net of ``plan`` into ``work`` (see the module doc), skipping measured ones (the
    float net, supernet and search run only when a net still to train needs them). ``on_progress``
    runs after each finished piece (e.g. to rewrite the results)."""
    wd, parts, init = BenchDir(work), set(plan.parts), plan.init
    for seed in range(plan.seeds):
        scfg = seed_config(cfg, seed, init)
        run, nets = wd.seed(seed), wd.policy(seed, init)
        supernet = build_supernet(scfg)
        space, budgets = supernet.space, search_budgets(scfg, supernet)[1]
        outside = [k for k in plan.uniform_bits if not _in_space(space, k)] if "uniform" in parts else []
        variants = [(k, wd.variant(seed, init, net_name("uniform", uniform_tag(k)))) for k in outside]
        variants = [(k, v) for k, v in variants if not measured(v.net(net_name("uniform", uniform_tag(k))))]
        if ("float" in parts and not measured(run.float_net)) or (variants and init == "supernet"):
            train_float(scfg, run, resume=True)
            _done(on_progress)
        for k, variant in variants:
            name = net_name("uniform", uniform_tag(k))
            start = run.float_net.model if init == "supernet" else None
            finetune(uniform_variant(scfg, k, start), variant, resume=True,
                     targets=[Target(name, space.uniform(k, k))])
            _done(on_progress)
        if not _waiting(plan, seed, nets, space, budgets):
            continue
        _supernet_and_search(scfg, run, on_progress)
        found = SearchResult.load(run.search_results)
        targets = []
        if "uniform" in parts:
            targets += [Target(net_name("uniform", uniform_tag(k)), space.uniform(k, k), _uniform_score(found, k))
                        for k in plan.uniform_bits if _in_space(space, k)]
        for b in found.budgets:
            if "searched" in parts:
                targets.append(Target(net_name("searched", b.name), b.best[0].arch, b.best[0].val_top1))
            if "random" in parts and b.random_best is not None:
                targets.append(Target(net_name("random", b.name), b.random_best.arch, b.random_best.val_top1))
        if "ranking" in parts and seed == 0:
            targets += [Target(net_name("rank", p.digest), p.arch, p.val_top1)
                        for p in spread(evaluations(scfg, run), plan.rank_archs)]
        for t in targets:  # one at a time: the results grow as each net finishes
            if not measured(nets.net(t.name)):
                finetune(scfg, nets, resume=True, targets=[t])
                _done(on_progress)


def measured(net: NetDir) -> bool:
    """Is this net's ``result.json`` there? That is all the benchmark needs of a finished net: its
    checkpoints may be gone (a fresh machine holding only the committed results)."""
    return net.result.is_file()


def _waiting(plan: Plan, seed: int, nets: RunDir, space: Any, budgets: Sequence[Budget]) -> bool:
    """Does a net of this seed that needs the supernet (and the search) still wait to be measured?
    The ranking sample is only known from the search, so it always does."""
    parts = set(plan.parts)
    if "ranking" in parts and seed == 0:
        return True
    names = [net_name("uniform", uniform_tag(k)) for k in plan.uniform_bits
             if "uniform" in parts and _in_space(space, k)]
    names += [net_name(kind, b.name) for b in budgets for kind in ("searched", "random") if kind in parts]
    return any(not measured(nets.net(n)) for n in names)


def run_bench(cfg: Config, work: str | Path, out: str | Path, plan: Plan = Plan(), resume: bool = False,
              command: str = "") -> dict[str, Any]:
    """:func:`bench` into ``work``, rewriting the results in ``out`` after every finished piece
    (so a benchmark cut short still has its partial results) and recording this invocation's
    wall time, command, commit and machine. Without ``resume`` a ``work`` in use is refused;
    with no ``plan.parts`` it only rewrites the results."""
    wd = BenchDir(work)
    if not resume and wd.path.exists() and any(wd.path.iterdir()):
        raise QsposError(f"{wd.path} already holds a benchmark: pass --resume to continue it, or choose another --out")
    provenance = {"command": command, "commit": git_commit(), "machine": machine()}
    ledger = Ledger(work, **provenance) if plan.parts else None
    budgets = search_budgets(cfg, build_supernet(cfg))[1]
    plotted = -math.inf

    def progress(final: bool = False) -> dict[str, Any]:
        nonlocal plotted
        if ledger is not None:
            ledger.update()
        plots = final or time.monotonic() - plotted > PLOT_EVERY_S  # a plot costs seconds: not after every tiny net
        plotted = time.monotonic() if plots else plotted
        return write_results(cfg, work, out, plan, budgets, provenance, plots)

    if ledger is not None:
        ledger.update()  # on the books from the start
    try:
        bench(cfg, work, plan, on_progress=progress)
    finally:  # an interrupted piece's wall time counts too
        if ledger is not None:
            ledger.update()
    return progress(final=True)


def _done(on_progress: Callable[[], object] | None) -> None:
    if on_progress is not None:
        on_progress()


def _in_space(space: Any, bits: int) -> bool:
    arch = space.uniform(bits, bits)
    return all(p.contains(arch[p.name]) for p in space.points)


def _uniform_score(found: SearchResult, bits: int) -> float | None:
    """The supernet val top-1 the search measured for uniform ``bits`` (a budget's reference)."""
    for b in found.budgets:
        if b.uniform and (b.uniform.w_bits, b.uniform.a_bits) == (bits, bits):
            return b.uniform.val_top1
    return None


def _supernet_and_search(cfg: Config, run: RunDir, on_progress: Callable[[], object] | None) -> None:
    """The seed's supernet and search, each skipped when finished with these settings."""
    if supernet_complete(run.supernet):
        check_trained(cfg, run)
    else:
        train_supernet(cfg, run, resume=True)
        _done(on_progress)
    if not search_complete(run, cfg):
        search(cfg, run, resume=True)
        _done(on_progress)


def spread(points: Sequence[Any], n: int) -> list[Any]:
    """``n`` of ``points`` (sorted by BitOps) at evenly spaced ranks, the cheapest and the
    costliest included; all of them when there are no more than ``n``."""
    if len(points) <= n:
        return list(points)
    picks = sorted({round(i * (len(points) - 1) / (n - 1)) for i in range(n)})
    return [points[i] for i in picks]


# ---------------------------------------------------------------------------- reading the results


@dataclass(frozen=True)
class NetRecord:
    """One finished net of the benchmark, as ``results.json`` lists it."""

    kind: str  # float | uniform | searched | random | rank
    budget: str | None
    bits: int | None
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
    searched_bitops: int | None = None  # the search's cost model (what a budget limits)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _record(seed: int, r: FinetuneResult) -> NetRecord:
    kind, tag = r.name.split("-", 1)
    bits = int(tag[1:].split("a")[0]) if kind == "uniform" else None
    n = r.test_images or 0
    return NetRecord(kind, tag if kind in ("searched", "random") else None, bits, seed, r.init, r.name, r.bitops,
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


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def summarise(nets: Sequence[NetRecord]) -> list[dict[str, Any]]:
    """Mean ± std over seeds of each kind of net (float, uniform per bits, searched/random per budget)."""
    groups: dict[tuple, list[NetRecord]] = {}
    for n in nets:
        if n.kind != "rank":
            groups.setdefault((n.kind, n.budget, n.bits), []).append(n)
    order = {k: i for i, k in enumerate(("float", "uniform", "searched", "random"))}
    rows = []
    for (kind, budget, bits), group in sorted(groups.items(), key=lambda kv: (order[kv[0][0]], str(kv[0][1]),
                                                                                kv[0][2] or 0)):
        mean, std = mean_std([n.test_top1 for n in group])
        rows.append({"kind": kind, "budget": budget, "bits": bits, "seeds": sorted(n.seed for n in group),
                     "n": len(group), "test_top1_mean": mean, "test_top1_std": std,
                     "bitops_mean": sum(n.bitops for n in group) / len(group),
                     "size_bits_mean": sum(n.size_bits for n in group) / len(group),
                     "per_seed": [{"seed": n.seed, "test_top1": n.test_top1, "se": n.se} for n in group]})
    return rows


def diagnosis(nets: Sequence[NetRecord], budgets: Sequence[Budget]) -> list[dict[str, Any]]:
    """Per kind of net the supernet scored, the means that explain its test accuracy: the search's score
    minus the net's val top-1 before fine-tuning (the pick's luck, seen on the larger val split:
    the winner's curse), what fine-tuning adds to val top-1, and the share of its budget's BitOps
    the arch spends."""
    limit = {b.name: b.limits.get("bitops", (None, None))[1] for b in budgets}
    out = []
    for kind in ("uniform", "searched", "random", "rank"):
        group = [n for n in nets if n.kind == kind and n.val_top1_before is not None
                 and n.search_val_top1 is not None]  # the nets the supernet scored (not W8A8)
        curse = [n.search_val_top1 - n.val_top1_before for n in group]
        gain = [n.val_top1 - n.val_top1_before for n in group if n.val_top1 is not None]
        use = [n.searched_bitops / limit[n.budget] for n in group if limit.get(n.budget) and n.searched_bitops]
        if group:
            out.append({"kind": kind, "n": len(group), "search_minus_val_before": _mean(curse),
                        "finetune_val_gain": _mean(gain), "budget_use": _mean(use),
                        "budget_use_range": [min(use), max(use)] if use else None})
    return out


def _mean(values: Sequence[float]) -> float | None:
    return mean_std(values)[0] if values else None


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties in either variable accounted for)."""
    concordant = discordant = tx = ty = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tx += 1
            elif dy == 0:
                ty += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + tx) * (concordant + discordant + ty))
    return (concordant - discordant) / denom if denom else math.nan


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation of the (tie-averaged) ranks."""
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / var if var else math.nan


def top_k_overlap(x: Sequence[float], y: Sequence[float], k: int) -> float:
    """Share of the ``k`` best by ``x`` that are among the ``k`` best by ``y``."""
    best = lambda v: set(sorted(range(len(v)), key=lambda i: -v[i])[:k])  # noqa: E731
    return len(best(x) & best(y)) / k


def ranking(nets: Sequence[NetRecord]) -> dict[str, Any]:
    """How the supernet's val top-1 (after BN recalibration) ranks the ranking sample's nets
    against their fine-tuned test top-1."""
    sample = [n for n in nets if n.kind == "rank" and n.search_val_top1 is not None]
    out: dict[str, Any] = {"n": len(sample), "kendall_tau": None, "spearman_rho": None, "top_k_overlap": {},
                           "archs": [{"name": n.name, "bitops": n.bitops, "supernet_val_top1": n.search_val_top1,
                                      "test_top1": n.test_top1, "se": n.se} for n in sample]}
    if len(sample) >= 2:
        x, y = [n.search_val_top1 for n in sample], [n.test_top1 for n in sample]
        out.update(kendall_tau=_finite(kendall_tau(x, y)), spearman_rho=_finite(spearman_rho(x, y)),
                   top_k_overlap={str(k): top_k_overlap(x, y, k) for k in TOP_K if k < len(sample)})
    return out


def _finite(v: float) -> float | None:
    """None for a correlation that is not defined (every value tied)."""
    return None if math.isnan(v) else v


def _paired(nets: Sequence[NetRecord], a: Callable[[NetRecord], bool],
            b: Callable[[NetRecord], bool]) -> list[float]:
    """Per seed where both exist: a's test top-1 minus b's."""
    first = {n.seed: n.test_top1 for n in nets if a(n)}
    second = {n.seed: n.test_top1 for n in nets if b(n)}
    return [first[s] - second[s] for s in sorted(first.keys() & second.keys())]


def _target(name: str, want: str, value: float | None, met: bool | None, by: float | None, note: str) -> dict:
    return {"target": name, "want": want, "value": value, "met": met, "by": by, "note": note}


def targets(nets: Sequence[NetRecord], rank: dict[str, Any], budgets: Sequence[Budget],
            wall_seconds: float, complete: bool, rank_archs: int = RANK_ARCHS) -> list[dict[str, Any]]:
    """Each target of the benchmark: met (True), missed (False) or not measurable yet (None),
    and by how much (the value minus the threshold: positive is the margin, negative the miss)."""
    t = TARGET
    out = []
    fl = [n.test_top1 for n in nets if n.kind == "float"]
    fm = mean_std(fl)[0] if fl else None
    out.append(_target("float test top-1", f">= {100 * t['float_top1']:.1f} %", fm,
                       None if fm is None else fm >= t["float_top1"],
                       None if fm is None else fm - t["float_top1"], f"{len(fl)} seed(s)"))
    gaps = _paired(nets, lambda n: n.kind == "float", lambda n: n.kind == "uniform" and n.bits == 4)
    gap = mean_std(gaps)[0] if gaps else None
    out.append(_target("uniform W4A4 below float", f"<= {100 * t['w4a4_gap']:.1f} points", gap,
                       None if gap is None else gap <= t["w4a4_gap"],
                       None if gap is None else t["w4a4_gap"] - gap, f"{len(gaps)} paired seed(s)"))
    for b in budgets:
        if b.uniform is None:
            continue
        w, a = b.uniform
        diffs = _paired(nets, lambda n, b=b: n.kind == "searched" and n.budget == b.name,
                        lambda n, w=w, a=a: n.kind == "uniform" and n.bits == w == a)
        need = t["searched_gain_2bit"] if (w, a) == (2, 2) else t["searched_gain"]
        d = mean_std(diffs)[0] if diffs else None
        enough = len(diffs) >= t["seeds"]
        out.append(_target(f"searched - uniform W{w}A{a} at {b.name}", f">= +{100 * need:.1f} points over "
                           f">= {t['seeds']} seeds", d, None if d is None or not enough else d >= need,
                           None if d is None else d - need, f"{len(diffs)} paired seed(s)"))
        rdiffs = _paired(nets, lambda n, b=b: n.kind == "searched" and n.budget == b.name,
                         lambda n, b=b: n.kind == "random" and n.budget == b.name)
        r = mean_std(rdiffs)[0] if rdiffs else None
        out.append(_target(f"evolution - random search at {b.name}", "> 0 points", r,
                           None if r is None else r > 0, r, f"{len(rdiffs)} paired seed(s)"))
    tau = rank["kendall_tau"]
    out.append(_target("Kendall tau (supernet val vs fine-tuned test)", f">= {t['kendall_tau']}", tau,
                       None if tau is None or rank["n"] < rank_archs else tau >= t["kendall_tau"],
                       None if tau is None else tau - t["kendall_tau"], f"{rank['n']} archs"))
    hours = wall_seconds / 3600
    out.append(_target("whole benchmark wall time", f"<= {t['wall_hours']:.0f} h", hours,
                       hours <= t["wall_hours"] if complete or hours > t["wall_hours"] else None,
                       t["wall_hours"] - hours, "complete" if complete else "so far; partial"))
    return out


def expected(cfg: Config, plan: Plan) -> list[str]:
    """``seed/name`` of every net a complete benchmark has (the ranking sample counted as one)."""
    names = ["float"] + [net_name("uniform", uniform_tag(k)) for k in plan.uniform_bits]
    for b in cfg.search.budgets:
        names += [net_name("searched", b["name"]), net_name("random", b["name"])]
    return [f"{s}/{n}" for s in range(plan.seeds) for n in names] + [f"0/rank x{plan.rank_archs}"]


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


def collect(cfg: Config, work: str | Path, plan: Plan, budgets: Sequence[Budget]) -> dict[str, Any]:
    """``results.json``'s content from whatever is finished in ``work``."""
    nets = finished_nets(work, plan.init)
    rank = ranking(nets)
    sample = f"0/rank x{plan.rank_archs}"
    have = {f"{n.seed}/{n.name}" for n in nets} | ({sample} if rank["n"] >= plan.rank_archs else set())
    missing = [e for e in expected(cfg, plan) if e not in have]
    ledger = read_ledger(work)
    wall = sum(e["wall_seconds"] for e in ledger)
    return {
        "partial": bool(missing), "missing": missing, "plan": dataclasses.asdict(plan),
        "budgets": [{"name": b.name, "uniform": list(b.uniform) if b.uniform else None,
                     "bitops_max": b.limits.get("bitops", (None, None))[1]} for b in budgets],
        "nets": [n.to_dict() for n in nets], "summary": summarise(nets), "ranking": rank,
        "searches": search_counts(work), "diagnosis": diagnosis(nets, budgets),
        "targets": targets(nets, rank, budgets, wall, not missing, plan.rank_archs),
        "wall_seconds": wall, "invocations": ledger,
    }


# ---------------------------------------------------------------------------- the ledger


def read_ledger(work: str | Path) -> list[dict[str, Any]]:
    path = BenchDir(work).ledger
    return json.loads(path.read_text()) if path.is_file() else []


class Ledger:
    """Records this invocation's wall time in the work directory's ledger, updated as it runs;
    invocations running at once (pieces on different cores) each keep their own entry."""

    def __init__(self, work: str | Path, command: str, commit: str | None, machine: str):
        self.work, self.path = work, BenchDir(work).ledger
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        self.entry = {"id": f"{started} pid {os.getpid()}", "command": command, "commit": commit,
                      "machine": machine, "started": started, "wall_seconds": 0.0}
        self.t0 = time.perf_counter()

    def update(self) -> None:
        self.entry["wall_seconds"] = round(time.perf_counter() - self.t0, 1)
        others = [e for e in read_ledger(self.work) if e.get("id") != self.entry["id"]]
        write_json(self.path, [*others, self.entry])


# ---------------------------------------------------------------------------- writing the results


def _pct(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f}"


def _signed(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:+.2f}"


def markdown(res: dict[str, Any], provenance: dict[str, Any]) -> str:
    """The results as Markdown: the accuracy table, the targets, the ranking, and provenance."""
    head = "# Accuracy against BitOps" + (" (PARTIAL: not every net is trained yet)" if res["partial"] else "")
    plan = res["plan"]
    lines = [head, "", f"Fine-tuning init: `{plan['init']}`; {plan['seeds']} seed(s) asked; test top-1 in %, "
             "mean ± std over seeds (std needs two seeds), and each seed's value ± its binomial standard error.",
             "", "| net | BitOps (M) | weights (KiB) | seeds | test top-1 | per seed |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for row in res["summary"]:
        label = {"float": "float (32-bit)", "uniform": f"uniform W{row['bits']}A{row['bits']}"}.get(
            row["kind"], f"{row['kind']} @ {row['budget']}")
        std = "" if row["test_top1_std"] is None else f" ± {_pct(row['test_top1_std'])}"
        per = ", ".join(f"s{p['seed']}: {_pct(p['test_top1'])} ± {_pct(p['se'])}" for p in row["per_seed"])
        lines.append(f"| {label} | {row['bitops_mean'] / 1e6:.1f} | {row['size_bits_mean'] / 8 / 1024:.1f} | "
                     f"{row['n']} | {_pct(row['test_top1_mean'])}{std} | {per} |")
    lines += ["", "## Targets", "", "| target | wanted | measured | status | margin |",
              "| --- | --- | ---: | --- | ---: |"]
    for t in res["targets"]:
        status = {True: "met", False: "**missed**", None: "not yet measurable"}[t["met"]]
        hours = "wall time" in t["target"]
        value = "–" if t["value"] is None else (f"{t['value']:.2f} h" if hours else
                                                f"{t['value']:.3f}" if "tau" in t["target"] else
                                                f"{100 * t['value']:.2f}")
        by = "–" if t["by"] is None else (f"{t['by']:+.2f} h" if hours else f"{t['by']:+.3f}" if "tau" in t["target"]
                                          else _signed(t["by"]))
        lines.append(f"| {t['target']} | {t['want']} | {value} | {status} ({t['note']}) | {by} |")
    r = res["ranking"]
    lines += ["", "## Ranking quality", ""]
    if r["kendall_tau"] is None:
        lines.append(f"{r['n']} ranking nets fine-tuned: not measurable yet.")
    else:
        overlap = ", ".join(f"top-{k}: {v:.2f}" for k, v in r["top_k_overlap"].items())
        lines.append(f"{r['n']} archs spread over BitOps: Kendall τ = {r['kendall_tau']:.3f}, Spearman ρ = "
                     f"{r['spearman_rho']:.3f}; top-k overlap {overlap or '–'}.")
    if res.get("searches"):
        lines += ["", "## Search evaluations", "", "Archs evaluated per seed (evolution / random search):", ""]
        for budget in dict.fromkeys(c["budget"] for c in res["searches"]):
            counts = [f"s{c['seed']}: {c['evaluations'] or '?'} / {c['random_evaluations'] or 0}"
                      for c in res["searches"] if c["budget"] == budget]
            lines.append(f"- {budget}: " + ", ".join(counts))
    if res.get("diagnosis"):
        lines += ["", "## Diagnosis", "", "Means per kind of net (val top-1 on the val split, points; budget use: "
                  "the arch's BitOps over its budget's limit):", "",
                  "| nets | n | search score − val before fine-tuning | fine-tuning val gain | budget use |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for d in res["diagnosis"]:
            use = "–" if d["budget_use"] is None else (f"{100 * d['budget_use']:.0f} % ("
                                                       f"{100 * d['budget_use_range'][0]:.0f}–"
                                                       f"{100 * d['budget_use_range'][1]:.0f} %)")
            lines.append(f"| {d['kind']} | {d['n']} | {_signed(d['search_minus_val_before'])} | "
                         f"{_signed(d['finetune_val_gain'])} | {use} |")
    if res["missing"]:
        lines += ["", f"Not trained yet ({len(res['missing'])}): " + ", ".join(f"`{m}`" for m in res["missing"])]
    lines += ["", "## Provenance", "", f"- command: `{provenance['command']}`", f"- commit: `{provenance['commit']}`",
              f"- machine: {provenance['machine']}", f"- written: {provenance['date']}",
              f"- wall time, all invocations: {res['wall_seconds'] / 3600:.2f} h over {len(res['invocations'])} "
              "invocation(s)", "", "![accuracy against BitOps](accuracy.png)", "",
              "![supernet ranking](ranking.png)", ""]
    return "\n".join(lines)


_STYLE = {"uniform": ("s", "tab:gray"), "searched": ("*", "tab:red"), "random": ("^", "tab:green")}


def accuracy_plot(path: str | Path, res: dict[str, Any]) -> None:
    """Every net as a point, mean ± std per kind, budgets as vertical lines, float as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    nets = res["nets"]
    for kind, (marker, color) in _STYLE.items():
        pts = [n for n in nets if n["kind"] == kind]
        if pts:
            ax.scatter([n["bitops"] / 1e6 for n in pts], [100 * n["test_top1"] for n in pts], marker=marker,
                       c=color, alpha=0.35, s=25)
        rows = [r for r in res["summary"] if r["kind"] == kind]
        for i, row in enumerate(rows):
            x, y = row["bitops_mean"] / 1e6, 100 * row["test_top1_mean"]
            ax.errorbar([x], [y], yerr=[100 * (row["test_top1_std"] or 0)], fmt=marker, c=color, ms=8, capsize=4,
                        label=kind if i == 0 else None)
            ax.annotate(f"W{row['bits']}A{row['bits']}" if kind == "uniform" else row["budget"], (x, y), fontsize=7,
                        color=color, textcoords="offset points", xytext=(5, 4))
    ranked = [n for n in nets if n["kind"] == "rank"]
    if ranked:
        ax.scatter([n["bitops"] / 1e6 for n in ranked], [100 * n["test_top1"] for n in ranked], marker=".",
                   c="tab:blue", alpha=0.5, label="ranking sample")
    for row in (r for r in res["summary"] if r["kind"] == "float"):
        ax.axhline(100 * row["test_top1_mean"], c="k", lw=1, label=f"float ({_pct(row['test_top1_mean'])} %)")
    for i, b in enumerate(x for x in res["budgets"] if x["bitops_max"]):
        ax.axvline(b["bitops_max"] / 1e6, ls="--", lw=0.8, c="0.5", label="budgets" if i == 0 else None)
        ax.annotate(b["name"], (b["bitops_max"] / 1e6, 0.02), xycoords=("data", "axes fraction"), rotation=90,
                    fontsize=7, color="0.4", xytext=(2, 0), textcoords="offset points")
    ax.set_xscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel("BitOps (M, log scale)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("fine-tuned nets" + (" (partial)" if res["partial"] else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path, res)


def ranking_plot(path: str | Path, res: dict[str, Any]) -> None:
    """Supernet val top-1 against fine-tuned test top-1 of the ranking sample."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = res["ranking"]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    if r["archs"]:
        ax.errorbar([100 * a["supernet_val_top1"] for a in r["archs"]], [100 * a["test_top1"] for a in r["archs"]],
                    yerr=[100 * (a["se"] or 0.0) for a in r["archs"]], fmt="o", ms=4, capsize=2)
    title = (f"n = {r['n']}, Kendall τ = {r['kendall_tau']:.2f}, Spearman ρ = {r['spearman_rho']:.2f}"
             if r["kendall_tau"] is not None else f"n = {r['n']}: " + (
                 "not measured yet" if r["n"] < 2 else "undefined (every value tied)"))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("supernet val top-1 (%, BN recalibrated)")
    ax.set_ylabel("fine-tuned test top-1 (%)")
    ax.grid(alpha=0.3)
    _save(fig, path, res)


def _save(fig: Any, path: str | Path, res: dict[str, Any]) -> None:
    """Write the figure, stamped with where its numbers come from (commit, date)."""
    import matplotlib.pyplot as plt

    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.text(0.99, 0.005, f"commit {res['commit']}, {res['date']}, {res['wall_seconds'] / 3600:.2f} h of benchmark "
             f"wall time; see results.md", ha="right", va="bottom", fontsize=6, color="0.4")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def write_results(cfg: Config, work: str | Path, out: str | Path, plan: Plan, budgets: Sequence[Budget],
                  provenance: dict[str, Any], plots: bool = True) -> dict[str, Any]:
    """``out/results.json``, ``results.md`` and (with ``plots``) ``accuracy.png`` and
    ``ranking.png`` from what is finished in ``work``; ``provenance`` holds the command, commit
    and machine."""
    out = Path(out)
    res = collect(cfg, work, plan, budgets)
    provenance = {**provenance, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    res = {**provenance, **res}
    write_json(out / "results.json", res)
    write_text(out / "results.md", markdown(res, provenance))
    if plots:
        accuracy_plot(out / "accuracy.png", res)
        ranking_plot(out / "ranking.png", res)
    partial = " (partial)" if res["partial"] else ""
    console.print(f"bench: {len(res['nets'])} nets finished, results in {out}{partial}")
    return res

"""What a benchmark trains (seeds, init policy, kinds of net) and where each piece lives in its
work directory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qspos.core.budget import Budget
from qspos.core.metrics import ArchMetrics
from qspos.core.space import Space
from qspos.errors import QsposError
from qspos.runtime.rundir import RunDir

PARTS = ("float", "uniform", "searched", "random", "sensitivity", "ranking")
INITS = ("supernet", "scratch")
BUDGET_KINDS = ("searched", "random", "sensitivity")  # the kinds of net made for one budget (each a part)
RANK_ARCHS = 16
Pair = tuple[int, int]  # (w_bits, a_bits) of a uniform net


@dataclass(frozen=True)
class Plan:
    """What a benchmark trains: seeds 0..seeds-1, the quantized nets' init policy, which kinds of
    net, the size of the ranking sample, the (w_bits, a_bits) pairs of the uniform nets (None:
    every pair some budget needs, see :func:`uniform_pairs`), the net's label in the results
    (None: the config's name), the budgets that get a random-search net (None: every one; a
    random net costs a fine-tuning, and two budgets answer "does evolution beat random search")
    and the ranking sample's budget (None: archs spread over the whole BitOps range; a name: archs
    inside that budget's band, spread over the supernet's score, where the search has to choose)."""

    seeds: int = 3
    init: str = "supernet"
    parts: tuple[str, ...] = PARTS
    rank_archs: int = RANK_ARCHS
    uniform: tuple[Pair, ...] | None = None
    net: str | None = None
    random_budgets: tuple[str, ...] | None = None
    rank_band: str | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.parts) - set(PARTS))
        if unknown:
            raise QsposError(f"bench: unknown part {unknown[0]!r} (known: {', '.join(PARTS)})")
        if self.init not in INITS:
            raise QsposError(f"bench: init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.seeds < 1 or self.rank_archs < 2:
            raise QsposError(f"bench: needs seeds >= 1 and rank archs >= 2, got {self.seeds} and {self.rank_archs}")
        bad = [p for p in self.uniform or () if len(p) != 2 or not all(1 <= b <= 16 for b in p)]
        if bad:
            raise QsposError(f"bench: a uniform net is a (w_bits, a_bits) pair of 1-16 bits, got {bad[0]!r}")


    def check_budgets(self, budgets: Sequence[Budget]) -> None:
        """Every budget the plan names is one of ``budgets``."""
        names = [b.name for b in budgets]
        for name in [*(self.random_budgets or ()), *([self.rank_band] if self.rank_band else [])]:
            if name not in names:
                raise QsposError(f"bench: no budget named {name!r} (budgets: {', '.join(names)})")

    def kinds(self, budget: str) -> list[str]:
        """The kinds of net this plan makes for ``budget`` (searched, random, sensitivity)."""
        return [kind for kind in BUDGET_KINDS if kind in self.parts
                and (kind != "random" or self.random_budgets is None or budget in self.random_budgets)]


DEFAULT_PLAN = Plan()


def net_name(kind: str, tag: str) -> str:
    return f"{kind}-{tag}"


def uniform_tag(pair: Pair) -> str:
    return f"w{pair[0]}a{pair[1]}"


def in_space(space: Space, pair: Pair) -> bool:
    """Does every choice point hold ``pair`` at its base width (the supernet has its weights)?"""
    arch = space.uniform(*pair)
    return all(p.contains(arch[p.name]) for p in space.points)


def uniform_pairs(plan: Plan, metrics: ArchMetrics, budgets: Sequence[Budget]) -> list[Pair]:
    """The uniform nets ``plan`` fine-tunes: its own list, else every pair of the space whose
    uniform net is under the bounds of at least one budget, so that each budget, an intermediate
    one included, is compared with the best uniform net a user could pick instead."""
    if plan.uniform is not None:
        return list(plan.uniform)
    space = metrics.space
    pairs = sorted({(c.w_bits, c.a_bits) for p in space.points for c in p.domain})
    return [pair for pair in pairs if in_space(space, pair)
            and any(b.under_bounds(metrics(space.uniform(*pair))) for b in budgets)]


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

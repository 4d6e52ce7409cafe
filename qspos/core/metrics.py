"""Every budget metric of an arch, and the exact extremes of each metric over a space."""

from __future__ import annotations

import itertools
import math

from qspos.core.arch import Arch
from qspos.core.cost import CostModel
from qspos.core.latency import LatencyTable
from qspos.core.union_find import UnionFind
from qspos.errors import QsposError

_MAX_COMPONENT = 1_000_000  # archs enumerated per independent group of choice points


class ArchMetrics:
    """Every budget metric of an arch: the cost model's totals, bytes, and measured latency."""

    def __init__(self, cost_model: CostModel, latency: LatencyTable | None = None):
        self.cost_model = cost_model
        self.space = cost_model.space
        self.latency = latency
        self._extremes: dict[tuple[str, bool], tuple[float, Arch]] = {}

    def __call__(self, arch: Arch) -> dict[str, float]:
        m: dict[str, float] = dict(self.cost_model.metrics(arch))
        m["size_bytes"] = m["size_bits"] / 8
        if self.latency is not None:
            m["latency_ms"] = self.latency.arch_ms(self.cost_model.cost(arch))
        return m

    def extreme(self, metric: str, largest: bool = False) -> tuple[float, Arch]:
        """The exact smallest (or largest) value of ``metric`` over the space, and an arch at it.

        Exact by exhaustive search over independent groups: every metric is a sum of per-layer
        terms, and a layer's term depends only on the choice points giving its bits and its
        input/output widths. Choice points linked through some layer form a group; groups do not
        interact, so minimising each group on its own (the others held fixed) minimises the sum.
        With ``tie: block`` every group is one choice point; with ``tie: layer`` a block's convs
        form one. No monotonicity is assumed, so measured latencies are handled exactly too.
        """
        key = (metric, largest)
        if key not in self._extremes:
            best = dict(self.space.extremes()[0])
            for group in self.groups():
                domains = [self.space[name].domain for name in group]
                if math.prod(len(d) for d in domains) > _MAX_COMPONENT:
                    raise QsposError(f"choice points {group} are too entangled to bound {metric} exactly")
                values = []
                for combo in itertools.product(*domains):
                    trial = Arch({**best, **dict(zip(group, combo))})
                    values.append((self(trial)[metric], combo))
                _, combo = (max if largest else min)(values, key=lambda vc: vc[0])
                best.update(zip(group, combo))
            arch = Arch(best)
            self._extremes[key] = (self(arch)[metric], arch)
        return self._extremes[key]

    def groups(self) -> list[list[str]]:
        """Choice points partitioned by the layers that link them: every metric is a sum of one
        term per group, each a function of that group's choices alone."""
        sets = UnionFind(self.space.names)
        for p in self.cost_model.plan:
            linked = [n for n in (p.bits_point, p.in_point, p.out_point) if n is not None]
            for other in linked[1:]:
                sets.union(linked[0], other)
        return sets.groups()

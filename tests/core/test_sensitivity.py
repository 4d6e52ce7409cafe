import itertools
import random

import pytest

from qspos.core.arch import Arch
from qspos.core.budget import parse_budgets
from qspos.core.cost import CostModel
from qspos.core.metrics import ArchMetrics
from qspos.core.sensitivity import FACTORS, Sensitivity, allocate, allocations, measure, probes
from qspos.errors import QsposError
from qspos.runtime.build import build_supernet
from qspos.runtime.config import load_config
from tests.helpers import tiny_config


def _metrics(overrides=()) -> ArchMetrics:
    cfg = load_config(tiny_config(), list(overrides))
    return ArchMetrics(CostModel(build_supernet(cfg), cfg.input_shape))


def _penalty(seed=0):
    rng = random.Random(seed)
    cache = {}

    def of(point, choice):
        return cache.setdefault((point, choice), 0.0 if choice.w_bits == choice.a_bits == 4 and choice.width == 1.0
                                else rng.uniform(0.0, 0.2))
    return of


def test_measure_scores_each_point_alone_below_the_top_arch():
    space = _metrics().space
    penalty = _penalty()
    calls = []

    def score(archs):
        calls.append(len(archs))
        return [0.9 - sum(penalty(p, c) for p, c in a.items()) for a in archs]

    sens = measure(space, score)
    assert calls == [len(probes(space))] == [1 + sum(len(p.domain) - 1 for p in space.points)]  # one batch
    assert sens.top_score == pytest.approx(0.9)
    for p in space.points:
        for c in p.domain:
            assert sens.drops[p.name][c] == pytest.approx(penalty(p.name, c))
    assert Sensitivity.from_dict(sens.to_dict()) == sens


def test_factored_probes_lower_one_factor_at_a_time_and_sum_the_factors():
    space = _metrics().space
    factor = {("w_bits", 2): 0.05, ("a_bits", 2): 0.03, ("width", 0.5): 0.02}

    def penalty(p, c):  # additive in the factors, weighted by the point
        return (1 + space.names.index(p)) * sum(factor.get((f, getattr(c, f)), 0.0) for f in FACTORS)

    calls = []

    def score(archs):
        calls.append(len(archs))
        return [0.9 - sum(penalty(p, c) for p, c in a.items()) for a in archs]

    sens = measure(space, score, "factored")
    assert calls == [1 + 3 * len(space.points)]  # 2x2x2 domains: one lower value of each factor
    assert all(len(ds) == 4 for ds in sens.drops.values())  # the top choice and its 3 probes
    for p in space.points:
        for c in p.domain:  # measured or summed, exact for an additive score
            assert sens.drop(p.name, c) == pytest.approx(penalty(p.name, c))
    assert Sensitivity.from_dict(sens.to_dict()) == sens
    # a table saved before "top" and "probes" were written reads as joint, its first entry the top
    old = {k: v for k, v in measure(space, score).to_dict().items() if k not in ("top", "probes")}
    assert Sensitivity.from_dict(old) == measure(space, score)


def test_factored_probes_refuse_a_domain_that_is_no_product():
    space = _metrics(["space.weight_bits=null", "space.act_bits=null", "space.pairs=[[2,2],[4,4]]"]).space
    assert len(probes(space, "joint")) == 1 + 3 * len(space.points)  # (2,2) and (4,4), each at 2 widths
    with pytest.raises(QsposError, match=r"^layer1.0: factored sensitivity probes need .* joint$"):
        probes(space, "factored")


def _all_archs(space):
    for combo in itertools.product(*(space[n].domain for n in space.names)):
        yield Arch(dict(zip(space.names, combo)))


@pytest.mark.parametrize("kind", ["joint", "factored"])
@pytest.mark.parametrize("budget", [
    {"bitops": "uniform 2,2"}, {"bitops": "uniform 3,3", "floor": 0.9}, {"size_bits": "uniform 4,2"},
    {"bitops": "uniform 4,4", "size_bits": "uniform 3,3"}])
def test_the_allocation_is_the_best_predicted_arch_in_the_band(budget, kind):
    """Against brute force over all 512 archs of the tiny space: the allocation meets the budget
    and no arch inside it has a smaller predicted drop."""
    m = _metrics()
    penalty = _penalty(1)
    sens = measure(m.space, lambda archs: [1 - sum(penalty(p, c) for p, c in a.items()) for a in archs], kind)
    (b,) = parse_budgets([budget], m)
    arch = allocate(sens, m, b)
    assert arch is not None and b.accepts(m(arch))
    best = min(sens.predicted_drop(a) for a in _all_archs(m.space) if b.accepts(m(a)))
    assert sens.predicted_drop(arch) == pytest.approx(best)


def test_a_budget_the_allocation_cannot_meet_is_one_line():
    m = _metrics()
    sens = measure(m.space, lambda archs: [0.5] * len(archs))
    hi = m(m.space.extremes()[0])["bitops"]
    (b,) = parse_budgets([{"name": "tight", "bitops": {"max": hi, "min": hi * 0.999999}}], m)
    (loose,) = parse_budgets([{"name": "loose", "bitops": "uniform 4,4"}], m)
    assert allocations(sens, m, [loose])["loose"] is not None
    (none,) = parse_budgets([{"name": "below", "bitops": {"max": hi * 1.0000001, "min": hi * 1.00000005}}], m)
    with pytest.raises(QsposError, match="budget below: the sensitivity allocation found no arch inside it"):
        allocations(sens, m, [none])
    assert allocate(sens, m, b) == m.space.extremes()[0]

import itertools
import random
import re

import pytest

from qspos.core.arch import Arch
from qspos.core.budget import Budget, check_budget_entries, parse_budgets
from qspos.core.cost import CostModel
from qspos.core.latency import LatencyTable, layer_settings
from qspos.core.metrics import ArchMetrics
from qspos.errors import QsposError
from qspos.runtime.build import build_supernet
from qspos.runtime.config import load_config
from tests.helpers import tiny_config


def _metrics(overrides=(), latency=False) -> ArchMetrics:
    cfg = load_config(tiny_config(), list(overrides))
    cost_model = CostModel(build_supernet(cfg), cfg.input_shape)
    table = None
    if latency:  # random, non-monotone entries: the exact minimum must not assume monotonicity
        rng = random.Random(0)
        entries = {}
        for p in cost_model.plan:
            entries[p.name] = {
                f"{i},{o},{w or 32},{a or 32}": rng.uniform(0.1, 2.0)
                for i, o, w, a in layer_settings(p, cost_model.space)
            }
        table = LatencyTable(entries)
    return ArchMetrics(cost_model, table)


def _all_archs(space):
    names = space.names
    for combo in itertools.product(*(space[n].domain for n in names)):
        yield Arch(dict(zip(names, combo)))


def test_numbers_uniform_and_ranges():
    m = _metrics()
    u33 = m(m.space.uniform(3, 3))
    budgets = parse_budgets(
        [
            {"bitops": "uniform 3,3"},
            {"name": "two", "size_bytes": {"max": 1e6, "min": "uniform 2, 2"}, "macs": "1e9"},
        ],
        m,
    )
    assert budgets[0].name == "bitops-w3a3"
    assert budgets[0].limits == {"bitops": (None, u33["bitops"])}
    assert budgets[0].uniform == (3, 3)
    assert budgets[1].limits["size_bytes"] == (m(m.space.uniform(2, 2))["size_bytes"], 1e6)
    assert budgets[1].limits["macs"] == (None, 1e9)
    assert budgets[0].accepts(u33)  # the bound is inclusive: the uniform net meets its own budget
    assert not budgets[0].accepts({**u33, "bitops": u33["bitops"] + 1})


def test_accepts_checks_every_limit():
    b = Budget("b", {"bitops": (None, 10.0), "size_bits": (5.0, None)})
    assert b.accepts({"bitops": 10, "size_bits": 5})
    assert not b.accepts({"bitops": 11, "size_bits": 5})
    assert not b.accepts({"bitops": 1, "size_bits": 4})


@pytest.mark.parametrize(
    "entries, message",
    [
        ([{"bitop": 3}], r"search.budgets\[0\].bitop: unknown budget metric"),
        ([{"bitops": "uniform 3"}], r"search.budgets\[0\].bitops: expected a number or 'uniform W,A'"),
        ([{"bitops": "uniform 3", 3: None}], "quote uniform bounds"),
        ([{"bitops": -1}], "positive number"),
        ([{"bitops": {"most": 3}}], r"bitops.most: unknown key"),
        ([{"bitops": "uniform 0,3"}], "1-16"),
        ([{"name": "a b", "bitops": 3}], r"search.budgets\[0\].name"),
        ([{"name": "x", "bitops": 3}, {"name": "x", "macs": 3}], "unique"),
        (["bitops"], "expected a mapping"),
        ([{"name": "x"}], "needs at least one"),
    ],
)
def test_bad_entries_name_the_key(entries, message):
    with pytest.raises(QsposError, match=message):
        check_budget_entries(entries)


def test_config_rejects_bad_budgets_at_load():
    with pytest.raises(QsposError, match=r"search.budgets\[0\].bitop"):
        load_config(tiny_config(budgets=[{"bitop": 1}]))


def test_min_above_max_and_missing_latency_table():
    m = _metrics()
    with pytest.raises(QsposError, match="min .* is above max"):
        parse_budgets([{"macs": {"min": 10, "max": 5}}], m)
    with pytest.raises(QsposError, match=r"latency_ms: a latency budget needs search.latency_table"):
        parse_budgets([{"latency_ms": 3}], m)


@pytest.mark.parametrize("overrides", [[], ["space.tie=layer", "space.act_bits=[4]"]])
def test_extremes_are_exact(overrides):
    m = _metrics(overrides, latency=True)
    every = [m(a) for a in _all_archs(m.space)]
    assert len(every) == m.space.size <= 4096
    for metric in ("bitops", "size_bits", "size_bytes", "macs", "latency_ms", "searched_bitops"):
        assert m.extreme(metric)[0] == pytest.approx(min(v[metric] for v in every), rel=1e-12)
        assert m.extreme(metric, largest=True)[0] == pytest.approx(max(v[metric] for v in every), rel=1e-12)
        value, arch = m.extreme(metric)
        assert m(arch)[metric] == value


def test_infeasible_budget_names_the_cheapest_and_dearest_archs():
    m = _metrics()
    smallest = m.extreme("bitops")[0]
    largest_bitops = m.extreme("bitops", largest=True)[0]
    assert parse_budgets([{"bitops": smallest}], m)  # exactly reachable
    message = (f"no arch meets bitops <= {smallest - 1:.6g}; the cheapest arch has {smallest:.6g} "
               f"(every choice point at W2A2 x0.5), the dearest {largest_bitops:.6g}")
    with pytest.raises(QsposError, match=re.escape(message)):
        parse_budgets([{"bitops": smallest - 1}], m)
    largest = m.extreme("size_bits", largest=True)[0]
    with pytest.raises(QsposError, match=f"no arch meets size_bits >= {largest + 1:.6g} .*the dearest {largest:.6g}"):
        parse_budgets([{"size_bits": {"min": largest + 1}}], m)


def test_a_floor_makes_a_band_below_each_bound_without_a_min():
    m = _metrics()
    hi = m(m.space.uniform(4, 4))["bitops"]
    (plain,) = parse_budgets([{"bitops": "uniform 4,4"}], m)
    assert plain.limits["bitops"] == (None, hi) and plain.floor is None
    (band,) = parse_budgets([{"bitops": "uniform 4,4"}], m, floor=0.9)
    assert band.limits["bitops"] == (0.9 * hi, hi) and band.floor == 0.9
    assert not band.accepts({"bitops": 0.89 * hi}) and band.accepts({"bitops": 0.95 * hi})
    (own,) = parse_budgets([{"bitops": "uniform 4,4", "floor": 0.5}], m, floor=0.9)  # the entry's own wins
    assert own.limits["bitops"] == (0.5 * hi, hi)
    (none,) = parse_budgets([{"bitops": "uniform 4,4", "floor": None}], m, floor=0.9)
    assert none.limits["bitops"] == (None, hi)
    (explicit,) = parse_budgets([{"bitops": {"max": hi, "min": 10.0}}], m, floor=0.9)  # a min is kept
    assert explicit.limits["bitops"] == (10.0, hi)
    assert own.name == plain.name == "bitops-w4a4"  # the floor is not part of a budget's name
    dearest = m.extreme("bitops", largest=True)[0]
    with pytest.raises(QsposError, match="floor or min.*the cheapest arch has"):  # a band above every arch
        parse_budgets([{"bitops": 2 * dearest}], m, floor=0.9)
    for bad in (0, 1.5, "high", True):
        with pytest.raises(QsposError, match=r"search.budgets\[0\].floor: a share of the bound in \(0, 1\]"):
            parse_budgets([{"bitops": hi, "floor": bad}], m)


def test_a_net_under_every_bound_fits_below_the_floor_too():
    band = Budget("b", {"bitops": (90.0, 100.0), "size_bits": (None, 50.0)}, floor=0.9)
    assert band.under_bounds({"bitops": 80, "size_bits": 50}) and not band.accepts({"bitops": 80, "size_bits": 50})
    assert not band.under_bounds({"bitops": 101, "size_bits": 10})
    assert not band.under_bounds({"bitops": 95, "size_bits": 51})

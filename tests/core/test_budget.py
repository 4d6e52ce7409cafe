import itertools
import random

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


def test_infeasible_budget_names_smallest_value():
    m = _metrics()
    smallest = m.extreme("bitops")[0]
    assert parse_budgets([{"bitops": smallest}], m)  # exactly reachable
    with pytest.raises(QsposError, match=f"smallest achievable is {smallest:.6g}.*W2A2 x0.5"):
        parse_budgets([{"bitops": smallest - 1}], m)
    largest = m.extreme("size_bits", largest=True)[0]
    with pytest.raises(QsposError, match=f"largest achievable is {largest:.6g}"):
        parse_budgets([{"size_bits": {"min": largest + 1}}], m)

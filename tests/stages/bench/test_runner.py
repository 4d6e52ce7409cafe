"""What the benchmark asks of the search (the whole benchmark runs in tests/benchmarks)."""

from qspos.runtime.config import load_config
from qspos.stages.bench.plan import Plan
from qspos.stages.bench.runner import random_where_planned
from tests.helpers import tiny_config


def test_the_random_baseline_is_searched_only_where_the_plan_fine_tunes_a_random_net():
    cfg = load_config(tiny_config(random_baseline=False))
    assert random_where_planned(cfg, Plan()).search.random_baseline is True
    assert random_where_planned(cfg, Plan(random_budgets=("mid",))).search.random_baseline == ["mid"]
    assert random_where_planned(cfg, Plan(parts=("float", "searched"))).search.random_baseline is False
    assert cfg.search.random_baseline is False  # the caller's config is left alone

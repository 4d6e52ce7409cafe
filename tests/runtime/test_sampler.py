"""The path sampler of supernet training: uniform, or uniform inside a budget."""

import pytest

from qspos.core.budget import parse_budgets
from qspos.core.cost import CostModel
from qspos.core.metrics import ArchMetrics
from qspos.errors import QsposError
from qspos.runtime.build import build_supernet
from qspos.runtime.sampler import make_sampler
from tests.helpers import train_config


def test_budget_sampling_stays_inside_the_budget():
    cfg = train_config("train.sampling=budget",
                       "train.sampling_budget={bitops: {min: 'uniform 2,2', max: 'uniform 2,4'}}")
    supernet = build_supernet(cfg)
    sampler = make_sampler(cfg, supernet)
    metrics = ArchMetrics(CostModel(supernet, cfg.input_shape))
    (budget,) = parse_budgets([cfg.train.sampling_budget], metrics)
    archs = [sampler() for _ in range(30)]
    assert all(budget.accepts(metrics(a)) for a in archs) and len(set(archs)) > 3
    with pytest.raises(QsposError, match="train.sampling_budget.*no arch meets"):
        make_sampler(train_config("train.sampling=budget", "train.sampling_budget={bitops: 1}"), supernet)



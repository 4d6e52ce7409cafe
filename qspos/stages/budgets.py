"""The budgets of a config's search, resolved against its supernet (every stage that needs them
checks them the same way, before any work where it can)."""

from __future__ import annotations

from qspos.core.budget import Budget, parse_budgets
from qspos.core.cost import CostModel
from qspos.core.metrics import ArchMetrics
from qspos.core.supernet import Supernet
from qspos.errors import QsposError
from qspos.runtime.config import Config
from qspos.stages.latency import load_latency_table


def require_budgets(cfg: Config) -> None:
    if not cfg.search.budgets:
        raise QsposError('search.budgets is empty: give at least one, e.g. {bitops: "uniform 4,4"}')


def search_budgets(cfg: Config, supernet: Supernet) -> tuple[ArchMetrics, list[Budget]]:
    """The metrics and budgets of ``cfg.search``: refused unless at least one budget is given and
    every one is syntactically sound and achievable in the space (checked before training too)."""
    require_budgets(cfg)
    latency = load_latency_table(cfg.search.latency_table) if cfg.search.latency_table else None
    metrics = ArchMetrics(CostModel(supernet, cfg.input_shape), latency)
    return metrics, parse_budgets(cfg.search.budgets, metrics, floor=cfg.search.floor)

"""The path of each supernet training step: uniform over the space (the paper's uniform
sampling), or uniform among the archs inside ``train.sampling_budget`` (its constraint-aware
variant). Every rank draws the same path from a shared seed; the RNG rides in the checkpoint."""

from __future__ import annotations

import random
from collections.abc import Callable

from qspos.core.arch import Arch
from qspos.core.budget import parse_budgets
from qspos.core.cost import CostModel
from qspos.core.metrics import ArchMetrics
from qspos.core.space import Space
from qspos.core.supernet import Supernet
from qspos.errors import QsposError
from qspos.runtime.checkpoint import python_rng_state, set_python_rng_state
from qspos.runtime.config import Config


class PathSampler:
    """Draws the path of each step: uniform over the space, or over the archs ``accept`` allows."""

    def __init__(self, space: Space, seed: int, accept: Callable[[Arch], bool] | None = None):
        self.space, self.accept = space, accept
        self.rng = random.Random(seed)

    def __call__(self) -> Arch:
        return self.space.sample(self.rng, self.accept, max_tries=100_000)

    def state_dict(self) -> dict:
        return {"rng": python_rng_state(self.rng)}

    def load_state_dict(self, state: dict) -> None:
        set_python_rng_state(self.rng, state["rng"])


def make_sampler(cfg: Config, supernet: Supernet, probe: int = 2000) -> PathSampler:
    """The sampler ``train.sampling`` asks for; a budget that admits almost no arch is refused
    up front (``probe`` uniform archs), not after hours of training on a failed rejection."""
    if cfg.train.sampling == "uniform":
        return PathSampler(supernet.space, cfg.seed)
    metrics = ArchMetrics(CostModel(supernet, cfg.input_shape))
    (budget,) = parse_budgets([cfg.train.sampling_budget], metrics, where="train.sampling_budget")

    def accept(arch: Arch) -> bool:
        return budget.accepts(metrics(arch))

    rng = random.Random(cfg.seed)
    if not any(accept(supernet.space.sample(rng)) for _ in range(probe)):
        raise QsposError(f"train.sampling_budget admits none of {probe} uniformly sampled archs; widen it")
    return PathSampler(supernet.space, cfg.seed, accept)

import random
from types import SimpleNamespace

import pytest

from qspos.core.evolution import evolve, initial_population
from qspos.core.space import ChoicePoint, Space
from qspos.errors import QsposError

PAIRS = ((2, 2), (2, 4), (4, 4))
WIDTHS = (0.5, 1.0)


def _space() -> Space:
    return Space(ChoicePoint(f"block{i}", PAIRS, WIDTHS) for i in range(10))  # 6**10 archs


def _cost(arch) -> float:
    return sum(c.w_bits * c.a_bits * c.width for _, c in arch.items())


def test_first_population_is_uniform_in_a_loose_budget():
    space = _space()
    cheapest = space.extremes()[0]
    pop = initial_population(space, random.Random(0), lambda a: _cost(a) <= 60, 8, 100, seeds=[cheapest])
    assert len({a.digest() for a in pop}) == 8 and all(_cost(a) <= 60 for a in pop)


def test_a_sliver_of_a_budget_starts_from_the_feasible_seeds():
    space = _space()
    cheapest, largest = space.extremes()
    only_cheapest = lambda a: _cost(a) <= _cost(cheapest)  # noqa: E731  one arch in 6**10
    rng = random.Random(0)
    assert initial_population(space, rng, only_cheapest, 8, 50, seeds=[largest, cheapest, cheapest]) == [cheapest]
    assert initial_population(space, rng, only_cheapest, 8, 50, seeds=[largest]) == []


def test_evolve_searches_a_budget_rejection_sampling_cannot_hit():
    space = _space()
    cheapest = space.extremes()[0]
    tight = _cost(cheapest) + 2  # 21 of 6**10 archs: the cheapest and those one step above it
    settings = SimpleNamespace(population=6, mutation_prob=0.3, mutation_count=4, crossover_count=2, max_tries=40)
    ranked = evolve(space, score=_cost, accept=lambda a: _cost(a) <= tight, tiebreak=_cost, settings=settings,
                    iterations=4, topk=2, rng=random.Random(0))
    assert len(ranked) > 1 and all(_cost(a) <= tight for a, _ in ranked)
    assert ranked[0][1] == max(s for _, s in ranked)
    with pytest.raises(QsposError, match="nor the space's cheapest arch"):
        evolve(space, _cost, lambda a: False, _cost, settings, 2, 2, random.Random(0))


def test_ties_go_to_the_arch_that_spends_more_of_the_budget():
    from qspos.core.evolution import ranked

    scores = {"a": 0.5, "b": 0.5, "c": 0.7, "d": 0.5}
    cost = {"a": 10.0, "b": 30.0, "c": 1.0, "d": 30.0}
    assert ranked(list(scores), scores, cost) == ["c", "b", "d", "a"]  # score, then cost, then digest


def test_an_evolution_stopped_between_generations_goes_on_to_the_same_end():
    import copy

    from qspos.core.evolution import EvolutionState, generations, ranked

    space = _space()
    settings = SimpleNamespace(population=6, mutation_prob=0.3, mutation_count=4, crossover_count=2, max_tries=40)
    accept = lambda a: _cost(a) <= 60  # noqa: E731

    scores = {}  # the caller's record of every score, kept across the stop

    def run(state, stop_after=None):
        def evaluate(archs):
            scores.update((a.digest(), -_cost(a)) for a in archs)
            return [scores[a.digest()] for a in archs]

        for i, _ in enumerate(generations(state, space, evaluate, lambda ds: ranked(ds, scores, scores), accept,
                                          settings, iterations=4, topk=2), start=1):
            if i == stop_after:
                break
        return state

    first = initial_population(space, random.Random(0), accept, 6, 40)
    whole = run(EvolutionState(random.Random(1), list(first)))
    stopped = run(EvolutionState(random.Random(1), list(first)), stop_after=2)
    assert stopped.generation == 2 and stopped.population
    resumed = run(copy.deepcopy(stopped))
    assert resumed.generation == whole.generation == 4 and not whole.population
    assert list(resumed.evaluated) == list(whole.evaluated)

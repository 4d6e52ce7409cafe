"""The evolutionary search (SPOS, Guo et al. 2020, Sec. 3.4): its genome operators and its loop.

Each generation: the top-k archs evaluated so far are the parents; ``mutation_count`` children
by mutation (each choice point resampled with ``mutation_prob``) and ``crossover_count`` by
uniform crossover of two parents; a child outside the budget or already seen is rejected, with at
most ``max_tries`` attempts per kind; the population is refilled with random archs in the budget.
A budget that admits only a sliver of the space may defeat rejection sampling for the first
population; the evolution then starts from known-feasible seeds and mutation explores from there.
Everything here is a pure function of the RNG, so every rank of a torchrun job breeds the same.

The loop (:func:`generations`) runs from an :class:`EvolutionState`, one generation at a time, so
that a caller may save the state between generations and resume (the search stage does) or
keep it in memory (:func:`evolve`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from qspos.core.arch import Arch
from qspos.core.space import Space
from qspos.errors import QsposError

Accept = Callable[[Arch], bool]
Evaluate = Callable[[Sequence[Arch]], list[float]]  # scores of archs, higher is better
Rank = Callable[[Sequence[str]], list[str]]  # digests of evaluated archs, best first


class BreedSettings(Protocol):
    """How a generation is bred (the config's ``search`` section has these fields)."""

    population: int
    mutation_prob: float
    mutation_count: int
    crossover_count: int
    max_tries: int


def ranked(digests: Sequence[str], scores: Mapping[str, float], tiebreak: Mapping[str, float]) -> list[str]:
    """Digests best first: higher score, then larger ``tiebreak`` (the cost: of two archs the
    supernet cannot tell apart, the one that spends more of the budget), then digest."""
    return sorted(set(digests), key=lambda d: (-scores[d], -tiebreak[d], d))


def random_archs(space: Space, rng: random.Random, accept: Accept, seen: set[str], count: int,
                 max_tries: int) -> list[Arch]:
    """Up to ``count`` new archs, uniform among those ``accept`` admits and not in ``seen``.

    Fewer come back when ``max_tries`` samples in a row find nothing new (a small space or a
    tight budget nearly exhausted). Their digests are added to ``seen``.
    """
    out = []
    for _ in range(count):
        try:
            arch = space.sample(rng, lambda a: a.digest() not in seen and accept(a), max_tries)
        except QsposError:
            break
        seen.add(arch.digest())
        out.append(arch)
    return out


def initial_population(space: Space, rng: random.Random, accept: Accept, count: int, max_tries: int,
                       seeds: Sequence[Arch] = ()) -> list[Arch]:
    """``count`` uniform archs in the budget or, when rejection sampling finds none, the ``seeds``
    it admits (without them a tight but feasible budget could not be searched at all)."""
    population = random_archs(space, rng, accept, set(), count, max_tries)
    if population:
        return population
    return list({a.digest(): a for a in seeds if accept(a)}.values())[:count]


def breed(space: Space, parents: Sequence[Arch], rng: random.Random, accept: Accept, seen: set[str],
          cfg: BreedSettings) -> list[Arch]:
    """The next population: mutation children, crossover children, then random refill."""
    kinds: list[tuple[Callable[[], Arch], int]] = [
        (lambda: space.mutate(rng.choice(parents), cfg.mutation_prob, rng), cfg.mutation_count),
        (lambda: space.crossover(rng.choice(parents), rng.choice(parents), rng), cfg.crossover_count),
    ]
    children: list[Arch] = []
    for make, count in kinds:
        made = 0
        for _ in range(cfg.max_tries):
            if made == count:
                break
            child = make()
            if child.digest() in seen or not accept(child):
                continue
            seen.add(child.digest())
            children.append(child)
            made += 1
    refill = cfg.population - len(children)
    return children + random_archs(space, rng, accept, seen, refill, cfg.max_tries)


@dataclass
class EvolutionState:
    """Where an evolution stands between two generations: with it, the loop goes on as if it had
    never stopped."""

    rng: random.Random  # breeds the next generations
    population: list[Arch]  # the next generation to evaluate (empty: the evolution is over)
    generation: int = 0  # generations evaluated
    evaluated: dict[str, Arch] = field(default_factory=dict)  # by digest, in the order evaluated


def generations(state: EvolutionState, space: Space, evaluate: Evaluate, rank: Rank, accept: Accept,
                settings: BreedSettings, iterations: int, topk: int) -> Iterator[list[float]]:
    """Evaluate ``state.population``, breed the next one from the ``topk`` best evaluated so far,
    and so on up to ``iterations`` generations. Yields each generation's scores once ``state``
    has moved past it (the moment to save it)."""
    while state.generation < iterations and state.population:
        population = state.population
        scores = evaluate(population)
        state.evaluated.update((a.digest(), a) for a in population)
        state.generation += 1
        state.population = []
        if state.generation < iterations:
            parents = [state.evaluated[d] for d in rank(list(state.evaluated))[:topk]]
            state.population = breed(space, parents, state.rng, accept, set(state.evaluated), settings)
        yield scores


def evolve(space: Space, score: Callable[[Arch], float], accept: Accept, tiebreak: Callable[[Arch], float],
           settings: BreedSettings, iterations: int, topk: int, rng: random.Random) -> list[tuple[Arch, float]]:
    """Every arch the evolution evaluated with its score, best first (ties: larger ``tiebreak``).

    In memory and without resume: the building block for a caller's own loop (the search stage
    keeps its state on disk between generations instead).
    """
    population = initial_population(space, rng, accept, settings.population, settings.max_tries,
                                    seeds=[space.extremes()[0]])
    if not population:
        raise QsposError(f"no arch in {settings.max_tries} uniform samples meets the budget, nor the "
                         "space's cheapest arch; loosen it")
    state = EvolutionState(rng, population)
    scores: dict[str, float] = {}
    costs: dict[str, float] = {}

    def evaluate(archs: Sequence[Arch]) -> list[float]:
        out = [float(score(a)) for a in archs]
        for a, s in zip(archs, out):
            scores[a.digest()], costs[a.digest()] = s, tiebreak(a)
        return out

    for _ in generations(state, space, evaluate, lambda ds: ranked(ds, scores, costs), accept, settings,
                         iterations, topk):
        pass
    return [(state.evaluated[d], scores[d]) for d in ranked(list(scores), scores, costs)]

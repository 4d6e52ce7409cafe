"""Each budget against the best uniform net that fits it and the sensitivity allocation, on a
handmade set of finished nets whose numbers are worked out by hand."""

import dataclasses
import math

import pytest

from qspos.core.budget import Budget
from qspos.stages.bench.comparison import best_fitting_uniform, compare
from qspos.stages.bench.records import NetRecord

M = 1_000_000


def _net(kind: str, seed: int, bitops: float, top1: float, budget: str | None = None,
         bits: tuple[int, int] | None = None) -> NetRecord:
    return NetRecord(kind, budget, bits, seed, "supernet", kind, int(bitops), 1, top1, 10_000, 0.003, None, None, 1,
                     1.0, None)


def _uniform(bits: tuple[int, int], bitops: float, top1s: list[float]) -> list[NetRecord]:
    return [_net("uniform", s, bitops, t, bits=bits) for s, t in enumerate(top1s)]


NETS = [
    *_uniform((2, 2), 40 * M, [0.80, 0.82, 0.81]),  # mean 0.81
    *_uniform((2, 4), 80 * M, [0.85, 0.86, 0.84]),  # mean 0.85: the best under 100 M
    *_uniform((4, 2), 80 * M, [0.86, 0.83, 0.83]),  # mean 0.84: best on seed 0 alone, not on the mean
    *_uniform((4, 4), 160 * M, [0.90, 0.91, 0.92]),  # over every bound
    *[_net("searched", s, 96 * M, t, "mid") for s, t in enumerate([0.88, 0.87, 0.87])],
    *[_net("sensitivity", s, 90 * M, t, "mid") for s, t in enumerate([0.86, 0.86])],  # two seeds
    _net("searched", 0, 48 * M, 0.79, "low"),
]
BUDGETS = [Budget("low", {"bitops": (45 * M, 50 * M)}), Budget("mid", {"bitops": (90 * M, 100 * M)}),
           Budget("tiny", {"bitops": (None, 30 * M)}), Budget("small", {"size_bits": (None, 1000.0)})]


def test_the_best_uniform_net_that_fits_has_the_best_mean_under_the_bound():
    assert best_fitting_uniform(NETS, 100 * M) == (2, 4)
    assert best_fitting_uniform(NETS, 80 * M) == (2, 4)  # at the bound counts as fitting
    assert best_fitting_uniform(NETS, 79 * M) == (2, 2)
    assert best_fitting_uniform(NETS, 30 * M) is None
    tie = [*_uniform((2, 4), 20 * M, [0.5]), *_uniform((2, 2), 10 * M, [0.5])]
    assert best_fitting_uniform(tie, 100 * M) == (2, 2)  # equal accuracy: the cheaper one


def test_the_best_uniform_net_is_chosen_on_val_and_compared_on_test():
    lucky = [dataclasses.replace(n, val_top1=0.80) for n in _uniform((4, 2), 80 * M, [0.90])]  # best test, worse val
    steady = [dataclasses.replace(n, val_top1=0.85) for n in _uniform((2, 4), 80 * M, [0.86])]
    assert best_fitting_uniform(lucky + steady, 100 * M) == (2, 4)
    assert best_fitting_uniform([*lucky, *_uniform((2, 4), 80 * M, [0.86])], 100 * M) == (4, 2)  # no val: on test


def test_each_budget_against_its_alternatives_paired_by_seed():
    low, mid, tiny, small = compare(NETS, BUDGETS)
    assert (mid["budget"], mid["bitops_max"], mid["best_uniform"]) == ("mid", 100 * M, [2, 4])
    vs_uniform = mid["searched_minus_uniform"]  # per seed +0.03, +0.01, +0.03
    assert vs_uniform["seeds"] == 3 and vs_uniform["mean"] == pytest.approx(0.07 / 3)
    assert vs_uniform["std"] == pytest.approx(0.02 / math.sqrt(3))
    vs_sensitivity = mid["searched_minus_sensitivity"]  # seeds 0 and 1: +0.02, +0.01
    assert vs_sensitivity["seeds"] == 2 and vs_sensitivity["mean"] == pytest.approx(0.015)
    assert vs_sensitivity["std"] == pytest.approx(0.01 / math.sqrt(2))
    assert mid["budget_use"]["searched"] == pytest.approx({"mean": 0.96, "min": 0.96, "max": 0.96, "seeds": 3})
    assert mid["budget_use"]["sensitivity"] == pytest.approx({"mean": 0.9, "min": 0.9, "max": 0.9, "seeds": 2})

    assert low["best_uniform"] == [2, 2] and low["budget_use"]["searched"]["mean"] == pytest.approx(0.96)
    assert low["searched_minus_uniform"] == {"mean": pytest.approx(-0.01), "std": None, "seeds": 1}
    assert low["searched_minus_sensitivity"] == {"mean": None, "std": None, "seeds": 0}
    assert low["budget_use"]["sensitivity"] is None

    assert tiny["best_uniform"] is None and tiny["searched_minus_uniform"]["mean"] is None  # nothing fits
    assert small["bitops_max"] is None and small["best_uniform"] is None  # no BitOps bound
    assert small["budget_use"] == {"searched": None, "sensitivity": None}

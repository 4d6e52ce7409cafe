from qspos.core.arch import Arch, Choice
from qspos.core.fill import FillStep, fill, raises, raises_of
from qspos.core.space import ChoicePoint, Space

PAPER_PAIRS = ((1, 2), (2, 2), (1, 4), (2, 4), (3, 4), (4, 4))


def test_a_raise_is_one_step_up_in_one_of_weight_bits_activation_bits_or_width():
    point = ChoicePoint("b", PAPER_PAIRS, (0.5, 1.0, 1.5))
    assert raises_of(point, Choice(1, 2, 0.5)) == [Choice(2, 2, 0.5), Choice(1, 4, 0.5), Choice(1, 2, 1.0)]
    assert raises_of(point, Choice(2, 2, 1.5)) == [Choice(2, 4, 1.5)]  # (3, 2) is not in the domain
    assert raises_of(point, Choice(4, 4, 1.5)) == []
    assert raises_of(ChoicePoint("c", ((2, 2), (4, 4))), Choice(2, 2)) == []  # only pairs, no width


def _space():
    return Space(ChoicePoint(f"p{i}", ((2, 2), (2, 4), (4, 2), (4, 4)), (0.5, 1.0)) for i in range(3))


def _cost(arch):
    return sum(c.w_bits * c.a_bits * c.width for c in arch.values())


def test_the_fill_raises_the_pick_while_it_fits_and_its_score_holds():
    space = _space()
    start = space.extremes()[0]  # every point at W2A2 x0.5: cost 6
    seen = []

    def score(archs):
        seen.extend(archs)
        return [0.5 + 0.01 * (a["p0"].width == 1.0) - 0.02 * (a["p2"].w_bits == 4) for a in archs]

    arch, steps = fill(space, start, 0.5, score, lambda a: _cost(a) <= 20, _cost, noise=0.01)
    assert _cost(arch) <= 20 and all(isinstance(s, FillStep) for s in steps)
    assert steps[0].point == "p0" and steps[0].after == Choice(2, 2, 1.0)  # the best-scoring raise first
    assert all(s.score >= 0.5 - 0.01 for s in steps)  # none fell by more than the noise
    assert arch["p2"].w_bits == 2  # raising p2's weights costs 0.02 > noise: never kept
    assert not [a for name, a in raises(space, arch) if _cost(a) <= 20 and a["p2"].w_bits == 2]  # stopped: full
    assert all(_cost(a) <= 20 for a in seen)  # only archs in budget are scored
    assert FillStep.from_dict(steps[0].to_dict()) == steps[0]


def test_the_fill_keeps_the_pick_when_every_raise_loses_or_none_fits():
    space = _space()
    start = Arch({n: Choice(2, 2, 0.5) for n in space.names})
    same, steps = fill(space, start, 0.9, lambda archs: [0.5] * len(archs), lambda a: True, _cost, noise=0.05)
    assert same == start and steps == []
    same, steps = fill(space, start, 0.5, lambda archs: [1.0] * len(archs), lambda a: _cost(a) <= 6, _cost, 0.0)
    assert same == start and steps == []

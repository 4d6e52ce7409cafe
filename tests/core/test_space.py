import math
import random
from collections import Counter

import pytest

from qspos.core.arch import Arch, Choice
from qspos.core.cost import CostModel
from qspos.core.space import ChoicePoint, Space, make_pairs
from qspos.errors import QsposError
from qspos.runtime.build import build_supernet

PAPER_PAIRS = ((1, 2), (2, 2), (1, 4), (2, 4), (3, 4), (4, 4))
WIDTHS = (0.5, 1.0, 1.5)


def paper_space(n_blocks: int = 8) -> Space:
    """The paper's ResNet-18 space: 8 blocks x 6 bit pairs x 3 widths."""
    return Space(ChoicePoint(f"block{i}", PAPER_PAIRS, WIDTHS) for i in range(n_blocks))


def test_size_counts_every_combination():
    assert paper_space().size == 18**8
    mixed = Space([ChoicePoint("a", PAPER_PAIRS, WIDTHS), ChoicePoint("b", ((2, 2), (4, 4)))])
    assert mixed.size == 18 * 2
    assert len(mixed["b"].domain) == 2 and mixed["b"].domain[0] == Choice(2, 2, None)


def test_make_pairs_product_or_explicit():
    assert make_pairs(None, [2, 4], [3, 8]) == ((2, 3), (2, 8), (4, 3), (4, 8))
    assert make_pairs([[1, 2], [2, 2]], None, None) == ((1, 2), (2, 2))


def test_bad_spaces_raise():
    with pytest.raises(QsposError, match="empty"):
        ChoicePoint("a", ())
    with pytest.raises(QsposError, match="empty width"):
        ChoicePoint("a", ((2, 2),), ())
    with pytest.raises(QsposError, match="duplicate"):
        Space([ChoicePoint("a", ((2, 2),)), ChoicePoint("a", ((4, 4),))])


def test_sampler_is_uniform_over_a_choice_point():
    """Pearson chi-square of the 18 choices at one point over 9000 samples (df = 17: the 0.1%
    critical value is 40.8; 50 keeps the fixed-seed test far from flaky while still catching a
    sampler that favours choices, e.g. uniform over pairs then over widths of one pair)."""
    space, rng, n = paper_space(), random.Random(0), 9000
    counts = Counter(space.sample(rng)["block3"] for _ in range(n))
    domain = space["block3"].domain
    assert set(counts) == set(domain)
    expected = n / len(domain)
    chi2 = sum((counts[c] - expected) ** 2 / expected for c in domain)
    assert chi2 < 50.0


def test_sampling_is_reproducible_and_in_domain():
    space = paper_space()
    a = [space.sample(random.Random(7)) for _ in range(2)]
    assert a[0] == a[1]
    for arch in (space.sample(random.Random(i)) for i in range(50)):
        assert space.validate(arch) is arch


def test_validate_names_what_is_wrong():
    space = paper_space(2)
    good = space.sample(random.Random(0))
    with pytest.raises(QsposError, match=r"missing \['block1'\]"):
        space.validate(Arch({"block0": good["block0"]}))
    with pytest.raises(QsposError, match=r"unknown \['extra'\]"):
        space.validate(Arch({**good, "extra": Choice(2, 2, 1.0)}))
    outside = good.replace(block0=Choice(3, 3, 1.0))
    with pytest.raises(QsposError, match=r"arch\[block0\].*not in its domain"):
        space.validate(outside)
    assert space.validate(outside, domain=False) is outside  # names only: cost of any bits


def test_uniform_and_extremes():
    space = Space([ChoicePoint("a", PAPER_PAIRS, WIDTHS), ChoicePoint("b", PAPER_PAIRS, (0.5, 0.75)),
                   ChoicePoint("c", PAPER_PAIRS)])
    u = space.uniform(3, 3)
    assert u["a"] == Choice(3, 3, 1.0)
    assert u["b"] == Choice(3, 3, 0.75)  # 1.0 not in the domain: the largest width
    assert u["c"] == Choice(3, 3, None)
    lo, hi = space.extremes()
    assert lo["a"] == Choice(1, 2, 0.5) and hi["a"] == Choice(4, 4, 1.5)
    assert lo["c"] == Choice(1, 2, None) and hi["c"] == Choice(4, 4, None)


def test_mutate_keeps_archs_legal():
    space, rng = paper_space(), random.Random(1)
    parent = space.sample(rng)
    assert space.mutate(parent, 0.0, rng) == parent
    changed = 0
    for _ in range(200):
        child = space.mutate(parent, 0.3, rng)
        space.validate(child)
        changed += sum(child[n] != parent[n] for n in space.names)
    # each point resampled w.p. 0.3 and then differs w.p. 17/18: about 0.28 of 1600 points
    assert 0.2 < changed / (200 * len(space)) < 0.36


def test_crossover_takes_each_point_from_a_parent():
    space, rng = paper_space(), random.Random(2)
    a, b = space.sample(rng), space.sample(rng)
    from_a = 0
    for _ in range(200):
        child = space.crossover(a, b, rng)
        space.validate(child)
        for n in space.names:
            assert child[n] in (a[n], b[n])
            from_a += child[n] == a[n]
    assert 0.4 < from_a / (200 * len(space)) < 0.6 + sum(a[n] == b[n] for n in space.names) / len(space)


def test_budget_sampling_never_exceeds_the_budget(small_cfg):
    supernet = build_supernet(small_cfg)
    model = CostModel(supernet, small_cfg.input_shape)
    space = supernet.space
    budget = model.metrics(space.uniform(2, 4))["bitops"]
    rng = random.Random(0)
    archs = [space.sample(rng, accept=lambda a: model.metrics(a)["bitops"] <= budget) for _ in range(300)]
    bitops = [model.metrics(a)["bitops"] for a in archs]
    assert max(bitops) <= budget
    assert len(set(archs)) > 50  # still a spread of archs, not one


def test_budget_sampling_gives_a_clear_error_when_nothing_fits():
    space = paper_space()
    with pytest.raises(QsposError, match="no arch met the budget in 25 uniform samples"):
        space.sample(random.Random(0), accept=lambda a: False, max_tries=25)


def test_space_size_matches_enumeration():
    space = Space([ChoicePoint("a", ((2, 2), (4, 4)), (0.5, 1.0)), ChoicePoint("b", ((2, 4),), (0.5, 1.0, 1.5))])
    rng = random.Random(0)
    seen = {space.sample(rng) for _ in range(400)}
    assert len(seen) == space.size == math.prod([4, 3])

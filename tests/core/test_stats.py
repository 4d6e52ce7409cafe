import pytest

from qspos.core.stats import binomial_se, kendall_tau, mean, mean_std, spearman_rho, top_k_overlap


def test_rank_statistics():
    x = [1, 2, 3, 4, 5]
    assert kendall_tau(x, x) == 1 and spearman_rho(x, x) == pytest.approx(1)
    assert kendall_tau(x, x[::-1]) == -1 and spearman_rho(x, x[::-1]) == pytest.approx(-1)
    # one swapped pair of 10: tau = (9 - 1) / 10
    assert kendall_tau(x, [2, 1, 3, 4, 5]) == pytest.approx(0.8)
    # tau-b with the first two tied in y: 2 concordant pairs, 1 tie, sqrt(2 * 3) below
    assert kendall_tau([1, 2, 3], [1, 1, 2]) == pytest.approx(2 / (3 * 2) ** 0.5)
    assert spearman_rho([1, 2, 3], [1, 1, 2]) == pytest.approx(0.8660254)
    assert top_k_overlap([5, 4, 3, 2, 1], [5, 3, 4, 1, 2], 2) == 0.5


def test_mean_std_and_binomial_se():
    assert mean_std([0.5]) == (0.5, None)
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(2**0.5))
    assert binomial_se(0.9, 100) == pytest.approx(0.03) and binomial_se(None, 100) is None
    assert binomial_se(0.9, 0) is None
    assert mean([1.0, 2.0]) == 1.5 and mean([]) is None

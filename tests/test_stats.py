"""Statistics for claims over seeds: the CI of a std, power and seeds per arm, P(A > B), disagreement."""

import numpy as np
import pytest
from scipy import stats as sps

from mnist_jax import stats


def test_std_ci_is_the_chi_square_interval_by_hand():
    s = stats.std_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    std = np.std([1, 2, 3, 4, 5], ddof=1)
    assert s["n"] == 5 and s["std"] == pytest.approx(std)
    # chi2_{0.975, 4} = 11.1433, chi2_{0.025, 4} = 0.484419
    assert s["ci_low"] == pytest.approx(std * np.sqrt(4 / 11.1433), rel=1e-4)
    assert s["ci_high"] == pytest.approx(std * np.sqrt(4 / 0.484419), rel=1e-4)
    assert stats.std_ci([np.nan, 1.0])["std"] is None  # one finite value: no spread


def test_seeds_needed_matches_the_textbook_case():
    # delta = sigma, alpha 0.05 two-sided, power 0.8: normal approximation 2 (1.95996 + 0.84162)^2 = 15.7,
    # the t-test needs 17 per arm (Cohen 1988, d = 1: n = 17)
    assert 2 * (sps.norm.ppf(0.975) + sps.norm.ppf(0.8)) ** 2 == pytest.approx(15.70, abs=0.01)
    assert stats.seeds_needed(1.0, 1.0) == 17
    assert stats.seeds_needed(0.2, 0.2) == 17  # only the ratio matters
    assert stats.seeds_needed(1.0, 0.5) == 64  # d = 0.5: 64 per arm (Cohen 1988)
    assert stats.t_test_power(1.0, 1.0, 17) >= 0.8 > stats.t_test_power(1.0, 1.0, 16)


def test_detectable_difference_inverts_seeds_needed():
    d = stats.detectable_difference(1.0, 17)
    assert d <= 1.0 and stats.t_test_power(1.0, d, 17) == pytest.approx(0.8, abs=1e-6)
    assert stats.detectable_difference(1.0, 16) > 1.0
    assert stats.detectable_difference(2.0, 10) == pytest.approx(2 * stats.detectable_difference(1.0, 10))
    assert stats.detectable_difference(1.0, 1) is None


def test_prob_greater_is_one_when_every_a_beats_every_b():
    r = stats.prob_greater([5.0, 6.0, 7.0, 8.0, 9.0], [1.0, 2.0, 3.0, 4.0, 4.5])
    assert r["p"] == 1.0 and r["ci_high"] == 1.0 and 0.5 < r["ci_low"] < 1.0
    r = stats.prob_greater([1.0, 2.0], [5.0, 6.0])
    assert r["p"] == 0.0 and r["ci_low"] == 0.0 and 0.0 < r["ci_high"] < 1.0
    wide, narrow = stats.prob_greater(range(3, 6), range(3)), stats.prob_greater(range(20, 40), range(20))
    assert narrow["ci_low"] > wide["ci_low"]  # more runs, a tighter interval


def test_prob_greater_counts_ties_half_and_matches_mann_whitney():
    assert stats.prob_greater([1.0], [1.0])["p"] == 0.5
    assert stats.prob_greater([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])["p"] == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=7), rng.normal(0.5, size=9)
    r = stats.prob_greater(a, b)
    assert r["p"] == pytest.approx(sps.mannwhitneyu(a, b).statistic / 63)
    assert r["ci_low"] < r["p"] < r["ci_high"]
    assert stats.prob_greater([1.0, np.nan], [0.0])["n_a"] == 1  # diverged runs are left out


def test_pairwise_disagreement_by_hand():
    preds = np.array([[0, 1, 2, 3], [0, 1, 2, 0], [1, 1, 2, 0]])
    # pairs: (0,1) 1/4, (0,2) 2/4, (1,2) 1/4 -> mean 1/3
    d = stats.pairwise_disagreement(preds)
    assert d["n"] == 3 and d["mean"] == pytest.approx(1 / 3)
    assert d["ci_low"] <= d["mean"] <= d["ci_high"]
    assert stats.pairwise_disagreement(np.zeros((4, 10), int))["mean"] == 0.0


def test_bootstrap_std_of_a_mean_is_close_to_the_binomial_one():
    correct = np.zeros(10_000)
    correct[:9700] = 1
    assert stats.bootstrap_mean_std(correct, 500) == pytest.approx(np.sqrt(0.97 * 0.03 / 10_000), rel=0.1)

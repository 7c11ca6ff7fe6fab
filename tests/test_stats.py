"""bench.stats against hand-computed values and against scipy's own exact enumerations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from bench.stats import (BOOTSTRAP, BOOTSTRAP_EXACT, EXACT, MCNEMAR, SIGN_FLIP, accuracy_interval,
                         cluster_bootstrap_interval, exact_interval, mcnemar_exact, paired_test, sign_flip_test)


def test_exact_interval_known_values():
    # 0/128: upper limit 1 - 0.025**(1/128) in closed form (the issue's "about [0, 2.8] %")
    low, high = exact_interval(0, 128)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 128), rel=1e-9)
    assert high == pytest.approx(0.028408, abs=1e-6)
    # 128/128 mirrors it
    assert exact_interval(128, 128) == pytest.approx((0.025 ** (1 / 128), 1.0))
    # 5/20: the textbook Clopper-Pearson interval [0.0866, 0.4910]
    assert exact_interval(5, 20) == pytest.approx((0.08657, 0.49105), abs=1e-5)
    # the fractional-count formula is continuous at integer counts
    assert exact_interval(5 - 1e-9, 20) == pytest.approx(exact_interval(5, 20), abs=1e-6)
    assert all(math.isnan(x) for x in exact_interval(0, 0))


def test_accuracy_interval_one_seed_is_clopper_pearson_clean_and_robust_alike():
    flags = np.array([1] * 100 + [0] * 28, dtype=float)
    ci = accuracy_interval(flags)
    assert ci.method == EXACT and (ci.low, ci.high) == pytest.approx(exact_interval(100, 128))
    assert ci.low < 100 / 128 < ci.high


def test_zero_accuracy_never_collapses_whatever_the_number_of_seeds():
    expected = exact_interval(0, 128)
    for per_image in (np.zeros(128), np.zeros((128, 3)).mean(axis=1)):  # one seed, or 3 seeds all broken
        ci = accuracy_interval(per_image)
        assert (ci.low, ci.high) == pytest.approx(expected) and ci.high > 0.028
    # the bare percentile bootstrap is the degenerate [0, 0] the issue reports
    assert cluster_bootstrap_interval(np.r_[np.zeros(127), 1 / 3])[0] == 0.0
    assert cluster_bootstrap_interval(np.zeros(128)) == (0.0, 0.0)


def test_boundary_hull_is_monotone_near_zero():
    # one image robust under 1 of 3 seeds: a little MORE evidence of robustness than 0/128, so the
    # upper limit must not drop below the 0/128 limit (the bare bootstrap gives ~0.8 %)
    per_image = np.r_[np.zeros(127), 1 / 3]
    ci = accuracy_interval(per_image)
    assert ci.method == BOOTSTRAP_EXACT
    assert ci.high >= exact_interval(0, 128)[1]
    assert ci.high == pytest.approx(exact_interval(1 / 3, 128)[1])
    assert cluster_bootstrap_interval(per_image)[1] < 0.01


def test_cluster_bootstrap_in_the_interior_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    per_image = rng.integers(0, 4, size=400) / 3  # 3 seeds, rates 0, 1/3, 2/3, 1
    ci = accuracy_interval(per_image)
    assert ci.method == BOOTSTRAP
    half = 1.96 * per_image.std(ddof=1) / math.sqrt(per_image.size)
    assert ci.low == pytest.approx(per_image.mean() - half, abs=0.15 * half)
    assert ci.high == pytest.approx(per_image.mean() + half, abs=0.15 * half)
    assert accuracy_interval(per_image) == ci  # fixed generator: reproducible
    # seeds disagreeing on images carry information: narrower than the one-Bernoulli-per-image bound
    exact = exact_interval(per_image.sum(), per_image.size)
    assert ci.high - ci.low < exact[1] - exact[0]


@pytest.mark.parametrize("seeds, n", [(3, 60), (5, 400), (2, 2000)])
def test_cluster_bootstrap_is_scipys_bootstrap_of_the_images(seeds, n):
    """Drawing each resample as counts of the distinct rates is the bootstrap of the images: the
    interval matches scipy.stats.bootstrap (percentile) up to Monte-Carlo error, and so does the
    whole bootstrap distribution (two-sample Kolmogorov-Smirnov test on the resampled means)."""
    rng = np.random.default_rng(seeds)
    per_image = rng.binomial(seeds, rng.uniform(0.2, 0.9, size=n)) / seeds
    ours = cluster_bootstrap_interval(per_image)
    ref = sps.bootstrap((per_image,), np.mean, n_resamples=9999, method="percentile",
                        rng=np.random.default_rng(7)).confidence_interval
    se = per_image.std(ddof=1) / math.sqrt(n)  # the percentiles' Monte-Carlo error is ~0.03 se
    assert ours[0] == pytest.approx(ref.low, abs=0.1 * se) and ours[1] == pytest.approx(ref.high, abs=0.1 * se)
    levels, counts = np.unique(per_image, return_counts=True)
    ours_means = sps.multinomial.rvs(n, counts / n, size=4000, random_state=np.random.default_rng(1)) @ levels / n
    resampled = per_image[np.random.default_rng(2).integers(0, n, size=(4000, n))].mean(axis=1)
    assert sps.ks_2samp(ours_means, resampled).pvalue > 0.01


def test_seeds_that_agree_on_every_image_give_the_one_seed_interval():
    one = np.array([1.0] * 30 + [0.0] * 98)
    assert accuracy_interval(one) == accuracy_interval(np.mean([one, one, one], axis=0))


def test_mcnemar_exact_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(9, 1) == pytest.approx(2 * 11 / 1024)
    assert mcnemar_exact(2, 2) == 1.0


def test_identical_seeds_give_the_one_seed_p_value_issue_example():
    # 512 images, 171 robust under A and not under B, none the other way
    a1 = np.r_[np.ones(171), np.zeros(341)][:, None]
    b1 = np.zeros((512, 1))
    p1, test1 = paired_test(a1, b1)
    assert test1 == MCNEMAR and p1 == pytest.approx(2 * 0.5 ** 171, rel=1e-9)  # 6.7e-52, "~7e-52"
    p2, test2 = paired_test(np.repeat(a1, 2, axis=1), np.repeat(b1, 2, axis=1))
    assert test2 == SIGN_FLIP and p2 == p1
    # counting each (seed, image) pair as independent doubles the discordant count: the old 2e-103
    assert mcnemar_exact(342, 0) == pytest.approx(2.2324e-103, rel=1e-4)


def test_sign_flip_test_matches_scipy_exact_enumeration():
    rng = np.random.default_rng(3)
    for _ in range(5):
        d = rng.integers(-3, 4, size=12)
        ref = sps.permutation_test((d,), lambda x, axis: np.sum(x, axis=axis), permutation_type="samples",
                                   n_resamples=np.inf, alternative="two-sided").pvalue
        assert sign_flip_test(d) == pytest.approx(ref, rel=1e-9)
    # |d| in {0, 1}: the sign test, i.e. McNemar
    d = np.array([1] * 9 + [-1] + [0] * 6)
    assert sign_flip_test(d) == pytest.approx(mcnemar_exact(9, 1))
    assert sign_flip_test(np.zeros(5, dtype=int)) == 1.0
    with pytest.raises(ValueError, match="integer"):
        sign_flip_test(np.array([0.5, 1.0]))


def test_paired_test_uses_only_shared_pairs_and_images_as_the_unit():
    # seed 1 of image 2 was not run by both defenses (NaN): that image contributes its seed 0 only
    a = np.array([[1, 1], [1, 0], [1, np.nan], [0, 0]], dtype=float)
    b = np.array([[0, 0], [0, 0], [0, np.nan], [1, 1]], dtype=float)
    # per-image differences 2, 1, 1, -2: exact law over 16 sign patterns
    d = np.array([2, 1, 1, -2])
    p, test = paired_test(a, b)
    assert test == SIGN_FLIP and p == pytest.approx(sign_flip_test(d))
    signs = np.array(np.meshgrid(*[[-1, 1]] * 4)).reshape(4, -1).T
    sums = signs @ np.abs(d)
    assert p == pytest.approx(min(1.0, 2 * min((sums <= 2).mean(), (sums >= 2).mean())))
    with pytest.raises(ValueError, match="shape"):
        paired_test(np.ones((3, 1)), np.ones((4, 1)))

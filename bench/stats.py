"""Statistics of the leaderboard (SPEC §4): intervals for accuracies and paired tests, from scipy.

Images are the statistical unit; seeds are repeated measures of an image. Every function takes
per-image values and returns plain numbers, so it can be checked against hand-computed values.

**Interval of an accuracy** (:func:`accuracy_interval`), given each image's outcome averaged over its
seeds (``per_image`` in [0, 1]):

- every image's outcome is 0 or 1 (one seed, or seeds that agree on every image): the exact
  Clopper-Pearson interval of ``k`` successes in ``n`` images (``scipy.stats.binomtest``);
- otherwise a *cluster bootstrap* over images: the percentile interval of the mean of the per-image
  rates (:data:`BOOTSTRAP_RESAMPLES` resamples, generator ``numpy.random.default_rng(BOOTSTRAP_SEED)``),
  so seeds of one image always travel together. A resample of the images is drawn as its counts of
  each distinct per-image rate (``scipy.stats.multinomial``: the counts of ``n`` draws with
  replacement from the images are multinomial with the rates' frequencies), then the percentiles
  come from ``scipy.stats.quantile`` as in ``scipy.stats.bootstrap(method="percentile")``. It is the
  same bootstrap distribution as resampling every image (``tests/test_stats.py`` compares the two),
  at a cost of resamples x distinct rates (at most seeds + 1) instead of resamples x images:
  ``scipy.stats.bootstrap`` took ~5 s per accuracy of 6,400 images, a 10,000-task leaderboard minutes;
- at the boundary — the bootstrap interval reaches 0 or 1, or has zero width (e.g. 0 % robust:
  every resample has mean 0, so the percentile interval is [0, 0]) — percentile intervals
  under-cover. There the reported interval is the hull of the bootstrap interval and the exact
  interval of ``n * mean`` successes in ``n`` images (Clopper-Pearson through beta quantiles,
  continuous in a fractional count). Treating each image as one Bernoulli trial is conservative
  for per-image rates in [0, 1] (their variance is at most ``p (1 - p)``), and it does not depend on
  the number of seeds: 0 of 128 images gives [0, 2.84] % however many seeds were run.

**Paired test of two defenses on the same images** (:func:`paired_test`), from each image's number
of robust seeds under defense A and under defense B (on the seeds both were evaluated with):

- one seed: exact McNemar, i.e. a two-sided binomial test of the discordant images
  (``scipy.stats.binomtest(b, b + c, 0.5)``);
- several seeds: the exact paired sign-flip permutation test of the sum of per-image differences
  ``d_i = robust seeds under A - robust seeds under B``: under H0 (A and B exchangeable on each
  image) each ``d_i`` is as likely as ``-d_i``. An image counts once however many seeds it has, so
  identical seeds give exactly the p-value of one seed, and with ``|d_i|`` in {0, 1} it *is*
  McNemar's test.

Why the sign-flip distribution is computed here rather than by ``scipy.stats.permutation_test``:
scipy enumerates all ``2**n`` sign patterns only for tiny ``n`` and otherwise samples them, so its
p-values cannot go below ``1 / n_resamples`` (a 1e-50 effect would read as 1e-4). The exact null
distribution of a sum of sign-flipped integers is a short convolution of binomial laws
(``scipy.stats.binom``), one per distinct ``|d_i|``; ``tests/test_stats.py`` checks it against
scipy's exact enumeration on small samples and against ``binomtest``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

#: Two-sided confidence level of every interval.
CONFIDENCE = 0.95
#: Cluster bootstrap: resamples and generator seed (fixed, so a table is reproducible).
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0

EXACT = "exact"                      # Clopper-Pearson, images the unit
BOOTSTRAP = "bootstrap"              # cluster bootstrap over images (percentile)
BOOTSTRAP_EXACT = "bootstrap+exact"  # hull of the two, at the boundary
MCNEMAR = "mcnemar"                  # exact McNemar (one seed)
SIGN_FLIP = "sign-flip"              # exact paired sign-flip permutation test (several seeds)


@dataclass(frozen=True)
class Interval:
    """A confidence interval of an accuracy (fractions in [0, 1]) and how it was computed."""

    low: float
    high: float
    method: str


NO_INTERVAL = Interval(math.nan, math.nan, "")


def exact_interval(successes: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Clopper-Pearson interval of ``successes`` out of ``n`` trials.

    Args:
        successes: Number of successes; an integer gives ``scipy.stats.binomtest``'s exact interval,
            a fractional count (``n`` times a mean of per-image rates) the same beta-quantile formula
            evaluated at that count (Clopper & Pearson 1934).
        n: Number of trials (images), > 0.
        confidence: Two-sided level (default 0.95).
    """
    if n <= 0:
        return math.nan, math.nan
    if float(successes).is_integer():
        ci = sps.binomtest(int(successes), n).proportion_ci(confidence_level=confidence, method="exact")
        return float(ci.low), float(ci.high)
    alpha = 1.0 - confidence
    low = sps.beta.ppf(alpha / 2, successes, n - successes + 1)
    high = sps.beta.ppf(1 - alpha / 2, successes + 1, n - successes)
    return float(low), float(high)


def cluster_bootstrap_interval(per_image: np.ndarray, confidence: float = CONFIDENCE,
                               resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-image rates (images resampled, seeds with them).

    Args:
        per_image: One value per image (its outcome averaged over seeds), shape (n,), n >= 2.
        confidence: Two-sided level (default 0.95).
        resamples: Bootstrap resamples (default 9999).
        seed: ``numpy.random.default_rng`` seed (default 0).
    """
    values = np.asarray(per_image, dtype=np.float64)
    rates, counts = np.unique(values, return_counts=True)
    draws = sps.multinomial.rvs(values.size, counts / values.size, size=resamples,
                                random_state=np.random.default_rng(seed))
    means = draws.reshape(resamples, rates.size) @ rates / values.size
    alpha = (1.0 - confidence) / 2
    low, high = sps.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def accuracy_interval(per_image: np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """Interval of an accuracy from each image's outcome averaged over its seeds (module docstring).

    Args:
        per_image: Shape (n_images,), values in [0, 1].
        confidence: Two-sided level (default 0.95).

    Returns:
        :class:`Interval` with method ``exact``, ``bootstrap`` or ``bootstrap+exact``; NaN for no image.
    """
    values = np.asarray(per_image, dtype=np.float64)
    n = values.size
    if n == 0:
        return NO_INTERVAL
    total = float(values.sum())
    if np.all((values == 0) | (values == 1)):
        return Interval(*exact_interval(round(total), n, confidence), EXACT)
    low, high = cluster_bootstrap_interval(values, confidence)
    if low > 0.0 and high < 1.0 and high > low:
        return Interval(low, high, BOOTSTRAP)
    exact_low, exact_high = exact_interval(total, n, confidence)
    return Interval(min(low, exact_low), max(high, exact_high), BOOTSTRAP_EXACT)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts ``b`` and ``c`` (1.0 when none)."""
    if b + c == 0:
        return 1.0
    return float(sps.binomtest(int(b), int(b + c), 0.5).pvalue)


def sign_flip_test(differences: np.ndarray) -> float:
    """Exact two-sided paired sign-flip permutation test of ``sum(differences)``.

    Under H0 each image's difference is symmetric about 0, so the null law of the sum is that of
    ``sum_i s_i |d_i|`` with independent fair signs ``s_i``. Images with the same ``|d|`` form one
    binomial law (``|d| (2 J - c)``, ``J ~ Bin(c, 1/2)``); the laws of the groups are convolved.
    With a single non-zero ``|d|`` this is the sign test, computed by ``binomtest`` (McNemar).

    Args:
        differences: Integer per-image differences, shape (n,).

    Returns:
        ``min(1, 2 min(P(T <= t), P(T >= t)))`` for the observed sum ``t``.
    """
    d = np.asarray(differences)
    if not np.issubdtype(d.dtype, np.integer):
        if not np.all(np.equal(np.mod(d, 1), 0)):
            raise ValueError("sign_flip_test needs integer differences (counts of robust seeds)")
        d = d.astype(np.int64)
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    magnitudes, counts = np.unique(np.abs(d), return_counts=True)
    if magnitudes.size == 1:
        return mcnemar_exact(int((d > 0).sum()), int((d < 0).sum()))
    # null pmf on the integer lattice -M..M, M = sum |d_i|; index = value + M
    law = np.ones(1)
    for m, c in zip(magnitudes.tolist(), counts.tolist()):
        group = np.zeros(2 * m * c + 1)
        group[:: 2 * m] = sps.binom.pmf(np.arange(c + 1), c, 0.5)
        law = np.convolve(law, group)
    offset = (law.size - 1) // 2
    t = int(d.sum()) + offset
    lower, upper = math.fsum(law[: t + 1]), math.fsum(law[t:])
    return float(min(1.0, 2.0 * min(lower, upper)))


def paired_test(robust_a: np.ndarray, robust_b: np.ndarray) -> tuple[float, str]:
    """Paired two-sided test of defense A vs B on the same images (module docstring).

    Args:
        robust_a: Shape (n_images, n_seeds), 1 where the (image, seed) is robust under A, 0 where not,
            NaN where that seed was not run on the image by both defenses.
        robust_b: The same for B, with NaN in the same places.

    Returns:
        (p-value, test name): ``mcnemar`` with one seed, ``sign-flip`` with several.
    """
    a, b = np.asarray(robust_a, dtype=np.float64), np.asarray(robust_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"paired_test needs two (n_images, n_seeds) arrays of one shape, got {a.shape}, {b.shape}")
    if a.shape[1] == 1:
        ok = ~np.isnan(a[:, 0]) & ~np.isnan(b[:, 0])
        a1, b1 = a[ok, 0] > 0.5, b[ok, 0] > 0.5
        return mcnemar_exact(int((a1 & ~b1).sum()), int((~a1 & b1).sum())), MCNEMAR
    diff = np.nansum(a - b, axis=1)
    return sign_flip_test(np.rint(diff).astype(np.int64)), SIGN_FLIP


__all__ = [
    "BOOTSTRAP", "BOOTSTRAP_EXACT", "BOOTSTRAP_RESAMPLES", "BOOTSTRAP_SEED", "CONFIDENCE", "EXACT", "MCNEMAR",
    "NO_INTERVAL", "SIGN_FLIP", "Interval", "accuracy_interval", "cluster_bootstrap_interval", "exact_interval",
    "mcnemar_exact", "paired_test", "sign_flip_test",
]

"""Percentile bootstrap intervals for evaluation figures, and the rule for claiming a difference.

Every figure is recomputed on resampled sets of the same test items (generated samples or
test records), drawn with replacement by a seeded generator, so the same inputs always give
the same interval. Paired differences resample item ids jointly: both models are scored on
the same draw, which is what makes a difference between two models on a few dozen prompts
testable.
A difference is claimed only when its 95% interval excludes zero and, across all the
comparisons of one run, its Holm-adjusted p-value is below 5% (docs/metrics.md): each
interval also carries a two-sided p-value for "no difference", from the bootstrap standard
error (z = estimate / sd of the resampled values), never below what an exact sign-flip
test on the same number of items could reach. Fewer than MIN_ITEMS paired items get no
p-value and the verdict "too few items": even n differences all of one sign are, for
n < 6, a pattern that a coin would give more often than 5% of the time.

Items that are not independent are resampled in clusters (the turns of one conversation).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95
BETTER, WORSE, UNCLEAR = "better", "worse", "no clear difference"
HIGHER, LOWER = "higher", "lower"  # the verdicts of a metric that is neither better nor worse
FAMILY_ALPHA = 0.05  # family-wise error rate the Holm procedure keeps
TOO_FEW = "too few items"


def sign_flip_floor(n: int) -> float:
    """The smallest two-sided p-value an exact sign-flip test on n paired differences can
    give (all n of one sign: 2 of the 2**n equally likely sign patterns under "no
    difference"): no test that assumes nothing about the differences' distribution can
    be surer than this, so no bootstrap p-value is taken below it."""
    return min(1.0, 2.0 ** (1 - n)) if n > 0 else 1.0


# the fewest paired items (independently resampled units: records, samples, prompts,
# conversations) that can show a difference at all: 6, as 2**-4 = 0.0625 for 5 items
MIN_ITEMS = next(n for n in itertools.count(1) if sign_flip_floor(n) < FAMILY_ALPHA)


@dataclass(frozen=True)
class Interval:
    """A point estimate on the full set and its bootstrap interval (NaN when undefined)."""

    estimate: float
    low: float
    high: float
    # two-sided p-value for "the true value is zero" (meaningful for differences)
    p_value: float = field(default=float("nan"), compare=False)
    # how many independent items were resampled (records, samples, prompts, conversations)
    n: int = field(default=0, compare=False)

    def excludes_zero(self) -> bool:
        return bool(self.low > 0 or self.high < 0)


NO_INTERVAL = Interval(float("nan"), float("nan"), float("nan"))


def draws(n: int, resamples: int, seed: int) -> np.ndarray:
    """`resamples` x `n` item indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_p_value(estimate: float, values: np.ndarray, n: int) -> float:
    """Two-sided p-value of estimate against zero with the bootstrap standard error of a
    statistic of n items: fine below 1/resamples (which a share of resampled values could
    not resolve), as Holm needs for a family of a hundred comparisons, but never below
    sign_flip_floor(n); NaN for fewer than MIN_ITEMS items. A zero spread (every item
    moved alike) gets exactly that floor, the sign-flip test's p-value, not 0."""
    sd = float(np.std(values, ddof=1)) if values.size > 1 else float("nan")
    if n < MIN_ITEMS or not math.isfinite(estimate) or not math.isfinite(sd):
        return float("nan")
    if sd == 0:
        return 1.0 if estimate == 0 else sign_flip_floor(n)
    return max(math.erfc(abs(estimate) / sd / math.sqrt(2)), sign_flip_floor(n))


def percentile_interval(estimate: float, values: np.ndarray, n: int,
                        level: float = LEVEL) -> Interval:
    """The interval of a statistic of n items from its resampled `values`."""
    tail = 100 * (1 - level) / 2
    finite = values[np.isfinite(values)]
    if not finite.size:
        return Interval(estimate, float("nan"), float("nan"), n=n)
    low, high = np.percentile(finite, [tail, 100 - tail])
    return Interval(float(estimate), float(low), float(high),
                    bootstrap_p_value(float(estimate), finite, n), n)


def mean_interval(values: Sequence[float], resamples: int = RESAMPLES, seed: int = 0,
                  level: float = LEVEL) -> Interval:
    """Interval for the mean of per-sample values."""
    x = np.asarray(values, dtype=float)
    if not x.size:
        return NO_INTERVAL
    return percentile_interval(x.mean(), x[draws(x.size, resamples, seed)].mean(axis=1),
                               x.size, level)


Transform = Callable[[np.ndarray], np.ndarray]


def identity(values: np.ndarray) -> np.ndarray:
    return values


def ratio_interval(numerators: Sequence[float], denominators: Sequence[float],
                   resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL,
                   transform: Transform = identity) -> Interval:
    """Interval for transform(sum(numerators) / sum(denominators)), resampling items: a
    token-weighted loss (or with np.exp its perplexity) from per-record sums and counts."""
    num, den = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    if not num.size or den.sum() == 0:
        return NO_INTERVAL
    idx = draws(num.size, resamples, seed)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        values = transform(num[idx].sum(axis=1) / den[idx].sum(axis=1))
        estimate = transform(np.array([num.sum() / den.sum()]))[0]
    return percentile_interval(estimate, values, num.size, level)


def paired_mean_difference(base: Sequence[float], other: Sequence[float],
                           resamples: int = RESAMPLES, seed: int = 0,
                           level: float = LEVEL) -> Interval:
    """Interval for mean(other) - mean(base) over the same items, resampled jointly."""
    a, b = np.asarray(base, dtype=float), np.asarray(other, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in length: {a.size} and {b.size}")
    return mean_interval(b - a, resamples, seed, level)


def paired_ratio_difference(base: tuple[Sequence[float], Sequence[float]],
                            other: tuple[Sequence[float], Sequence[float]],
                            resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL,
                            transform: Transform = identity) -> Interval:
    """Interval for f(other) - f(base), f = transform(sum(numerators) / sum(denominators)),
    each (numerators, denominators) over the same items, resampled jointly: the difference
    of two token-weighted losses."""
    (na, da), (nb, db) = ([np.asarray(v, dtype=float) for v in pair] for pair in (base, other))
    if not (na.size == da.size == nb.size == db.size):
        raise ValueError(f"paired records differ in number: {na.size} and {nb.size}")
    if not na.size or da.sum() == 0 or db.sum() == 0:
        return NO_INTERVAL
    idx = draws(na.size, resamples, seed)

    def gap(rows: np.ndarray) -> np.ndarray:
        rows = np.atleast_2d(rows)
        return (transform(nb[rows].sum(axis=1) / db[rows].sum(axis=1))
                - transform(na[rows].sum(axis=1) / da[rows].sum(axis=1)))

    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return percentile_interval(gap(np.arange(na.size))[0], gap(idx), na.size, level)


CorpusScore = Callable[[np.ndarray], float]


def corpus_interval(statistics: np.ndarray, score: CorpusScore, resamples: int = RESAMPLES,
                    seed: int = 0, level: float = LEVEL) -> Interval:
    """Interval for a corpus-level score (sacreBLEU, chrF) given one row of sufficient
    statistics per sample and `score` of their column sums: the score is recomputed on
    each resampled set of samples."""
    stats = np.asarray(statistics, dtype=float)
    if not stats.size:
        return NO_INTERVAL
    values = np.array([score(stats[row].sum(axis=0))
                       for row in draws(len(stats), resamples, seed)])
    return percentile_interval(score(stats.sum(axis=0)), values, len(stats), level)


def paired_corpus_difference(base: np.ndarray, other: np.ndarray, score: CorpusScore,
                             resamples: int = RESAMPLES, seed: int = 0,
                             level: float = LEVEL) -> Interval:
    """Interval for score(other) - score(base), statistics rows of the same samples in the
    same order, resampled jointly."""
    a, b = np.asarray(base, dtype=float), np.asarray(other, dtype=float)
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in number: {len(a)} and {len(b)}")
    if not a.size:
        return NO_INTERVAL

    def gap(rows: np.ndarray) -> float:
        return score(b[rows].sum(axis=0)) - score(a[rows].sum(axis=0))

    values = np.array([gap(row) for row in draws(len(a), resamples, seed)])
    return percentile_interval(gap(np.arange(len(a))), values, len(a), level)


def cluster_mean_interval(values: Sequence[float], clusters: Sequence[Hashable],
                          resamples: int = RESAMPLES, seed: int = 0,
                          level: float = LEVEL) -> Interval:
    """Interval for the mean of per-item values when items come in clusters that are not
    independent inside (the turns of one conversation): whole clusters are resampled, and
    the mean is over the items of the drawn clusters."""
    x = np.asarray(values, dtype=float)
    if x.size != len(clusters):
        raise ValueError(f"{x.size} values but {len(clusters)} cluster ids")
    if not x.size:
        return NO_INTERVAL
    _, index = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)
    sums, sizes = np.bincount(index, weights=x), np.bincount(index).astype(float)
    return ratio_interval(sums, sizes, resamples, seed, level)


def paired_cluster_mean_difference(base: Sequence[float], other: Sequence[float],
                                   clusters: Sequence[Hashable], resamples: int = RESAMPLES,
                                   seed: int = 0, level: float = LEVEL) -> Interval:
    """Interval for mean(other) - mean(base) over the same items, whole clusters resampled."""
    a, b = np.asarray(base, dtype=float), np.asarray(other, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in length: {a.size} and {b.size}")
    return cluster_mean_interval(b - a, clusters, resamples, seed, level)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count in the family):
    rejecting where adjusted < alpha keeps the family-wise error rate at alpha."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    tested = np.flatnonzero(np.isfinite(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = order.size
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def verdict(difference: Interval, higher_is_better: bool | None) -> str:
    """"better"/"worse" for `other` against `base` when the interval of other - base
    excludes zero, else "no clear difference"; "higher"/"lower" for a metric that is
    neither better nor worse when higher (higher_is_better None: answer length); "too few
    items" below MIN_ITEMS paired items, whatever the interval."""
    if difference.n < MIN_ITEMS:
        return TOO_FEW
    if not difference.excludes_zero():
        return UNCLEAR
    if higher_is_better is None:
        return HIGHER if difference.low > 0 else LOWER
    return BETTER if (difference.low > 0) == higher_is_better else WORSE

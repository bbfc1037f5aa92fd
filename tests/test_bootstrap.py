"""Bootstrap intervals and the rule for claiming a difference (workflow_scripts/evaluation/bootstrap.py)."""
import math

import numpy as np
import pytest

from workflow_scripts.evaluation.bootstrap import (BETTER, UNCLEAR, WORSE, Interval,
                                                   corpus_interval, mean_interval,
                                                   paired_corpus_difference, paired_mean_difference,
                                                   paired_ratio_difference, ratio_interval,
                                                   verdict)
from workflow_scripts.evaluation.text_metrics import corpus_scores, corpus_statistics, score_from_statistics


def test_mean_interval_is_seeded_and_brackets_the_mean():
    values = [10.0, 40.0, 25.0, 0.0, 35.0, 18.0]
    first = mean_interval(values, seed=3)
    assert first == mean_interval(values, seed=3)
    assert first.estimate == pytest.approx(np.mean(values))
    assert first.low < first.estimate < first.high
    assert mean_interval([5.0] * 8) == Interval(5.0, 5.0, 5.0)
    assert math.isnan(mean_interval([]).estimate)


def test_mean_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = sum(iv.low <= 1.0 <= iv.high for iv in (
        mean_interval(rng.normal(1.0, 2.0, size=40), resamples=400, seed=i) for i in range(200)))
    assert 0.88 <= hits / 200 <= 0.99


def test_ratio_interval_weights_records_by_tokens():
    # One long record with low loss, three short ones with high loss.
    interval = ratio_interval([100.0, 6.0, 6.0, 6.0], [100, 2, 2, 2], seed=1)
    assert interval.estimate == pytest.approx(118 / 106)  # not the mean of ratios (2.5)
    assert interval.low <= interval.estimate <= interval.high <= 3.0


def test_pairing_detects_a_small_consistent_gain_that_unpaired_intervals_hide():
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 100, size=16)  # prompts differ a lot in difficulty
    tuned = base + rng.uniform(1.0, 3.0, size=16)  # every prompt gains a little
    a, b = mean_interval(base), mean_interval(tuned)
    assert a.high > b.low  # the two intervals overlap
    gain = paired_mean_difference(base, tuned)
    assert gain.low > 0 and verdict(gain, higher_is_better=True) == BETTER
    assert verdict(paired_mean_difference(tuned, base), higher_is_better=True) == WORSE


def test_paired_loss_difference_and_lower_is_better():
    tokens = [10, 20, 30, 40, 50]
    base = ([2.0 * t for t in tokens], tokens)
    tuned = ([1.5 * t + (1 if i % 2 else -1) for i, t in enumerate(tokens)], tokens)
    diff = paired_ratio_difference(base, tuned)
    assert diff.estimate == pytest.approx(sum(tuned[0]) / 150 - 2.0)
    assert diff.high < 0 and verdict(diff, higher_is_better=False) == BETTER
    with pytest.raises(ValueError, match="differ in number: 5 and 4"):
        paired_ratio_difference(base, (tuned[0][:4], tokens[:4]))


def test_an_interval_that_includes_zero_claims_nothing():
    assert verdict(Interval(0.5, -0.1, 1.2), higher_is_better=True) == UNCLEAR
    assert verdict(Interval(0.0, 0.0, 0.0), higher_is_better=False) == UNCLEAR
    assert verdict(Interval(float("nan"), float("nan"), float("nan")), True) == UNCLEAR
    noise = paired_mean_difference([1.0, 5.0, 3.0, 7.0], [5.0, 1.0, 7.0, 3.0])
    assert verdict(noise, higher_is_better=True) == UNCLEAR


def test_corpus_metrics_are_recomputed_on_each_draw():
    refs = ["北京是中国的首都。", "机器学习让计算机学习规律。", "推荐《红楼梦》。", "好的，明天见。"]
    preds = ["北京是首都。", "机器学习很难。", "推荐一本书。", "好的。"]
    chrf = lambda totals: score_from_statistics("chrf", totals)  # noqa: E731
    stats = corpus_statistics("chrf", preds, refs)
    interval = corpus_interval(stats, chrf, resamples=50, seed=2)
    assert interval.estimate == pytest.approx(corpus_scores(preds, refs)["chrf"])
    assert interval.low < interval.estimate < interval.high
    assert paired_corpus_difference(stats, stats, chrf, resamples=20) == Interval(0.0, 0.0, 0.0)
    perfect = corpus_statistics("chrf", refs, refs)
    better = paired_corpus_difference(stats, perfect, chrf, resamples=50)
    assert better.estimate == pytest.approx(100 - interval.estimate)
    assert verdict(better, higher_is_better=True) == BETTER


def test_perplexity_interval_is_the_exponential_of_the_loss_interval():
    sums, tokens = [12.0, 30.0, 8.0, 25.0], [5, 10, 4, 9]
    loss = ratio_interval(sums, tokens, seed=4)
    ppl = ratio_interval(sums, tokens, seed=4, transform=np.exp)
    assert (ppl.estimate, ppl.low, ppl.high) == pytest.approx(
        (math.exp(loss.estimate), math.exp(loss.low), math.exp(loss.high)))
    diff = paired_ratio_difference((sums, tokens), ([s / 2 for s in sums], tokens),
                                   transform=np.exp)
    assert diff.estimate == pytest.approx(math.exp(75 / 56) - math.exp(75 / 28))

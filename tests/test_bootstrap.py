"""Bootstrap intervals and the rule for claiming a difference (workflow_scripts/evaluation/bootstrap.py)."""
import math

import numpy as np
import pytest

from workflow_scripts.evaluation.bootstrap import (BETTER, MIN_ITEMS, TOO_FEW, UNCLEAR, WORSE,
                                                   Interval, corpus_interval, holm,
                                                   mean_interval, paired_cluster_mean_difference,
                                                   paired_corpus_difference, paired_mean_difference,
                                                   paired_ratio_difference, ratio_interval,
                                                   sign_flip_floor, verdict)
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
    tokens = [10, 20, 30, 40, 50, 60]
    base = ([2.0 * t for t in tokens], tokens)
    tuned = ([1.5 * t + (1 if i % 2 else -1) for i, t in enumerate(tokens)], tokens)
    diff = paired_ratio_difference(base, tuned)
    assert diff.estimate == pytest.approx(sum(tuned[0]) / 210 - 2.0)
    assert diff.high < 0 and verdict(diff, higher_is_better=False) == BETTER
    with pytest.raises(ValueError, match="differ in number: 6 and 4"):
        paired_ratio_difference(base, (tuned[0][:4], tokens[:4]))


def test_an_interval_that_includes_zero_claims_nothing():
    assert verdict(Interval(0.5, -0.1, 1.2, n=40), higher_is_better=True) == UNCLEAR
    assert verdict(Interval(0.0, 0.0, 0.0, n=40), higher_is_better=False) == UNCLEAR
    assert verdict(Interval(float("nan"), float("nan"), float("nan"), n=40), True) == UNCLEAR
    noise = paired_mean_difference([1.0, 5.0, 3.0, 7.0, 2.0, 6.0], [5.0, 1.0, 7.0, 3.0, 6.0, 2.0])
    assert verdict(noise, higher_is_better=True) == UNCLEAR


def test_corpus_metrics_are_recomputed_on_each_draw():
    refs = ["北京是中国的首都。", "机器学习让计算机学习规律。", "推荐《红楼梦》。", "好的，明天见。",
            "春风又绿江南岸。", "多运动，早睡早起。"]
    preds = ["北京是首都。", "机器学习很难。", "推荐一本书。", "好的。", "春天来了。", "早睡早起。"]
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


def test_the_fewest_items_a_difference_needs_follow_from_the_sign_flip_test():
    # all n differences of one sign happen by chance with probability 2 * 2**-n
    assert sign_flip_floor(5) == 0.0625 > 0.05 > sign_flip_floor(6) == 0.03125
    assert MIN_ITEMS == 6


@pytest.mark.parametrize("n", [1, 2, 5])
def test_too_few_paired_items_claim_nothing_even_without_spread(n):
    # every item gains exactly 1: the bootstrap has zero spread and would give p = 0
    for diff in (paired_mean_difference([0.0] * n, [1.0] * n),
                 paired_ratio_difference(([2.0] * n, [1] * n), ([1.0] * n, [1] * n))):
        assert diff.low == diff.high == diff.estimate and diff.n == n
        assert math.isnan(diff.p_value) and verdict(diff, higher_is_better=True) == TOO_FEW
    assert math.isnan(holm([diff.p_value, 0.01])[0])  # not one of the family's tests


def test_zero_spread_from_enough_items_gets_the_sign_flip_p_value_not_zero():
    six = paired_mean_difference([0.0] * 6, [1.0] * 6)
    assert six.p_value == sign_flip_floor(6) and verdict(six, higher_is_better=True) == BETTER
    assert holm([six.p_value, 0.5])[0] > 0.05  # one more comparison and it is not kept
    rng = np.random.default_rng(3)
    base = rng.normal(size=8)
    clear = paired_mean_difference(base, base + 5 + 0.01 * rng.normal(size=8))
    assert clear.p_value == sign_flip_floor(8)  # the normal approximation would say ~0


def test_clustered_items_count_conversations_not_turns():
    # 5 conversations of 4 turns: 20 turns, but 5 independent items
    clusters = [f"c{i // 4}" for i in range(20)]
    diff = paired_cluster_mean_difference([0.0] * 20, [1.0] * 20, clusters)
    assert diff.n == 5 and verdict(diff, higher_is_better=True) == TOO_FEW

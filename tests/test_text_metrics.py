"""Text metrics against a from-scratch implementation of the same formulas."""
import math
from collections import Counter

import jieba
import pytest

from workflow_scripts.text_metrics import compute_text_metrics

PREDICTIONS = [
    "北京是中国的首都。",
    "机器学习让计算机学习规律",
    "好好好好",
    "今天天气很好，我们去公园散步吧！明天也许下雨。",
    "完全无关的回答",
    "是",
]
REFERENCES = [
    "北京是中国的首都，历史悠久。",
    "机器学习让计算机从数据中学习规律。",
    "好的",
    "今天天气不错，我们去公园吧！明天会下雨。",
    "推荐一本书",
    "是的",
]


def char_bleu4(prediction: str, reference: str) -> float:
    """BLEU-4 with clipped n-gram precision, NIST geometric smoothing and brevity penalty."""
    hyp, ref = list(prediction), list(reference)
    log_sum, k = 0.0, 1
    for n in range(1, 5):
        hyp_grams = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
        ref_grams = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
        matches = sum(min(count, ref_grams[g]) for g, count in hyp_grams.items())
        total = max(1, sum(hyp_grams.values()))
        if matches == 0 and n == 1:
            return 0.0
        if matches == 0:
            precision, k = 1 / (2 ** k * total), k + 1
        else:
            precision = matches / total
        log_sum += 0.25 * math.log(precision)
    brevity = 1.0 if len(hyp) > len(ref) else math.exp(1 - len(ref) / len(hyp))
    return 100 * brevity * math.exp(log_sum)


def lcs_length(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, start=1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(prediction: str, reference: str) -> float:
    hyp, ref = " ".join(jieba.cut(prediction)).split(), " ".join(jieba.cut(reference)).split()
    if not hyp or not ref:
        return 0.0
    lcs = lcs_length(hyp, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(hyp), lcs / len(ref)
    return 100 * 2 * precision * recall / (precision + recall)


def test_bleu4_and_rouge_l_match_the_formulas():
    metrics = compute_text_metrics(PREDICTIONS, REFERENCES, dialogue=False)
    bleu = [char_bleu4(p, r) for p, r in zip(PREDICTIONS, REFERENCES)]
    rouge = [rouge_l(p, r) for p, r in zip(PREDICTIONS, REFERENCES)]
    assert metrics["bleu4"] == pytest.approx(sum(bleu) / len(bleu), rel=1e-9)
    # rouge_chinese adds 1e-8 to the F-score's denominator.
    assert metrics["rougeL"] == pytest.approx(sum(rouge) / len(rouge), rel=1e-6)
    assert 0 < metrics["bleu4"] < 100 and 0 < metrics["rougeL"] < 100


def test_identical_strings_score_100():
    texts = ["今天天气很好，我们去公园散步吧！", "机器学习让计算机从数据中学习规律。"]
    metrics = compute_text_metrics(texts, texts, dialogue=False)
    for key in ("bleu4", "rouge1", "rouge2", "rougeL", "sacrebleu", "chrf"):
        assert metrics[key] == pytest.approx(100, rel=1e-6), key
    assert metrics["nonempty_share"] == 1.0


def test_empty_prediction_scores_zero():
    metrics = compute_text_metrics(["", "   "], ["北京是中国的首都。", "你好"], dialogue=True)
    for key in ("bleu4", "rouge1", "rouge2", "rougeL", "sacrebleu"):
        assert metrics[key] == 0.0, key
    assert metrics["nonempty_share"] == 0.0
    assert metrics["mean_answer_chars"] == 1.5
    silent = compute_text_metrics(["", ""], ["你好", "好"], dialogue=True)
    assert silent["distinct1"] == silent["distinct2"] == silent["chrf"] == 0.0


def test_one_empty_sample_lowers_the_average():
    full = compute_text_metrics(["北京是首都"], ["北京是首都"], dialogue=False)
    half = compute_text_metrics(["北京是首都", ""], ["北京是首都", "你好"], dialogue=False)
    assert half["bleu4"] == pytest.approx(full["bleu4"] / 2)
    assert half["rougeL"] == pytest.approx(full["rougeL"] / 2)
    assert half["nonempty_share"] == 0.5


def test_distinct_counts_character_ngrams_over_all_predictions():
    metrics = compute_text_metrics(["哈哈哈", "哈哈好"], ["x", "y"], dialogue=True)
    assert metrics["distinct1"] == pytest.approx(100 * 2 / 6)
    assert metrics["distinct2"] == pytest.approx(100 * 2 / 4)
    assert set(metrics) == {"bleu4", "rouge1", "rouge2", "rougeL", "sacrebleu", "chrf",
                            "distinct1", "distinct2", "nonempty_share", "mean_answer_chars"}


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        compute_text_metrics(["a", "b"], ["a"], dialogue=False)

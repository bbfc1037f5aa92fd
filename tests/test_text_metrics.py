"""Text metrics against from-scratch formulas and LLaMA-Factory's own recipe."""
import math
from collections import Counter

import jieba
import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_chinese import Rouge

from workflow_scripts.evaluation.text_metrics import (compute_text_metrics, corpus_scores,
                                                      corpus_statistics, sample_scores,
                                                      score_from_statistics)

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
    # Per-sample scores are rounded to 4 decimals, as LLaMA-Factory rounds them.
    assert metrics["bleu4"] == pytest.approx(sum(bleu) / len(bleu), abs=1e-4)
    # rouge_chinese adds 1e-8 to the F-score's denominator.
    assert metrics["rougeL"] == pytest.approx(sum(rouge) / len(rouge), abs=1e-4)
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


def llama_factory_scores(pred: str, label: str) -> dict[str, float]:
    """LLaMA-Factory's ComputeSimilarity for one pair, step by step as it is written there."""
    hypothesis, reference = list(jieba.cut(pred)), list(jieba.cut(label))
    if len(" ".join(hypothesis).split()) == 0 or len(" ".join(reference).split()) == 0:
        result = {"rouge-1": {"f": 0.0}, "rouge-2": {"f": 0.0}, "rouge-l": {"f": 0.0}}
    else:
        result = Rouge().get_scores(" ".join(hypothesis), " ".join(reference))[0]
    scores = {k: round(v["f"] * 100, 4) for k, v in result.items()}
    bleu = sentence_bleu([list(label)], list(pred), smoothing_function=SmoothingFunction().method3)
    return {"bleu4": round(bleu * 100, 4), "rouge1": scores["rouge-1"],
            "rouge2": scores["rouge-2"], "rougeL": scores["rouge-l"]}


EDGE_CASES = [
    ("第一步：准备材料。\n第二步：开始做饭\n第三步", "第一步：买菜\n第二步：开始做饭。"),
    ("1. 多喝水\n2. 早睡早起\n\n3. 运动", "1. 多喝水；2. 早睡早起；3. 坚持运动。"),
    ("好！！！真的？", "好。真的吗？“是的。”"),
    ("Hello, world... 你好……", "hello world 你好"),
    ("", "北京是中国的首都。"),
    ("北京", ""),
    ("\n \n", "你好"),
    ("", ""),
]


@pytest.mark.parametrize("prediction, reference", EDGE_CASES)
def test_per_sample_scores_equal_llama_factory(prediction, reference):
    assert sample_scores(prediction, reference) == llama_factory_scores(prediction, reference)


def test_line_breaks_count_as_rouge_chinese_sentences():
    # jieba keeps both newlines; rouge_chinese splits sentences there, and the blank line
    # between them becomes an empty word: hypothesis words a, "", b against reference a b.
    scores = sample_scores("a\n\nb", "a b")
    assert scores["rouge1"] == scores["rougeL"] == pytest.approx(80.0)  # P 2/3, R 1
    assert scores["rouge2"] == 0.0  # bigrams (a, ""), ("", b) against (a, b)
    # Collapsing whitespace first (what this module did before) would score 100.
    assert sample_scores("a b", "a b")["rougeL"] == 100.0


def test_empty_sides_score_zero_without_error():
    for prediction, reference in (("", "你好"), ("你好", ""), ("  \n", "你好"), ("", "")):
        assert sample_scores(prediction, reference) == dict.fromkeys(
            ("bleu4", "rouge1", "rouge2", "rougeL"), 0.0)


def test_precomputed_per_sample_scores_give_the_same_means():
    rows = [sample_scores(p, r) for p, r in zip(PREDICTIONS, REFERENCES)]
    given = compute_text_metrics(PREDICTIONS, REFERENCES, dialogue=False, per_sample=rows)
    assert given == compute_text_metrics(PREDICTIONS, REFERENCES, dialogue=False)
    assert given["rouge1"] == pytest.approx(sum(r["rouge1"] for r in rows) / len(rows))
    with pytest.raises(ValueError, match="1 per-sample scores for 6 predictions"):
        compute_text_metrics(PREDICTIONS, REFERENCES, dialogue=False, per_sample=rows[:1])


def test_corpus_scores_from_summed_statistics_equal_sacrebleu():
    direct = corpus_scores(PREDICTIONS, REFERENCES)
    rows = [0, 0, 3, 5, 1]  # a resample: duplicates allowed
    for key in ("sacrebleu", "chrf"):
        stats = corpus_statistics(key, PREDICTIONS, REFERENCES)
        assert stats.shape[0] == len(PREDICTIONS)
        assert score_from_statistics(key, stats.sum(axis=0)) == pytest.approx(direct[key])
        drawn = corpus_scores([PREDICTIONS[i] for i in rows], [REFERENCES[i] for i in rows])
        assert score_from_statistics(key, stats[rows].sum(axis=0)) == pytest.approx(drawn[key])

"""Text metrics for generated answers, defined as LLaMA-Factory reports them.

BLEU-4 is character-level nltk sentence BLEU (smoothing method 3) averaged over samples;
ROUGE-1/2/L are rouge_chinese F-scores on jieba words, averaged over samples. Both are x100.
sacreBLEU (tokenize="zh") and chrF are corpus-level scores from the sacrebleu library.
"""
from __future__ import annotations

import logging
from statistics import fmean

import jieba
import sacrebleu
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_chinese import Rouge

jieba.setLogLevel(logging.WARNING)

ROUGE_KEYS = {"rouge-1": "rouge1", "rouge-2": "rouge2", "rouge-l": "rougeL"}
METRIC_KEYS = ("bleu4", "rouge1", "rouge2", "rougeL", "sacrebleu", "chrf", "distinct1",
               "distinct2", "nonempty_share", "mean_answer_chars")


def bleu4_chars(prediction: str, reference: str) -> float:
    """Sentence BLEU-4 on characters, 0-100 (nltk gives 0 for an empty prediction)."""
    smoothing = SmoothingFunction().method3
    return 100.0 * sentence_bleu([list(reference)], list(prediction), smoothing_function=smoothing)


def segment(text: str) -> str:
    """jieba words joined by single spaces."""
    return " ".join(" ".join(jieba.cut(text)).split())


def rouge_scores(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F-scores, 0-100; zero when either side is empty after segmentation."""
    hypothesis, target = segment(prediction), segment(reference)
    if not hypothesis or not target:
        return {key: 0.0 for key in ROUGE_KEYS.values()}
    scores = Rouge().get_scores(hypothesis, target)[0]
    return {ROUGE_KEYS[name]: 100.0 * value["f"] for name, value in scores.items()}


def distinct_n(predictions: list[str], n: int) -> float:
    """Unique character n-grams / all character n-grams over every prediction, 0-100."""
    grams = [text[i:i + n] for text in predictions for i in range(len(text) - n + 1)]
    return 100.0 * len(set(grams)) / len(grams) if grams else 0.0


def corpus_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """sacreBLEU (Chinese tokenizer) and chrF over the whole test set, 0-100."""
    return {
        "sacrebleu": sacrebleu.corpus_bleu(predictions, [references], tokenize="zh").score,
        "chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
    }


def compute_text_metrics(predictions: list[str], references: list[str], dialogue: bool) -> dict:
    """Every text metric of docs/artifacts.md for one set of generated answers.

    `dialogue` marks chit-chat data, where distinct-n is the meaningful diversity measure;
    distinct-n is computed either way so that tables keep the same columns.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        return {key: 0.0 for key in METRIC_KEYS}
    rouge = [rouge_scores(p, r) for p, r in zip(predictions, references)]
    return {
        "bleu4": fmean(bleu4_chars(p, r) for p, r in zip(predictions, references)),
        **{key: fmean(row[key] for row in rouge) for key in ROUGE_KEYS.values()},
        **corpus_scores(predictions, references),
        "distinct1": distinct_n(predictions, 1),
        "distinct2": distinct_n(predictions, 2),
        "nonempty_share": fmean(bool(p.strip()) for p in predictions),
        "mean_answer_chars": fmean(len(p) for p in predictions),
    }

"""Text metrics for generated answers, computed exactly as LLaMA-Factory computes them.

Per sample (LLaMA-Factory's ComputeSimilarity, src/llamafactory/train/sft/metric.py):
BLEU-4 is nltk sentence BLEU on characters with smoothing method 3; ROUGE-1/2/L are
rouge_chinese F-scores on jieba's words joined by single spaces *as they come*: newlines
stay in, so rouge_chinese splits the text into sentences there (ROUGE-L is then the
summary-level LCS). Either side empty after whitespace splitting scores 0. Each score is
x100 and rounded to 4 decimals; the reported value is the mean over samples.
sacreBLEU (tokenize="zh") and chrF are corpus-level scores from the sacrebleu library.
"""
from __future__ import annotations

import logging
from statistics import fmean

import jieba
import numpy as np
import sacrebleu
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_chinese import Rouge
from sacrebleu.metrics import BLEU, CHRF

jieba.setLogLevel(logging.WARNING)

ROUGE_KEYS = {"rouge-1": "rouge1", "rouge-2": "rouge2", "rouge-l": "rougeL"}
SAMPLE_KEYS = ("bleu4", "rouge1", "rouge2", "rougeL")
CORPUS_KEYS = ("sacrebleu", "chrf")
METRIC_KEYS = (*SAMPLE_KEYS, *CORPUS_KEYS, "distinct1", "distinct2", "nonempty_share",
               "mean_answer_chars")
DIGITS = 4  # LLaMA-Factory rounds every per-sample score to 4 decimals


def bleu4_chars(prediction: str, reference: str) -> float:
    """Sentence BLEU-4 on characters, 0-100 (nltk gives 0 when either side is empty)."""
    smoothing = SmoothingFunction().method3
    score = sentence_bleu([list(reference)], list(prediction), smoothing_function=smoothing)
    return round(100.0 * score, DIGITS)


def segment(text: str) -> str:
    """jieba's words joined by single spaces, newlines and other whitespace tokens kept."""
    return " ".join(jieba.cut(text))


def rouge_scores(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F-scores, 0-100; zero when either side has no word after segmentation."""
    hypothesis, target = segment(prediction), segment(reference)
    if not hypothesis.split() or not target.split():
        return {key: 0.0 for key in ROUGE_KEYS.values()}
    scores = Rouge().get_scores(hypothesis, target)[0]
    return {ROUGE_KEYS[name]: round(100.0 * value["f"], DIGITS) for name, value in scores.items()}


def sample_scores(prediction: str, reference: str) -> dict[str, float]:
    """The per-sample scores (SAMPLE_KEYS) that predictions.jsonl carries for the bootstrap."""
    return {"bleu4": bleu4_chars(prediction, reference), **rouge_scores(prediction, reference)}


def distinct_n(predictions: list[str], n: int) -> float:
    """Unique character n-grams / all character n-grams over every prediction, 0-100."""
    grams = [text[i:i + n] for text in predictions for i in range(len(text) - n + 1)]
    return 100.0 * len(set(grams)) / len(grams) if grams else 0.0


def corpus_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """sacreBLEU (Chinese tokenizer) and chrF over the whole set of samples, 0-100."""
    return {
        "sacrebleu": sacrebleu.corpus_bleu(predictions, [references], tokenize="zh").score,
        "chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
    }


# sacrebleu scores a corpus from the sum of per-sample sufficient statistics (n-gram counts
# and lengths); a resampled corpus is then a sum over drawn rows, not a re-tokenization.
CORPUS_METRICS = {"sacrebleu": lambda: BLEU(tokenize="zh"), "chrf": CHRF}


def corpus_statistics(key: str, predictions: list[str], references: list[str]) -> np.ndarray:
    """One row of sacrebleu's sufficient statistics per sample, for "sacrebleu" or "chrf"."""
    metric = CORPUS_METRICS[key]()
    return np.array(metric._extract_corpus_statistics(predictions, [references]), dtype=float)


def score_from_statistics(key: str, totals: np.ndarray) -> float:
    """The corpus score of summed statistics: equal to `corpus_scores` on those samples."""
    return CORPUS_METRICS[key]()._compute_score_from_stats(list(totals)).score


def compute_text_metrics(predictions: list[str], references: list[str], dialogue: bool,
                         per_sample: list[dict] | None = None) -> dict:
    """Every text metric of docs/metrics.md for one set of generated answers.

    `per_sample` takes the `sample_scores` of each pair when the caller has them already
    (it writes them to predictions.jsonl). `dialogue` marks chit-chat data, where distinct-n
    is the meaningful diversity measure; it is computed either way so tables keep their columns.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if per_sample is None:
        per_sample = [sample_scores(p, r) for p, r in zip(predictions, references)]
    if len(per_sample) != len(predictions):
        raise ValueError(f"{len(per_sample)} per-sample scores for {len(predictions)} predictions")
    if not predictions:
        return {key: 0.0 for key in METRIC_KEYS}
    return {
        **{key: fmean(row[key] for row in per_sample) for key in SAMPLE_KEYS},
        **corpus_scores(predictions, references),
        "distinct1": distinct_n(predictions, 1),
        "distinct2": distinct_n(predictions, 2),
        "nonempty_share": fmean(bool(p.strip()) for p in predictions),
        "mean_answer_chars": fmean(len(p) for p in predictions),
    }

"""One evaluation directory's files, and bootstrap intervals for every metric it reports.

An evaluation directory (docs/artifacts.md) holds metrics.json, predictions.jsonl (the
generated samples with per-sample scores), record_losses.jsonl (every test record's loss
sum and token count) and, for datasets with tool calls, tool_calls.jsonl (per-sample 0/1
call scores, several per conversation). Point estimates are taken from metrics.json; intervals and paired
differences are recomputed from the two .jsonl files (workflow_scripts/evaluation/bootstrap.py).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workflow_scripts.common.io_utils import read_json, read_jsonl
from workflow_scripts.evaluation import bootstrap
from workflow_scripts.evaluation.bootstrap import NO_INTERVAL, Interval
from workflow_scripts.evaluation.text_metrics import corpus_statistics, sample_scores, score_from_statistics


@dataclass(frozen=True)
class Metric:
    """How a metric is resampled: over test records (a token-weighted loss, `transform`ed),
    over samples (a mean of per-sample values), over samples recomputing a corpus score, or
    not at all ("point": distinct-n, which counts the duplicates a resample with replacement
    makes as repetition, so its bootstrap would be biased low)."""

    kind: str  # "records" | "samples" | "tools" | "corpus" | "point"
    higher_is_better: bool | None  # None: a change that is neither better nor worse
    floor: float  # a base value below this in magnitude gets no percent change
    sample: Callable[[dict], float] | None = None
    transform: bootstrap.Transform = bootstrap.identity


def _score(key: str) -> Callable[[dict], float]:
    return lambda row: float(row[key]) if key in row else sample_scores(
        row["prediction"], row["reference"])[key]


# Below these a base value gets no percent change: 5 points of a 0-100 score, 5% of a share.
SCORE_FLOOR, SHARE_FLOOR = 5.0, 0.05
NOT_TESTED = "not tested"  # the verdict of a metric without interval

METRICS: dict[str, Metric] = {
    "loss": Metric("records", False, 0.01),
    "perplexity": Metric("records", False, 0.01, transform=np.exp),
    **{key: Metric("samples", True, SCORE_FLOOR, sample=_score(key))
       for key in ("bleu4", "rouge1", "rouge2", "rougeL")},
    **{key: Metric("corpus", True, SCORE_FLOOR) for key in ("sacrebleu", "chrf")},
    "distinct1": Metric("point", True, SCORE_FLOOR),
    "distinct2": Metric("point", True, SCORE_FLOOR),
    "nonempty_share": Metric("samples", True, SHARE_FLOOR,
                             sample=lambda row: float(bool(row["prediction"].strip()))),
    "eot_share": Metric("samples", True, SHARE_FLOOR,
                        sample=lambda row: float(bool(row.get("ended")))),
    "stopped_share": Metric("samples", True, SHARE_FLOOR,
                            sample=lambda row: float(bool(row.get("stopped")))),
    # a model that learns to stop answers shorter, a rambling one longer: neither is better
    "mean_answer_chars": Metric("samples", None, 1.0,
                                sample=lambda row: float(len(row["prediction"]))),
    # tool_eval's per-sample scores in tool_calls.jsonl, under their metrics.json names
    **{name: Metric("tools", True, SHARE_FLOOR, sample=_score(key))
       for key, name in (("tool_valid", "tool_valid_share"),
                         ("tool_name_correct", "tool_name_accuracy"),
                         ("tool_args_exact", "tool_args_exact"))},
}


@dataclass
class EvalRun:
    """An evaluation directory as read from disk (empty lists for absent files)."""

    path: Path
    metrics: dict
    samples: list[dict]
    records: list[dict]
    tool_calls: list[dict]

    @classmethod
    def read(cls, path: Path) -> EvalRun | None:
        """None when metrics.json is absent (a pending or failed job)."""
        if not (path / "metrics.json").is_file():
            return None
        return cls(path, read_json(path / "metrics.json"), _rows(path / "predictions.jsonl"),
                   _rows(path / "record_losses.jsonl"), _rows(path / "tool_calls.jsonl"))

    def items(self, metric: Metric) -> list[dict]:
        """The rows a metric is resampled over."""
        return {"records": self.records, "tools": self.tool_calls}.get(metric.kind, self.samples)


def _rows(path: Path) -> list[dict]:
    return list(read_jsonl(path)) if path.is_file() else []


def conversation(row: dict) -> str:
    """The conversation a tool-call sample comes from: its turns are resampled together.
    Rows written before tool_calls.jsonl had the field carry it in their id
    ("<record id>#<message index>")."""
    return str(row.get("conversation") or row["id"].rsplit("#", 1)[0])


def _records(rows: list[dict]) -> tuple[list[float], list[float]]:
    return [r["loss_sum"] for r in rows], [r["n_tokens"] for r in rows]


def _sample_values(rows: list[dict], metric: Metric, where: Path) -> list[float]:
    try:
        return [metric.sample(row) for row in rows]
    except (KeyError, TypeError, ValueError) as err:
        name = "tool_calls.jsonl" if metric.kind == "tools" else "predictions.jsonl"
        raise ValueError(f"{where / name}: a record lacks a usable {err}") from None


def _statistics(rows: list[dict], name: str) -> np.ndarray:
    return corpus_statistics(name, [r["prediction"] for r in rows], [r["reference"] for r in rows])


def _corpus_score(name: str) -> bootstrap.CorpusScore:
    return lambda totals: score_from_statistics(name, totals)


def interval(run: EvalRun, name: str, seed: int,
             resamples: int = bootstrap.RESAMPLES) -> Interval:
    """Bootstrap interval of one metric of one evaluation."""
    metric = METRICS[name]
    if metric.kind == "point":
        value = run.metrics.get(name)
        return Interval(float("nan") if value is None else value, float("nan"), float("nan"))
    if metric.kind == "records":
        return bootstrap.ratio_interval(*_records(run.records), resamples, seed,
                                          transform=metric.transform)
    if metric.kind == "tools":
        return bootstrap.cluster_mean_interval(
            _sample_values(run.tool_calls, metric, run.path),
            [conversation(row) for row in run.tool_calls], resamples, seed)
    if metric.kind == "samples":
        return bootstrap.mean_interval(_sample_values(run.samples, metric, run.path),
                                         resamples, seed)
    if not run.samples:
        return NO_INTERVAL
    return bootstrap.corpus_interval(_statistics(run.samples, name), _corpus_score(name),
                                       resamples, seed)


def paired_rows(first: list[dict], second: list[dict]) -> tuple[list[dict], list[dict]]:
    """The rows of both lists whose ids occur in both, in the first list's order."""
    by_id = {row["id"]: row for row in second}
    shared = [row for row in first if row["id"] in by_id]
    return shared, [by_id[row["id"]] for row in shared]


def paired_difference(base: EvalRun, other: EvalRun, name: str, seed: int,
                      resamples: int = bootstrap.RESAMPLES) -> tuple[Interval, int]:
    """Interval of other - base over the items both scored, and how many those are."""
    metric = METRICS[name]
    a, b = paired_rows(base.items(metric), other.items(metric))
    if not a:
        return NO_INTERVAL, 0
    if metric.kind == "point":
        values = [run.metrics.get(name) for run in (base, other)]
        gap = float("nan") if None in values else values[1] - values[0]
        return Interval(gap, float("nan"), float("nan")), len(a)
    if metric.kind == "records":
        diff = bootstrap.paired_ratio_difference(_records(a), _records(b), resamples, seed,
                                                   transform=metric.transform)
    elif metric.kind == "tools":
        diff = bootstrap.paired_cluster_mean_difference(
            _sample_values(a, metric, base.path), _sample_values(b, metric, other.path),
            [conversation(row) for row in a], resamples, seed)
    elif metric.kind == "samples":
        diff = bootstrap.paired_mean_difference(_sample_values(a, metric, base.path),
                                                  _sample_values(b, metric, other.path),
                                                  resamples, seed)
    else:
        diff = bootstrap.paired_corpus_difference(
            _statistics(a, name), _statistics(b, name), _corpus_score(name), resamples, seed)
    return diff, len(a)


def verdict(name: str, difference: Interval) -> str:
    """bootstrap.verdict, or "not tested" for a metric without interval."""
    metric = METRICS[name]
    return NOT_TESTED if metric.kind == "point" else bootstrap.verdict(
        difference, metric.higher_is_better)


def change_pct(name: str, base: float | None, other: float | None) -> float | None:
    """Relative change in percent, or None where it means nothing: a missing value or a
    base whose magnitude is below the metric's floor (e.g. BLEU 0.0001 -> 2 is not +2e6%)."""
    if base is None or other is None or np.isnan(base) or np.isnan(other):
        return None
    if abs(base) < METRICS[name].floor:
        return None
    return 100.0 * (other - base) / abs(base)

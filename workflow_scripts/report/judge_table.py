"""results/metrics/judge.tsv: the judge's verdicts per experiment, with paired intervals.

Each test prompt is one item (both orders of it are not independent, so they are averaged
into one value before resampling). Per experiment:

- `win_rate`: per item 1 when the fine-tuned answer won, 0.5 for a tie, 0 when the base's
  won, averaged over the orders that parsed; `finetuned` is its mean with an interval,
  `base` is 1 - that, and `difference` is win rate - 0.5 (a paired test of "neither wins").
- one row per criterion: each model's mean score out of 10 (over the orders that parsed)
  with an interval, and the paired difference fine-tuned - base.

`judgments` counts the judgments asked for, `unparseable` the replies that did not parse
(cut at the token limit included), `refused` those the judge refused (a content filter, an
empty reply): both shown, and left out of the figures. `position_agreement` is the share
of items whose two orders named the same winner (low: the judge follows positions more than
answers). An experiment without one parsed judgment gets a win-rate row with n = 0 and
"too few items".
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.common.io_utils import read_jsonl
from workflow_scripts.evaluation import bootstrap
from workflow_scripts.evaluation.judge import CRITERIA

JUDGE_COLUMNS = ["experiment", "base_model", "dataset", "judge_model", "criterion", "n",
                 "base", "base_low", "base_high", "finetuned", "finetuned_low",
                 "finetuned_high", "difference", "difference_low", "difference_high",
                 "verdict", "p_value", "judgments", "unparseable", "refused",
                 "position_agreement"]
WIN = {"finetuned": 1.0, "tie": 0.5, "base": 0.0}


def by_item(rows: list[dict]) -> dict[str, list[dict]]:
    items: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("status") == "ok":
            items.setdefault(row["id"], []).append(row)
    return items


def agreement(items: dict[str, list[dict]]) -> float | None:
    both = [rows for rows in items.values() if len(rows) == 2]
    return float(np.mean([rows[0]["winner"] == rows[1]["winner"] for rows in both])) if both else None


def criterion_row(items: dict[str, list[dict]], criterion: str, seed: int,
                  resamples: int) -> dict:
    base = [np.mean([r["scores"]["base"][criterion] for r in rows]) for rows in items.values()]
    tuned = [np.mean([r["scores"]["finetuned"][criterion] for r in rows])
             for rows in items.values()]
    a, b = (bootstrap.mean_interval(v, resamples, seed) for v in (base, tuned))
    diff = bootstrap.paired_mean_difference(base, tuned, resamples, seed)
    return {"criterion": criterion, "n": len(base), "base": a.estimate, "base_low": a.low,
            "base_high": a.high, "finetuned": b.estimate, "finetuned_low": b.low,
            "finetuned_high": b.high, **difference(diff, higher_is_better=True)}


def win_row(items: dict[str, list[dict]], seed: int, resamples: int) -> dict:
    wins = [np.mean([WIN[r["winner"]] for r in rows]) for rows in items.values()]
    rate = bootstrap.mean_interval(wins, resamples, seed)
    diff = bootstrap.mean_interval([w - 0.5 for w in wins], resamples, seed)
    return {"criterion": "win_rate", "n": len(wins), "base": 1 - rate.estimate,
            "base_low": 1 - rate.high, "base_high": 1 - rate.low, "finetuned": rate.estimate,
            "finetuned_low": rate.low, "finetuned_high": rate.high,
            **difference(diff, higher_is_better=True)}


def difference(diff: bootstrap.Interval, higher_is_better: bool) -> dict:
    return {"difference": diff.estimate, "difference_low": diff.low,
            "difference_high": diff.high, "p_value": diff.p_value,
            "verdict": bootstrap.verdict(diff, higher_is_better)}


def judge_rows(run: dict, results: Path, seed: int, resamples: int) -> list[dict]:
    """Rows of judge.tsv for every experiment with a judgments.jsonl."""
    out = []
    for name, config in run["experiments"].items():
        path = results / "eval" / name / "judgments.jsonl"
        if not path.is_file():
            continue
        rows = list(read_jsonl(path))
        items = by_item(rows)
        common = {"experiment": name, "base_model": config["base_model"],
                  "dataset": config["dataset"], "judge_model": run["judge"]["model"],
                  "judgments": len(rows),
                  "unparseable": sum(r.get("status") in ("unparseable", "truncated")
                                     for r in rows),
                  "refused": sum(r.get("status") == "refused" for r in rows),
                  "position_agreement": agreement(items)}
        if not items:
            out.append(common | {"criterion": "win_rate", "n": 0, "verdict": bootstrap.TOO_FEW})
            continue
        out.append(common | win_row(items, seed, resamples))
        out += [common | criterion_row(items, c, seed, resamples) for c in CRITERIA]
    return out


def judge_tables(run: dict, results: Path, seed: int, resamples: int) -> dict[str, pd.DataFrame]:
    """{"judge": table} when the config has a judge, else {} (no judge.tsv)."""
    if not run.get("judge"):
        return {}
    return {"judge": pd.DataFrame(judge_rows(run, results, seed, resamples),
                                  columns=JUDGE_COLUMNS)}

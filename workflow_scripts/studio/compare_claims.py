"""Which differences on the Compare page are claims: only those the report's own tables
back with a paired interval that excludes zero (and Holm keeps), never a bare difference.

- Against the first selected experiment: the test loss only, and only where ranking.tsv
  holds the pair (one of them ranked first in its dataset and base model): its paired
  verdict. Other differences to the first are shown uncoloured.
- Against each experiment's own base: every metric of comparison.tsv, with its interval
  and verdict.
- Losses of different base models are per token of different tokenizers: the page shows
  no difference between them.
"""
from __future__ import annotations

import math
from pathlib import Path

from workflow_scripts.studio.files import read_tsv_cached

LOSSES = frozenset({"final_loss", "eval_loss", "test_loss", "perplexity"})
TABLE_NAMES = {"test_loss": "loss"}  # the page's figure -> comparison.tsv's metric
CLAIMS = ("better", "worse")


def number(text: str | None) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def ranking_verdict(ranking: list[dict], first: str, other: str) -> str | None:
    """`other`'s test loss against `first`'s as ranking.tsv judges it: "better"/"worse"
    where one is ranked first and the other's paired verdict is "worse", else None."""
    rows = {r["experiment"]: r for r in ranking}
    a, b = rows.get(first), rows.get(other)
    if a is None or b is None or (a["dataset"], a["base_model"]) != (b["dataset"], b["base_model"]):
        return None
    if a["position"] == "1" and b.get("verdict") == "worse":
        return "worse"
    if b["position"] == "1" and a.get("verdict") == "worse":
        return "better"
    return None


def base_differences(comparison: list[dict], name: str) -> dict[str, dict]:
    """comparison.tsv's rows of one experiment: metric -> difference, interval, verdict."""
    out = {}
    for row in comparison:
        if row.get("experiment") == name:
            out[row["metric"]] = {"difference": number(row.get("difference")),
                                  "low": number(row.get("difference_low")),
                                  "high": number(row.get("difference_high")),
                                  "verdict": row.get("verdict") or None}
    return out


def add_claims(workdir: Path, metrics: list[dict], rows: list[dict]) -> list[dict]:
    """The metrics of metrics_side_by_side with `verdict` (against the first experiment),
    `vs_base` and `not_compared` added, and no difference across base models for losses."""
    tables = Path(workdir) / "results" / "metrics"
    ranking = read_tsv_cached(tables / "ranking.tsv")
    comparison = read_tsv_cached(tables / "comparison.tsv")
    first = rows[0]
    bases = {r["experiment"]: base_differences(comparison, r["experiment"]) for r in rows}
    for m in metrics:
        figure = m["metric"]
        m["verdict"], m["not_compared"] = {}, {}
        m["vs_base"] = {n: bases[n].get(TABLE_NAMES.get(figure, figure)) for n in bases}
        for row in rows[1:]:
            name = row["experiment"]
            if figure in LOSSES and row["base_model"] != first["base_model"]:
                m["diff"][name] = None
                m["not_compared"][name] = "another base model"
            elif figure == "test_loss":
                m["verdict"][name] = ranking_verdict(ranking, first["experiment"], name)
    return metrics

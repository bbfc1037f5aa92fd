"""The general-text (forgetting) and benchmark rows of some experiments, for the Experiment and
Compare pages: read from results/metrics/general_text.tsv and benchmarks.tsv, the tables the
report shows, so the studio states the same differences, intervals and verdicts."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

TABLES = ("general_text", "benchmarks")


def _records(path: Path, names: list[str]) -> list[dict]:
    if not path.is_file() or not path.stat().st_size:
        return []
    table = pd.read_csv(path, sep="\t")
    rows = table[table["experiment"].isin(names)].to_dict("records")
    # NaN is not JSON: a missing figure is null
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in rows]


def general_view(workdir: Path, names: list[str]) -> dict[str, list[dict]]:
    """{"general_text": rows, "benchmarks": rows} of these experiments (empty before collect_metrics)."""
    metrics = workdir / "results" / "metrics"
    return {table: _records(metrics / f"{table}.tsv", names) for table in TABLES}

"""The report's exports table (results/metrics/exports.tsv, written by the export stage when
the config has `export:`): each checked export, its size, agreement and verdict."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from workflow_scripts.report.formatting import Table, fmt, fmt_signed

COLUMNS = ["experiment", "target", "file", "size (MB)", "greedy tokens agreeing",
           "test-loss difference (llama.cpp - transformers)", "verdict"]


def exports_table(metrics_dir: Path) -> Table:
    path = metrics_dir / "exports.tsv"
    if not path.is_file():
        return Table(COLUMNS)
    frame = pd.read_csv(path, sep="\t", keep_default_na=False, na_values=[""])
    rows = [[r.experiment, r.target, r.file, fmt(r.size_bytes / 1e6, 3),
             "n/a" if pd.isna(r.agreement) else f"{r.agreement:.1%} of {int(r.tokens_compared)}",
             fmt_signed(r.loss_difference), r.verdict] for r in frame.itertuples()]
    return Table(COLUMNS, rows)

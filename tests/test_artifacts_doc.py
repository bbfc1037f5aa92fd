"""docs/artifacts.md names every column each table in results/metrics/ is written with, as a
real run (the smoke workflow) writes them."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

DOC = Path(__file__).resolve().parent.parent / "docs" / "artifacts.md"


def pattern(name: str, metrics: list[str]) -> re.Pattern:
    """`{metric}` is one of the section's plain names (the metrics), any other `{part}`
    any name part."""
    parts = re.split(r"(\{\w+\})", name)
    return re.compile("".join(
        "(?:" + "|".join(map(re.escape, metrics)) + ")" if part == "{metric}"
        else r"[\w.-]+" if part.startswith("{") else re.escape(part) for part in parts) + "$")


def documented_columns(text: str) -> dict[str, list[re.Pattern]]:
    """Per table file, the backticked names of its entry in "## Tables" as patterns, plus
    the names the section's introduction gives every table."""
    section = text.split("## Tables", 1)[1].split("\n## ", 1)[0]
    intro, _, entries = section.partition("\n- `")
    shared = re.findall(r"`([^`]+)`", intro)
    metrics = [n for n in shared if "{" not in n]
    tables = {}
    for entry in re.split(r"\n- `", "\n- `" + entries)[1:]:
        name, body = entry.split("`", 1)
        names = shared + re.findall(r"`([^`]+)`", body)
        tables[name] = [pattern(n, metrics) for n in names if not re.fullmatch(r"\{\w+\}", n)]
    return tables


def test_every_table_column_is_documented(smoke_run):
    tables = documented_columns(DOC.read_text(encoding="utf-8"))
    written = sorted((smoke_run.workdir / "results" / "metrics").glob("*.tsv"))
    assert {"experiments.tsv", "comparison.tsv", "ranking.tsv", "data_stats.tsv"} <= {
        p.name for p in written}
    missing = {}
    for path in written:
        assert path.name in tables, f"{path.name} has no entry in docs/artifacts.md"
        columns = pd.read_csv(path, sep="\t", nrows=0).columns
        undocumented = [c for c in columns if not any(p.match(c) for p in tables[path.name])]
        if undocumented:
            missing[path.name] = undocumented
    assert missing == {}


def test_a_missing_column_would_be_found():
    text = DOC.read_text(encoding="utf-8")
    tables = documented_columns(text)
    assert any(p.match("lengths_tokens_tiny_p90") for p in tables["data_stats.tsv"])
    assert any(p.match("position") for p in tables["ranking.tsv"])
    assert not any(p.match("finetuned") for p in tables["quantization.tsv"])
    assert not any(p.match("no_such_column") for p in tables["comparison.tsv"])

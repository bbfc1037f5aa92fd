"""docs/artifacts.md names every column each table in results/metrics/ is written with, as a
real run (the smoke workflow) writes them."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from workflow_scripts.data.cleaning import REASONS

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "artifacts.md"


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


# Every path the rules declare as output, and every file a job writes under results/, has an
# entry: a section's heading names a directory (`results/data/{dataset}/`) and its body the
# files in it (`train.jsonl`), or a body names a whole path (`results/metrics/config.json`).
# A name ending in `/` in a body covers what lies under it (`tensorboard/`); `{part}` is one
# name part (`{wildcards}`: a job's wildcard values, `a/b/c`), `*` any characters of one name.
FILE_NAME = re.compile(r"[\w{}*.-]+(?:/[\w{}*.-]+)*/?")
RULES_SCRIPT = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import (ConfigSettings, OutputSettings, Quietness,
                                      ResourceSettings, StorageSettings)
with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
    workflow = api.workflow(
        resource_settings=ResourceSettings(), storage_settings=StorageSettings(),
        config_settings=ConfigSettings(configfiles=[Path(sys.argv[2])]),
        snakefile=Path(sys.argv[1]), workdir=Path.cwd())._workflow
    print(json.dumps({rule.name: [str(p) for p in [*rule.output, rule.benchmark] if p]
                      for rule in workflow.rules}))
"""


def path_regex(documented: str) -> str:
    parts = re.split(r"(\{\w+\}|\*)", documented.rstrip("/"))
    regex = "".join(".+" if p == "{wildcards}" else "[^/]+" if p.startswith("{")
                    else "[^/]*" if p == "*" else re.escape(p) for p in parts)
    return regex + ("(?:/.*)?" if documented.endswith("/") else "")


def documented_paths(text: str) -> list[re.Pattern]:
    """Every path the page documents, as a pattern matching the paths it stands for."""
    found = []
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # examples: their backticks pair wrongly
    for section in re.split(r"\n(?=## )", text):
        heading, _, body = section.partition("\n")
        dirs = [d for d in re.findall(r"`([^`]+/)`", heading) if d.startswith("results/")]
        names = [n for n in re.findall(r"`([^`]+)`", body)
                 if FILE_NAME.fullmatch(n) and ("." in n or n.endswith("/"))]
        found += [path_regex(d.rstrip("/")) for d in dirs]
        found += [path_regex(n) for n in names if n.startswith(("results/", "logs/"))]
        found += [path_regex(d + n) for d in dirs for n in names]
    return [re.compile(regex) for regex in found]


def undocumented(paths, patterns: list[re.Pattern]) -> list[str]:
    return sorted(p for p in paths if not any(pattern.fullmatch(p) for pattern in patterns))


def declared_outputs(workdir: Path) -> dict[str, list[str]]:
    """Per rule, its output and benchmark paths as Snakemake parses them (wildcards as
    `{name}`), with the smoke config: every rule is defined whatever the config enables."""
    for part in ("data", "tests"):
        (workdir / part).symlink_to(ROOT / part)
    proc = subprocess.run([sys.executable, "-c", RULES_SCRIPT, str(ROOT / "Snakefile"),
                           str(ROOT / "tests/configs/smoke.yaml")],
                          cwd=workdir, capture_output=True, text=True, check=True)
    rules = json.loads(proc.stdout.splitlines()[-1])
    return {rule: [without_constraints(p) for p in paths] for rule, paths in rules.items()}


def without_constraints(path: str) -> str:
    """`{key,[0-9a-f]{16}}` -> `{key}`."""
    out, depth, constraint = [], 0, False
    for char in path:
        depth += (char == "{") - (char == "}")
        constraint = constraint and depth > 0 or (char == "," and depth == 1)
        if not constraint or (char == "}" and depth == 0):
            out.append(char)
    return "".join(out)


def test_every_declared_output_is_documented(tmp_path):
    outputs = declared_outputs(tmp_path)
    assert {"judge", "track_experiment", "fetch_base_model", "merge_adapter"} <= set(outputs)
    assert "results/tokenized/{dataset}/{key}/manifest.json" in outputs["tokenize_dataset"]
    patterns = documented_paths(DOC.read_text(encoding="utf-8"))
    missing = {rule: undocumented(paths, patterns) for rule, paths in outputs.items()}
    assert {rule: paths for rule, paths in missing.items() if paths} == {}


def test_every_file_the_smoke_run_writes_is_documented(smoke_run):
    results = smoke_run.workdir / "results"
    written = [str(p.relative_to(smoke_run.workdir)) for p in results.rglob("*") if p.is_file()]
    assert len(written) > 100
    assert undocumented(written, documented_paths(DOC.read_text(encoding="utf-8"))) == []


def test_an_undocumented_path_would_be_found():
    patterns = documented_paths(DOC.read_text(encoding="utf-8"))
    assert not undocumented(["results/data/lccc/train.jsonl", "results/metrics/config.json",
                             "results/report/plots/loss.png"], patterns)
    assert undocumented(["results/data/lccc/extra.json", "results/unknown/x.json",
                         "results/data/lccc"], patterns) == [
        "results/data/lccc/extra.json", "results/unknown/x.json"]


def test_data_stats_has_a_column_per_reject_code_and_tool_counts_for_every_dataset(smoke_run):
    table = pd.read_csv(smoke_run.workdir / "results/metrics/data_stats.tsv", sep="\t")
    assert [f"rejected_{reason}" for reason in REASONS
            if f"rejected_{reason}" not in table.columns] == []
    plain = table.set_index("dataset").loc[["alpaca_zh", "lccc"]]
    assert (plain[["tool_calls_calls", "tool_calls_records_with_tools"]] == 0).all().all()

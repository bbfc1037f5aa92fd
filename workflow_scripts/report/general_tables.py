"""What fine-tuning cost and what it changed on benchmarks: results/metrics/general_text.tsv
and benchmarks.tsv, and their tables in the report.

Both compare every adapter with the base evaluation it is compared with elsewhere (same
settings and quantization; the evaluate job scored both on the same general text and the
same questions). General text: the token-weighted loss per part, the paired difference
resampling records (evaluation/bootstrap.py's `paired_ratio_difference`); lower is better.
Benchmarks: accuracy per benchmark, the paired difference resampling questions; higher is
better. Each difference carries its bootstrap p-value and joins the run's one family of
comparisons (report/family.py): a difference is claimed only where its 95% interval
excludes zero and Holm's correction keeps it.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from workflow_scripts.common.io_utils import read_jsonl
from workflow_scripts.evaluation import bootstrap
from workflow_scripts.report.formatting import Table, diff, fmt, fmt_ci

GENERAL_COLUMNS = ["experiment", "base_model", "text", "n_records", "n_tokens", "loss",
                   "loss_low", "loss_high", "base_loss", "difference", "difference_low",
                   "difference_high", "verdict", "p_value", "p_holm"]
BENCHMARK_COLUMNS = ["experiment", "benchmark", "n", "accuracy", "accuracy_low",
                     "accuracy_high", "base_accuracy", "difference", "difference_low",
                     "difference_high", "verdict", "p_value", "p_holm"]


def read_rows(directory: Path, name: str) -> list[dict] | None:
    path = directory / name
    return list(read_jsonl(path)) if path.is_file() else None


def paired(base: list[dict], tuned: list[dict], key: tuple[str, str]) -> dict[str, list]:
    """Rows of both sides keyed by `key`, grouped by its first field, in the base's order,
    keeping only items both sides scored."""
    tuned_by = {(r[key[0]], r[key[1]]): r for r in tuned}
    groups: dict[str, list] = {}
    for row in base:
        other = tuned_by.get((row[key[0]], row[key[1]]))
        if other is not None:
            groups.setdefault(row[key[0]], []).append((row, other))
    return groups


def general_rows(name: str, config: dict, base: list[dict], tuned: list[dict], seed: int,
                 resamples: int) -> list[dict]:
    rows = []
    for text, pairs in paired(base, tuned, ("text", "id")).items():
        b = ([p[0]["loss_sum"] for p in pairs], [p[0]["n_tokens"] for p in pairs])
        t = ([p[1]["loss_sum"] for p in pairs], [p[1]["n_tokens"] for p in pairs])
        loss = bootstrap.ratio_interval(*t, resamples=resamples, seed=seed)
        gap = bootstrap.paired_ratio_difference(b, t, resamples=resamples, seed=seed)
        rows.append({"experiment": name, "base_model": config["base_model"], "text": text,
                     "n_records": len(pairs), "n_tokens": sum(t[1]), "loss": loss.estimate,
                     "loss_low": loss.low, "loss_high": loss.high,
                     "base_loss": sum(b[0]) / sum(b[1]), "difference": gap.estimate,
                     "difference_low": gap.low, "difference_high": gap.high,
                     "verdict": bootstrap.verdict(gap, higher_is_better=False),
                     "p_value": gap.p_value})
    return rows


def benchmark_rows(name: str, base: list[dict], tuned: list[dict], seed: int,
                   resamples: int) -> list[dict]:
    rows = []
    for benchmark, pairs in paired(base, tuned, ("benchmark", "id")).items():
        b, t = [p[0]["acc"] for p in pairs], [p[1]["acc"] for p in pairs]
        acc = bootstrap.mean_interval(t, resamples, seed)
        gap = bootstrap.paired_mean_difference(b, t, resamples, seed)
        rows.append({"experiment": name, "benchmark": benchmark, "n": len(pairs),
                     "accuracy": acc.estimate, "accuracy_low": acc.low,
                     "accuracy_high": acc.high, "base_accuracy": sum(b) / len(b),
                     "difference": gap.estimate, "difference_low": gap.low,
                     "difference_high": gap.high,
                     "verdict": bootstrap.verdict(gap, higher_is_better=True),
                     "p_value": gap.p_value})
    return rows


def general_tables(configs: dict, results: Path, seed: int,
                   resamples: int) -> dict[str, pd.DataFrame]:
    """{"general_text": table, "benchmarks": table} (no rows when nothing was scored), their
    verdicts still to be put through family.control with the run's other comparisons."""
    texts, benches = [], []
    for name, config in configs.items():
        tuned_dir = results / "eval" / name
        base_dir = results.parent / config["base_eval"] if config.get("base_eval") else None
        for file, target in (("general_text.jsonl", texts), ("benchmarks.jsonl", benches)):
            tuned = read_rows(tuned_dir, file)
            base = read_rows(base_dir, file) if base_dir else None
            if not tuned or not base:
                continue
            if target is texts:
                target += general_rows(name, config, base, tuned, seed, resamples)
            else:
                target += benchmark_rows(name, base, tuned, seed, resamples)
    return {"general_text": pd.DataFrame(texts, columns=GENERAL_COLUMNS),
            "benchmarks": pd.DataFrame(benches, columns=BENCHMARK_COLUMNS)}


# The report --------------------------------------------------------------------------------

def read_table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t") if path.is_file() and path.stat().st_size else pd.DataFrame()


def general_text_table(table: pd.DataFrame) -> Table:
    out = Table(["experiment", "general text", "records", "base loss", "fine-tuned loss",
                 "difference", "verdict"])
    for row in table.to_dict("records"):
        out.rows.append([row["experiment"], row["text"], fmt(row["n_records"]),
                         fmt(row["base_loss"]), fmt_ci(row["loss"], row["loss_low"],
                                                       row["loss_high"]),
                         diff(row), row["verdict"]])
    return out


def benchmark_table(table: pd.DataFrame) -> Table:
    out = Table(["experiment", "benchmark", "questions", "base accuracy", "accuracy",
                 "difference", "verdict"])
    for row in table.to_dict("records"):
        out.rows.append([row["experiment"], row["benchmark"], fmt(row["n"]),
                         fmt(row["base_accuracy"]),
                         fmt_ci(row["accuracy"], row["accuracy_low"], row["accuracy_high"]),
                         diff(row), row["verdict"]])
    return out


def report_tables(metrics_dir: Path) -> dict[str, Table]:
    """The report's `general_text` and `benchmarks` tables (no rows when nothing was scored)."""
    return {"general_text": general_text_table(read_table(metrics_dir / "general_text.tsv")),
            "benchmarks": benchmark_table(read_table(metrics_dir / "benchmarks.tsv"))}

"""The report's tables, built from results/metrics/*.tsv and the run's data files."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from workflow_scripts.common.io_utils import read_json, read_jsonl
from workflow_scripts.data.split import SPLITS
from workflow_scripts.evaluation.bootstrap import TOO_FEW, UNCLEAR, WORSE
from workflow_scripts.report.formatting import NA, Table, ci, diff, fmt, fmt_pct, fmt_share, missing
from workflow_scripts.report.memory_columns import with_memory
from workflow_scripts.report.studies import HYPERPARAMETERS, METHOD, RANK

METRIC_LABELS = {"loss": "test loss", "perplexity": "perplexity", "bleu4": "BLEU-4",
                 "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L",
                 "sacrebleu": "sacreBLEU", "chrf": "chrF", "distinct1": "distinct-1",
                 "distinct2": "distinct-2", "nonempty_share": "non-empty answers",
                 "eot_share": "ended with end-of-turn",
                 "mean_answer_chars": "answer length (chars)"}


# Results --------------------------------------------------------------------------------

def ranking_verdict(verdict) -> str:
    """A runner-up's verdict against the first, in the ranking's words."""
    return "higher" if verdict == WORSE else verdict if verdict == TOO_FEW else UNCLEAR


def ranking_tables(ranking: pd.DataFrame) -> list[Table]:
    tables = []
    for (dataset, model), group in ranking.groupby(["dataset", "base_model"], sort=True):
        table = Table(["#", "experiment", "test loss [95% CI]", "vs first (paired)", "verdict"],
                      title=f"{dataset} / {model}")
        for row in group.sort_values("position").to_dict("records"):
            first = row["position"] == 1
            table.rows.append([fmt(row["position"]), row["experiment"], ci(row, "test_loss"),
                               "" if first else diff(row),
                               "lowest" if first else ranking_verdict(row["verdict"])])
        tables.append(table)
    return tables


def gains_table(comparison: pd.DataFrame, experiments: pd.DataFrame) -> Table:
    """One row per experiment: paired differences to its base for the headline metrics."""
    metrics = ("loss", "bleu4", "rougeL", "chrf")
    table = Table(["experiment", *(f"Δ {METRIC_LABELS[m]}" for m in metrics),
                   "end-of-turn: base → tuned"])
    for name in experiments["experiment"]:
        rows = comparison[comparison["experiment"] == name].set_index("metric")
        cells = [name]
        for metric in metrics:
            r = rows.loc[metric] if metric in rows.index else {}
            cell = diff(r)
            verdict = r.get("verdict")
            cells.append(f"{cell} {verdict}" if isinstance(verdict, str) else cell)
        eot = rows.loc["eot_share"] if "eot_share" in rows.index else {}
        cells.append(f"{fmt_share(eot.get('base'))} → {fmt_share(eot.get('finetuned'))}")
        table.rows.append(cells)
    return table


TOOL_METRICS = {"tool_valid_share": "valid calls", "tool_name_accuracy": "function name",
                "tool_args_exact": "arguments exact"}


def tool_table(comparison: pd.DataFrame) -> Table:
    """Experiments on tool-calling data: each call metric, base → fine-tuned, with the
    paired difference and its verdict (empty when no dataset has tool calls)."""
    table = Table(["experiment", *(f"{label}: base → tuned, Δ [95% CI]"
                                   for label in TOOL_METRICS.values())])
    tools = comparison[comparison["metric"].isin(list(TOOL_METRICS))]
    for name, rows in tools.groupby("experiment", sort=True):
        rows = rows.set_index("metric")
        cells = [name]
        for metric in TOOL_METRICS:
            if metric not in rows.index:
                cells.append(NA)
                continue
            r = rows.loc[metric]
            verdict = r["verdict"] if isinstance(r["verdict"], str) else ""
            cells.append(f"{fmt_share(r['base'])} → {fmt_share(r['finetuned'])}, "
                         f"{diff(r)} {verdict}".rstrip())
        table.rows.append(cells)
    return table


def metric_tables(comparison: pd.DataFrame, experiments: pd.DataFrame) -> dict[str, Table]:
    """Every metric of every experiment against its base, with intervals (the appendix)."""
    by_name = experiments.set_index("experiment")
    tables = {}
    for name in experiments["experiment"]:
        exp = by_name.loc[name].to_dict()
        table = Table(["metric", "base", "fine-tuned [95% CI]", "difference [95% CI]", "verdict",
                       "change"], title=f"{name} (base: {exp['base_eval']})")
        for row in comparison[comparison["experiment"] == name].to_dict("records"):
            column = "test_loss" if row["metric"] == "loss" else row["metric"]
            table.rows.append([row["metric"], fmt(row["base"]), ci(exp, column), diff(row),
                               row["verdict"] if isinstance(row["verdict"], str) else NA,
                               fmt_pct(row["change_pct"])])
        tables[name] = table
    return tables


def base_table(base: pd.DataFrame) -> Table:
    table = Table(["base evaluation", "quantization", "test loss", "BLEU-4", "ROUGE-L",
                   "end-of-turn", "compared with"])
    for row in base.to_dict("records"):
        table.rows.append([row["base_eval"], fmt(row.get("quantization")) if not missing(
            row.get("quantization")) else "none", ci(row, "test_loss"), ci(row, "bleu4"),
            ci(row, "rougeL"), fmt_share(row.get("eot_share")), row["used_by"]])
    return table


# Studies --------------------------------------------------------------------------------

STUDY_COLUMNS = {
    RANK: {"r": "rank", "trainable_params": "trainable params", "wall_time_s": "time (s)",
           "peak_memory_mb": "host RSS (MB)", "final_loss": "final train loss",
           "test_loss": "test loss", "bleu4": "BLEU-4", "rougeL": "ROUGE-L"},
    HYPERPARAMETERS: {"learning_rate": "learning rate", "batch": "batch x accum",
                      "epochs": "epochs", "warmup_ratio": "warmup", "wall_time_s": "time (s)",
                      "eval_loss": "eval loss", "perplexity": "test perplexity"},
    METHOD: {"method": "method", "r": "rank", "peak_memory_mb": "host RSS (MB)",
             "wall_time_s": "time (s)", "final_loss": "final train loss",
             "test_loss": "test loss", "bleu4": "BLEU-4", "rougeL": "ROUGE-L"},
}
WITH_INTERVAL = {"test_loss", "bleu4", "rougeL", "perplexity"}


def study_cell(row: dict, column: str) -> str:
    return ci(row, column) if column in WITH_INTERVAL else fmt(row.get(column))


def study_tables(studies: pd.DataFrame, experiments: pd.DataFrame, comparison: pd.DataFrame,
                 kind: str) -> list[Table]:
    """One table per sweep of this kind, with each experiment's base end-of-turn share."""
    if studies.empty:
        return []
    frame = experiments.assign(batch=[f"{fmt(b)} x {fmt(a)}" for b, a in
                                      zip(experiments["batch_size"], experiments["grad_accum"])])
    by_name = frame.set_index("experiment", drop=False)
    eot = comparison[comparison["metric"] == "eot_share"].set_index("experiment")
    columns = with_memory(STUDY_COLUMNS[kind], frame)  # GPU memory first where measured
    tables = []
    for study, members in studies[studies["kind"] == kind].groupby("study", sort=False):
        table = Table(["experiment", *columns.values(), "end-of-turn (base)"],
                      title=f"{study} (varies {members['varies'].iloc[0]})")
        for name in members["experiment"]:
            row = by_name.loc[name].to_dict()
            base_eot = eot.loc[name, "base"] if name in eot.index else None
            table.rows.append([name, *(study_cell(row, c) for c in columns),
                               f"{fmt_share(row.get('eot_share'))} ({fmt_share(base_eot)})"])
        tables.append(table)
    return tables


def quantization_table(quantization: pd.DataFrame) -> Table:
    table = Table(["experiment", "metric", "base 16/32-bit", "base 4-bit",
                   "difference [95% CI]", "verdict"])
    shown = quantization[quantization["metric"].isin(["loss", "bleu4", "rougeL"])]
    for row in shown.to_dict("records"):
        table.rows.append([row["experiment"], row["metric"], fmt(row["unquantized"]),
                           fmt(row["quantized"]), diff(row),
                           row["verdict"] if isinstance(row["verdict"], str) else NA])
    return table


# Training -------------------------------------------------------------------------------

def parameter_table(experiments: pd.DataFrame) -> Table:
    later = with_memory({"steps": "steps", "wall_time_s": "time (s)", "tokens_per_s": "tokens/s",
                         "peak_memory_mb": "", "final_loss": "final loss", "eval_loss": "eval loss"},
                        experiments)
    table = Table(["experiment", "total params", "trainable params", "trainable %", *later.values()])
    for row in experiments.to_dict("records"):
        share = row.get("trainable_share")
        table.rows.append([row["experiment"], *(fmt(row.get(c)) for c in (
            "total_params", "trainable_params")), fmt(None if missing(share) else 100 * share),
            *(fmt(row.get(c)) for c in later)])
    return table


# Data -----------------------------------------------------------------------------------

def data_tables(datasets: list[str], results: Path) -> list[Table]:
    """Per dataset: counts, each reject reason that occurred, splits, length percentiles and
    the warnings of prepare_dataset (a split that is empty or has one record, many rejects)."""
    tables = []
    for name in datasets:
        path = results / "data" / name / "stats.json"
        if not path.is_file():
            continue
        stats = read_json(path)
        table = Table(["figure", "value"], title=f"{name} ({stats.get('format', NA)})")
        table.rows += [["raw records", fmt(stats.get("raw"))], ["kept", fmt(stats.get("kept"))]]
        rejected = sorted(stats.get("rejected", {}).items(), key=lambda item: -item[1])
        table.rows += [[f"rejected: {reason.replace('_', ' ')}", fmt(n)]
                       for reason, n in rejected if n]
        splits = stats.get("splits", {})
        table.rows += [[f"{split} split", fmt(splits[split])]
                       for split in SPLITS if split in splits]
        table.rows += [["warning", warning] for warning in stats.get("warnings", [])]
        tables.append(table)
    return tables


def length_table(datasets: list[str], results: Path, stats_table: pd.DataFrame) -> Table:
    """Length percentiles in characters (prompt, reply) and tokens (per base model)."""
    table = Table(["dataset", "length of", "mean", "p50", "p90", "p99", "max"])
    stats = stats_table.set_index("dataset") if not stats_table.empty else stats_table
    for name in datasets:
        if name not in stats.index:
            continue
        row = stats.loc[name]
        prefixes = sorted({c.rsplit("_", 1)[0] for c in stats.columns if c.startswith("lengths_")})
        for prefix in prefixes:
            if missing(row.get(f"{prefix}_mean")):
                continue
            what = prefix.removeprefix("lengths_").replace("_chars", " (chars)")
            if what.startswith("tokens_"):
                what = what.replace("tokens_", "record tokens: ")
            table.rows.append([name, what, *(fmt(row.get(f"{prefix}_{s}"), 3)
                                             for s in ("mean", "p50", "p90", "p99", "max"))])
    return table


def rejected_examples(datasets: list[str], results: Path, limit: int = 300) -> Table:
    """The first rejected record of each reason, per dataset (reading rejects.jsonl only
    until every reason stats.json counts has been seen)."""
    table = Table(["dataset", "reason", "detail", "record"])
    for name in datasets:
        path = results / "data" / name / "rejects.jsonl"
        stats = results / "data" / name / "stats.json"
        if not path.is_file():
            continue
        counted = read_json(stats).get("rejected", {}) if stats.is_file() else {}
        wanted = {reason for reason, n in counted.items() if n} or None
        seen = set()
        for row in read_jsonl(path):
            if row["reason"] in seen:
                continue
            seen.add(row["reason"])
            record = json.dumps(row.get("record"), ensure_ascii=False)
            record = record if len(record) <= limit else record[:limit] + "…"
            table.rows.append([name, row["reason"].replace("_", " "),
                               str(row.get("detail", "")), record])
            if wanted is not None and wanted <= seen:
                break
    return table


# Samples --------------------------------------------------------------------------------

EMPTY_ANSWER = "(empty answer)"


def answer(rows: dict[str, dict], sample_id: str) -> str:
    if sample_id not in rows:
        return NA
    return rows[sample_id]["prediction"] or EMPTY_ANSWER


def read_predictions(path: Path) -> dict[str, dict]:
    return {row["id"]: row for row in read_jsonl(path)} if path.is_file() else {}


def sample_groups(ranking: pd.DataFrame, configs: dict, workdir: Path, results: Path,
                  count: int, per_group: int = 4) -> list[dict]:
    """Per (dataset, base model): the first `count` test prompts, each with the reference,
    the base answer and the answers of the best `per_group` experiments by test loss."""
    groups = []
    for (dataset, model), group in ranking.groupby(["dataset", "base_model"], sort=True):
        shown = list(group.sort_values("position")["experiment"][:per_group])
        first = configs[shown[0]]  # the unquantized base where the first is a QLoRA run
        base_dir = first.get("base_eval_unquantized") or first["base_eval"]
        base = read_predictions(workdir / base_dir / "predictions.jsonl")
        tuned = {n: read_predictions(results / "eval" / n / "predictions.jsonl") for n in shown}
        prompts = []
        for sample_id, row in list(tuned[shown[0]].items())[:count]:
            answers = [("reference", row["reference"])]
            answers.append(("base", answer(base, sample_id)))
            answers += [(n, answer(tuned[n], sample_id)) for n in shown]
            prompts.append({"id": sample_id, "prompt": row["prompt"], "answers": answers})
        groups.append({"title": f"{dataset} / {model}", "prompts": prompts})
    return groups


def call_text(row: dict | None) -> str:
    """A tool-call sample's generated turn as the model wrote it."""
    if row is None:
        return NA
    return row.get("prediction") or EMPTY_ANSWER


def tool_sample_groups(configs: dict, workdir: Path, results: Path, count: int) -> list[dict]:
    """Per tool-calling experiment: the first `count` call turns with the reference call,
    the base model's and the fine-tuned model's generated turns."""
    groups = []
    for name, config in sorted(configs.items()):
        tuned = list(read_predictions(results / "eval" / name / "tool_calls.jsonl").values())
        if not tuned:
            continue
        base = read_predictions(workdir / config["base_eval"] / "tool_calls.jsonl")
        prompts = []
        for row in tuned[:count]:
            reference = json.dumps(row["reference"], ensure_ascii=False)
            answers = [("reference", reference), ("base", call_text(base.get(row["id"]))),
                       (name, call_text(row))]
            prompts.append({"id": row["id"], "prompt": row["prompt"], "answers": answers})
        groups.append({"title": f"{name}: tool calls", "prompts": prompts})
    return groups

"""Render the training report (Markdown and self-contained HTML) from the run's files.

    python -m workflow_scripts.render_report --metrics-dir results/metrics --results results \\
        --templates reports/templates --config run.json --out-dir results/report

Every number comes from results/metrics/*.tsv, run_info.json and predictions.jsonl; the
plots are drawn into OUT_DIR/plots first. Whatever is missing shows as "n/a".
"""
from __future__ import annotations

import argparse
import base64
import math
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

from workflow_scripts.collect_metrics import (HYPERPARAMETER_KEYS, RANK_KEYS,
                                              groups_differing_only_in)
from workflow_scripts.io_utils import read_json, read_jsonl
from workflow_scripts.plots import draw_all

NA = "n/a"
LOG_ROWS = 10
LOWER_IS_BETTER = {"final_loss", "eval_loss", "test_loss", "perplexity"}
BEST_OF = ("bleu4", "rouge1", "rouge2", "rougeL", "sacrebleu", "chrf", "distinct2",
           "final_loss", "eval_loss", "test_loss", "perplexity")
PLOT_ORDER = ("training_loss", "eval_loss", "base_vs_finetuned", "rank_metrics", "rank_cost")


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)


def fmt(value, digits: int = 4) -> str:
    """A cell: "n/a" for missing, whole numbers without decimals, else `digits` significant."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return str(value)
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.1f}" if abs(value) >= 1000 else f"{value:.{digits}g}"


def fmt_pct(value) -> str:
    return NA if value is None or pd.isna(value) else f"{value:+.1f}%"


def frame_table(frame: pd.DataFrame, columns: dict[str, str]) -> Table:
    """Table of `frame` columns (keys) under headers (values); absent columns give n/a."""
    rows = [[fmt(row.get(col)) for col in columns] for row in frame.to_dict("records")]
    return Table(list(columns.values()), rows)


def read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t") if path.is_file() else pd.DataFrame()


# 1 Overview ---------------------------------------------------------------------------------

def overview(experiments: pd.DataFrame) -> Table:
    return frame_table(experiments, {
        "experiment": "experiment", "base_model": "model", "dataset": "dataset",
        "method": "method", "r": "r", "alpha": "alpha", "learning_rate": "learning rate",
        "steps": "steps", "status": "status"})


# 2 Environment ------------------------------------------------------------------------------

def run_infos(names: list[str], results: Path) -> dict[str, dict]:
    paths = {name: results / "adapters" / name / "run_info.json" for name in names}
    return {name: read_json(path) for name, path in paths.items() if path.is_file()}


def environment(infos: dict[str, dict]) -> Table:
    """One row per field; a field whose value differs between experiments lists each."""
    flat = {}
    for name, info in infos.items():
        slim = {k: v for k, v in info.items() if k not in ("config", "data_files")}
        flat[name] = pd.json_normalize(slim, sep=".").iloc[0].to_dict()
    fields = list(dict.fromkeys(k for values in flat.values() for k in values))
    table = Table(["field", "value"])
    for key in fields:
        values = {name: fmt(values.get(key)) for name, values in flat.items()}
        shown = (next(iter(values.values())) if len(set(values.values())) == 1
                 else "; ".join(f"{name}: {v}" for name, v in values.items()))
        table.rows.append([key, shown])
    return table


def data_files(infos: dict[str, dict]) -> Table:
    users: dict[tuple[str, str], list[str]] = {}
    for name, info in infos.items():
        for path, digest in info.get("data_files", {}).items():
            users.setdefault((path, digest), []).append(name)
    rows = [[path, digest, ", ".join(names)] for (path, digest), names in sorted(users.items())]
    return Table(["file", "sha256", "used by"], rows)


# 3 Data -------------------------------------------------------------------------------------

def data_table(stats: pd.DataFrame) -> Table:
    """Datasets as columns, one row per figure of stats.json."""
    if stats.empty:
        return Table(["figure"])
    by_dataset = stats.set_index("dataset")
    rows = [[column.replace("_", " ")] + [fmt(v) for v in by_dataset[column]]
            for column in by_dataset.columns]
    return Table(["figure"] + list(by_dataset.index), rows)


# 4 Training ---------------------------------------------------------------------------------

def parameter_table(experiments: pd.DataFrame) -> Table:
    frame = experiments.assign(share_pct=experiments["trainable_share"] * 100)
    return frame_table(frame, {
        "experiment": "experiment", "total_params": "total params",
        "trainable_params": "trainable params", "share_pct": "trainable %",
        "steps": "steps", "wall_time_s": "time (s)", "tokens_per_s": "tokens/s",
        "peak_memory_mb": "peak memory (MB)", "final_loss": "final loss",
        "eval_loss": "eval loss"})


def training_losses(log: pd.DataFrame, name: str) -> pd.DataFrame:
    if log.empty or "loss" not in log:
        return pd.DataFrame(columns=["step", "loss"])
    return log[(log["experiment"] == name) & log["loss"].notna()]


def loss_table(rows: pd.DataFrame) -> Table:
    """About LOG_ROWS evenly spaced training rows, always with the first and the last."""
    picks = np.unique(np.linspace(0, len(rows) - 1, min(len(rows), LOG_ROWS)).round()) \
        if len(rows) else []
    return frame_table(rows.iloc[list(map(int, picks))], {
        "step": "step", "loss": "loss", "learning_rate": "learning rate",
        "memory_mb": "memory (MB)", "elapsed_s": "elapsed (s)"})


# 5 Comparison -------------------------------------------------------------------------------

def comparison_tables(comparison: pd.DataFrame, names: list[str]) -> dict[str, Table]:
    tables = {}
    for name in names:
        rows = comparison[comparison["experiment"] == name] if not comparison.empty else comparison
        table = Table(["metric", "base", "fine-tuned", "change"])
        for row in rows.to_dict("records"):
            table.rows.append([row["metric"], fmt(row["base"]), fmt(row["finetuned"]),
                               fmt_pct(row["change_pct"])])
        tables[name] = table
    return tables


def study_tables(experiments: pd.DataFrame, configs: dict, keys: frozenset[str],
                 columns: dict[str, str], sort_by: str) -> list[Table]:
    by_name = experiments.set_index("experiment", drop=False).rename_axis(None)
    groups = groups_differing_only_in(configs, keys)
    frames = [by_name.loc[[n for n in names if n in by_name.index]] for names in groups]
    return [frame_table(frame.sort_values(sort_by), columns) for frame in frames]


def rank_studies(experiments: pd.DataFrame, configs: dict) -> list[Table]:
    return study_tables(experiments, configs, RANK_KEYS, {
        "experiment": "experiment", "r": "rank", "trainable_params": "trainable params",
        "wall_time_s": "training time (s)", "final_loss": "final loss", "bleu4": "BLEU-4",
        "rougeL": "ROUGE-L", "peak_memory_mb": "peak memory (MB)"}, "r")


def hyperparameter_studies(experiments: pd.DataFrame, configs: dict) -> list[Table]:
    pairs = zip(experiments["batch_size"], experiments["grad_accum"])
    frame = experiments.assign(batch=[f"{fmt(b)} x {fmt(a)}" for b, a in pairs])
    return study_tables(frame, configs, HYPERPARAMETER_KEYS, {
        "experiment": "experiment", "learning_rate": "learning rate",
        "batch": "batch x accum", "epochs": "epochs", "warmup_ratio": "warmup",
        "wall_time_s": "time (s)", "eval_loss": "eval loss", "perplexity": "perplexity"},
        "learning_rate")


# 6 Samples ----------------------------------------------------------------------------------

def read_predictions(path: Path) -> list[dict]:
    return list(read_jsonl(path)) if path.is_file() else []


def samples(name: str, config: dict, results: Path, count: int) -> list[dict]:
    """The first `count` test prompts answered by both the base model and the experiment."""
    base_dir = results / "eval" / "base" / config["base_model"] / config["dataset"]
    base = {row["id"]: row for row in read_predictions(base_dir / "predictions.jsonl")}
    tuned = read_predictions(results / "eval" / name / "predictions.jsonl")
    shown = []
    for row in tuned:
        if row["id"] in base and len(shown) < count:
            shown.append({"id": row["id"], "prompt": row["prompt"],
                          "reference": row["reference"],
                          "base": base[row["id"]]["prediction"],
                          "finetuned": row["prediction"]})
    return shown


# 7 Findings ---------------------------------------------------------------------------------

def best_per_metric(experiments: pd.DataFrame) -> list[str]:
    """Per dataset (scores on different test sets do not compare) the best run per metric."""
    found = []
    for dataset, rows in experiments.groupby("dataset", sort=True):
        by_name = rows.set_index("experiment")
        for metric in BEST_OF:
            values = by_name.get(metric, pd.Series(dtype=float)).dropna().astype(float)
            if len(values) < 2:
                continue
            lower = metric in LOWER_IS_BETTER
            best = values.min() if lower else values.max()
            winners = sorted(values.index[values == best])
            if len(winners) == len(values):
                found.append(f"{dataset}, {metric}: all {len(values)} experiments tie at {fmt(best)}.")
                continue
            found.append(f"{dataset}, {metric}: {', '.join(winners)} "
                         f"{'has' if len(winners) == 1 else 'share'} the "
                         f"{'lowest' if lower else 'highest'} value ({fmt(best)}).")
    return found


def loss_trend(name: str, losses: pd.Series) -> str | None:
    """Compare the mean of the last 20% of logged losses with the 20% before them."""
    k = len(losses) // 5
    if k == 0:
        return None
    last, before = losses.iloc[-k:].mean(), losses.iloc[-2 * k:-k].mean()
    verdict = "was still falling" if last < before else "had flattened or risen"
    return (f"{name}: training loss {verdict} at the end (mean of the last 20% of logged "
            f"losses {fmt(last)} vs {fmt(before)} in the 20% before).")


def findings(experiments: pd.DataFrame, log: pd.DataFrame) -> list[str]:
    trends = [loss_trend(name, training_losses(log, name)["loss"].astype(float))
              for name in experiments.get("experiment", [])]
    return best_per_metric(experiments) + [t for t in trends if t]


# Rendering ----------------------------------------------------------------------------------

def read_caption(captions: Path, name: str) -> str:
    path = captions / f"{name}.rst"
    return " ".join(path.read_text(encoding="utf-8").split()) if path.is_file() else name


def plots(plot_dir: Path, captions: Path) -> dict[str, dict]:
    found = {}
    for name in PLOT_ORDER:
        path = plot_dir / f"{name}.png"
        if path.is_file():
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            found[name] = {"path": f"plots/{name}.png", "caption": read_caption(captions, name),
                           "data_uri": f"data:image/png;base64,{data}"}
    return found


def md_cell(text, limit: int = 300) -> str:
    """Text safe inside a Markdown table cell: one line, shortened, pipes and tags escaped."""
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def build_context(run: dict, metrics_dir: Path, results: Path, plot_info: dict) -> dict:
    experiments = read_tsv(metrics_dir / "experiments.tsv")
    log = read_tsv(metrics_dir / "training_log.tsv")
    configs = run["experiments"]
    names = list(configs)
    infos = run_infos(names, results)
    report = run.get("report", {})
    count = int(report.get("sample_count", 3))
    return {
        "title": report.get("title", "Training report"),
        "overview": overview(experiments),
        "environment": environment(infos),
        "data_files": data_files(infos),
        "data": data_table(read_tsv(metrics_dir / "data_stats.tsv")),
        "parameters": parameter_table(experiments),
        "loss_tables": {n: loss_table(training_losses(log, n)) for n in names},
        "comparisons": comparison_tables(read_tsv(metrics_dir / "comparison.tsv"), names),
        "rank_studies": rank_studies(experiments, configs),
        "hyperparameter_studies": hyperparameter_studies(experiments, configs),
        "samples": {n: samples(n, c, results, count) for n, c in configs.items()},
        "findings": findings(experiments, log),
        "plots": plot_info,
    }


def environment_for(templates: Path, html: bool) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates), autoescape=html,
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["md"] = md_cell
    return env


def render(run: dict, metrics_dir: Path, results: Path, templates: Path, out_dir: Path,
           captions: Path) -> tuple[Path, Path]:
    draw_all(metrics_dir, out_dir / "plots")
    context = build_context(run, metrics_dir, results, plots(out_dir / "plots", captions))
    outputs = []
    for template, html in (("report.md.j2", False), ("report.html.j2", True)):
        text = environment_for(templates, html).get_template(template).render(**context)
        path = out_dir / ("training_report.html" if html else "training_report.md")
        path.write_text(text, encoding="utf-8")
        outputs.append(path)
    return outputs[0], outputs[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics-dir", default=Path("results/metrics"), type=Path)
    parser.add_argument("--results", default=Path("results"), type=Path)
    parser.add_argument("--templates", default=Path("reports/templates"), type=Path)
    parser.add_argument("--captions", type=Path, help="default: TEMPLATES/../captions")
    parser.add_argument("--config", required=True, type=Path,
                        help="JSON with experiments, datasets, base_models and report")
    parser.add_argument("--out-dir", default=Path("results/report"), type=Path)
    args = parser.parse_args(argv)
    captions = args.captions or args.templates.parent / "captions"
    render(read_json(args.config), args.metrics_dir, args.results, args.templates,
           args.out_dir, captions)


if __name__ == "__main__":
    main()

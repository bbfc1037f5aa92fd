"""Gather every experiment's training and evaluation files into the tables of results/metrics/.

    python -m workflow_scripts.report.collect_metrics --config results/metrics/config.json \\
        --results results --out-dir results/metrics [--resamples 1000]

`--config` is the config snapshot: `experiments` (each with `base_eval`, and for QLoRA
`base_eval_unquantized`, paths of base-model evaluation directories), `sweeps`, `datasets`,
`seed`. Every evaluation figure gets a 95% bootstrap interval; every comparison is a paired
bootstrap over the items both sides scored (docs/metrics.md). A file that a failed or
pending job never wrote leaves empty cells, not an error.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from workflow_scripts.common.cli import parser as cli_parser
from workflow_scripts.common.io_utils import read_json, read_jsonl, write_json
from workflow_scripts.evaluation import bootstrap
from workflow_scripts.evaluation.metric_intervals import (EvalRun, change_pct, interval,
                                                          paired_difference, verdict)
from workflow_scripts.report import family
from workflow_scripts.report.judge_table import judge_tables
from workflow_scripts.report.general_tables import general_tables
from workflow_scripts.report.preference_table import preference_tables
from workflow_scripts.report.search_grid import search_grid_pairs
from workflow_scripts.report.studies import study_rows

EVAL_METRICS = ("loss", "perplexity", "bleu4", "rouge1", "rouge2", "rougeL", "sacrebleu",
                "chrf", "distinct1", "distinct2", "nonempty_share", "eot_share",
                "stopped_share", "mean_answer_chars", "tool_valid_share", "tool_name_accuracy",
                "tool_args_exact")
EVAL_EXTRA = ("n_loss_tokens", "n_records", "gen_time_per_sample_s", "n_samples",
              "quantization", "settings_key", "eval_peak_memory_mb", "eval_peak_cuda_allocated_mb",
              "eval_peak_cuda_reserved_mb")
TRAIN_FIELDS = ("trainable_params", "total_params", "trainable_share", "steps", "wall_time_s",
                "train_tokens", "tokens_per_s", "peak_memory_mb", "peak_cuda_allocated_mb",
                "peak_cuda_reserved_mb", "final_loss", "eval_loss", "device", "processes",
                "devices", "packing_fill_ratio")
SETTINGS = {"base_model": "base_model", "dataset": "dataset", "method": "method",
            "r": "lora.r", "alpha": "lora.alpha", "dropout": "lora.dropout",
            "learning_rate": "training.learning_rate", "batch_size": "training.batch_size",
            "grad_accum": "training.grad_accum", "epochs": "training.epochs",
            "warmup_ratio": "training.warmup_ratio", "max_length": "training.max_length"}
PAIRED_COLUMNS = ["experiment", "base_model", "dataset", "base_eval", "metric", "base",
                  "finetuned", "difference", "difference_low", "difference_high", "n_paired",
                  "verdict", "change_pct", "p_value", "p_holm"]
# quantization.tsv: the same comparison, the unquantized base against its 4-bit self
QUANTIZATION_COLUMNS = [{"base_eval": "unquantized_eval", "base": "unquantized",
                         "finetuned": "quantized"}.get(c, c) for c in PAIRED_COLUMNS]
# search_vs_grid.tsv: a search's best trial ("trial") against a sweep's best point ("grid")
SEARCH_GRID_COLUMNS = ["search", "sweep", "grid_experiment", *[
    {"base": "grid", "finetuned": "trial"}.get(c, c) for c in PAIRED_COLUMNS
    if c != "base_eval"]]
RANKING_COLUMNS = ["dataset", "base_model", "position", "experiment", "test_loss",
                   "test_loss_low", "test_loss_high", "difference", "difference_low",
                   "difference_high", "n_paired", "verdict", "p_value", "p_holm"]
DATA_COLUMN_ORDER = ("dataset", "format", "raw", "kept", "rejected_", "splits_", "lengths_",
                     "turns_", "share_")
DATA_SUFFIX_ORDER = ("train", "valid", "test", "mean", "p50", "p90", "p99", "max")


def read_optional(path: Path) -> dict:
    return read_json(path) if path.is_file() else {}


def column(metric: str) -> str:
    """A metric's column in experiments.tsv: "loss" alone would be ambiguous."""
    return "test_loss" if metric == "loss" else metric


def metric_columns() -> list[str]:
    return [f"{column(m)}{suffix}" for m in EVAL_METRICS for suffix in ("", "_low", "_high")]


class Evaluations:
    """Evaluation directories read once each, with their intervals cached."""

    def __init__(self, workdir: Path, seed: int, resamples: int):
        self.workdir, self.seed, self.resamples = workdir, seed, resamples
        self.runs: dict[str, EvalRun | None] = {}

    def get(self, directory: str | Path | None) -> EvalRun | None:
        if directory is None:
            return None
        key = str(directory)
        if key not in self.runs:
            self.runs[key] = EvalRun.read(self.workdir / key)
        return self.runs[key]

    def figures(self, run: EvalRun | None) -> dict:
        """Every metric of `run` under its column name, with _low and _high."""
        if run is None:
            return {}
        row = {}
        for metric in EVAL_METRICS:
            row[column(metric)] = run.metrics.get(metric)
            iv = interval(run, metric, self.seed, self.resamples)
            row[f"{column(metric)}_low"], row[f"{column(metric)}_high"] = iv.low, iv.high
        return row | {key: run.metrics.get(key) for key in EVAL_EXTRA}


def experiment_row(name: str, config: dict, results: Path, evals: Evaluations) -> dict:
    flat = pd.json_normalize(config, sep=".").iloc[0].to_dict()
    train = read_optional(results / "adapters" / name / "train_metrics.json")
    run = evals.get(Path(results.name) / "eval" / name)
    row = {"experiment": name, **{col: flat.get(key) for col, key in SETTINGS.items()}}
    row.update({field: train.get(field) for field in TRAIN_FIELDS})
    row.update(evals.figures(run))
    row["base_eval"] = config.get("base_eval")
    row["status"] = "done" if train and run else "trained" if train else "missing"
    return row


def base_row(directory: str, users: list[str], configs: dict, evals: Evaluations) -> dict:
    config = configs[users[0]]
    run = evals.get(directory)
    return {"base_eval": directory, "base_model": config["base_model"],
            "dataset": config["dataset"], **evals.figures(run),
            "used_by": ", ".join(users), "status": "done" if run else "missing"}


def base_evals(configs: dict) -> dict[str, list[str]]:
    """Base evaluation directory -> the experiments compared with it (either way)."""
    found: dict[str, list[str]] = {}
    for name, config in configs.items():
        for key in ("base_eval", "base_eval_unquantized"):
            if config.get(key):
                found.setdefault(config[key], []).append(name)
    return found


def reported(metric: str, *runs: EvalRun | None) -> bool:
    """Whether either evaluation reports `metric` (tool-call metrics only exist for data
    with tool calls)."""
    return any(run is not None and run.metrics.get(metric) is not None for run in runs)


def paired_row(name: str, config: dict, metric: str, base: EvalRun | None,
               other: EvalRun | None, evals: Evaluations) -> dict:
    b = base.metrics.get(metric) if base else None
    o = other.metrics.get(metric) if other else None
    row = {"experiment": name, "base_model": config["base_model"], "dataset": config["dataset"],
           "metric": metric, "base": b, "finetuned": o, "change_pct": change_pct(metric, b, o)}
    if b is not None and o is not None:
        diff, n = paired_difference(base, other, metric, evals.seed, evals.resamples)
        row.update(difference=diff.estimate, difference_low=diff.low,
                   difference_high=diff.high, n_paired=n,
                   verdict=verdict(metric, diff), p_value=diff.p_value)
    return row


def comparison_rows(configs: dict, results: Path, evals: Evaluations) -> list[dict]:
    """Each fine-tuned model against its base, metric by metric (paired over the same ids)."""
    rows = []
    for name, config in configs.items():
        base = evals.get(config.get("base_eval"))
        tuned = evals.get(Path(results.name) / "eval" / name)
        for metric in (m for m in EVAL_METRICS if reported(m, base, tuned)):
            rows.append(paired_row(name, config, metric, base, tuned, evals)
                        | {"base_eval": config.get("base_eval")})
    return rows


def quantization_rows(configs: dict, evals: Evaluations) -> list[dict]:
    """For QLoRA experiments: the 4-bit base ("quantized" column) against the same base
    unquantized ("unquantized" column), under the same settings: the cost of quantization."""
    rows = []
    for name, config in configs.items():
        if not config.get("base_eval_unquantized"):
            continue
        full, quant = evals.get(config["base_eval_unquantized"]), evals.get(config["base_eval"])
        for metric in (m for m in EVAL_METRICS if reported(m, full, quant)):
            row = paired_row(name, config, metric, full, quant, evals)
            rows.append({"unquantized_eval": config["base_eval_unquantized"],
                         "unquantized": row.pop("base"), "quantized": row.pop("finetuned"),
                         **row})
    return rows


def ranking_rows(experiments: pd.DataFrame, results: Path, evals: Evaluations) -> list[dict]:
    """Per (dataset, base model), experiments by test loss; each runner-up's paired loss
    difference to the first decides whether the first can be called best."""
    rows = []
    done = experiments.dropna(subset=["test_loss"])
    for (dataset, model), group in done.groupby(["dataset", "base_model"], sort=True):
        ordered = group.sort_values(["test_loss", "experiment"]).to_dict("records")
        best = evals.get(Path(results.name) / "eval" / ordered[0]["experiment"])
        for position, exp in enumerate(ordered, start=1):
            row = {"dataset": dataset, "base_model": model, "position": position,
                   **{k: exp[k] for k in ("experiment", "test_loss", "test_loss_low",
                                          "test_loss_high")}}
            if position > 1:
                other = evals.get(Path(results.name) / "eval" / exp["experiment"])
                diff, n = paired_difference(best, other, "loss", evals.seed, evals.resamples)
                row.update(difference=diff.estimate, difference_low=diff.low,
                           difference_high=diff.high, n_paired=n,
                           verdict=verdict("loss", diff), p_value=diff.p_value)
            rows.append(row)
    return rows


def search_grid_rows(run: dict, results: Path, evals: Evaluations) -> list[dict]:
    """Each search's best trial against the best point of each sweep on its dataset and base
    model (report/search_grid.py), metric by metric, paired over the same test items."""
    rows = []
    for pair in search_grid_pairs(run, results):
        trial, point = (evals.get(Path(results.name) / "eval" / pair[k])
                        for k in ("experiment", "grid_experiment"))
        config = run["experiments"][pair["experiment"]]
        for metric in (m for m in EVAL_METRICS if reported(m, point, trial)):
            row = paired_row(pair["experiment"], config, metric, point, trial, evals)
            rows.append({**pair, "grid": row.pop("base"), "trial": row.pop("finetuned"), **row})
    return rows


def training_log(experiments: dict[str, dict], results: Path) -> pd.DataFrame:
    frames = []
    for name in experiments:
        path = results / "adapters" / name / "trainer_log.jsonl"
        if path.is_file():
            frames.append(pd.DataFrame(list(read_jsonl(path))).assign(experiment=name))
    columns = ["experiment", "step", "epoch", "loss", "learning_rate", "grad_norm",
               "elapsed_s", "memory_mb", "eval_loss"]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    return table.reindex(columns=columns + [c for c in table.columns if c not in columns])


def data_column_rank(column_name: str) -> tuple[int, int]:
    """Sort key putting data_stats columns in the order a reader expects."""
    groups = (i for i, prefix in enumerate(DATA_COLUMN_ORDER) if column_name.startswith(prefix))
    suffix = column_name.rsplit("_", 1)[-1]
    within = DATA_SUFFIX_ORDER.index(suffix) if suffix in DATA_SUFFIX_ORDER else -1
    return next(groups, len(DATA_COLUMN_ORDER)), within


def token_lengths(dataset: str, experiments: dict[str, dict], results: Path) -> dict:
    """Training-record lengths in tokens, per base model, from the first experiment that
    tokenized this dataset with that model's tokenizer."""
    found = {}
    for name, config in sorted(experiments.items()):
        key = f"lengths_tokens_{config['base_model']}"
        if config["dataset"] != dataset or key in found:
            continue
        metrics = read_optional(results / "adapters" / name / "train_metrics.json")
        summary = metrics.get("tokenization", {}).get("record_tokens")
        if summary:
            found[key] = summary
    return found


def data_stats(datasets: dict, results: Path, experiments: dict | None = None) -> pd.DataFrame:
    rows = []
    for name in datasets:
        stats = read_optional(results / "data" / name / "stats.json")
        for nested in ("files", "per_file", "cleaning"):  # shown elsewhere, or not per dataset
            stats.pop(nested, None)
        if stats:
            stats.update(token_lengths(name, experiments or {}, results))
        rows.append({"dataset": name, **pd.json_normalize(stats, sep="_").iloc[0].to_dict()}
                    if stats else {"dataset": name})
    table = pd.DataFrame(rows)
    rejected = [c for c in table.columns if c.startswith("rejected_")]
    table[rejected] = table[rejected].fillna(0).astype(int)
    return table[sorted(table.columns, key=data_column_rank)]


def write_tsv(table: pd.DataFrame, path: Path) -> None:
    table.to_csv(path, sep="\t", index=False, na_rep="")


def experiment_columns() -> list[str]:
    return ["experiment", *SETTINGS, *TRAIN_FIELDS, *metric_columns(), *EVAL_EXTRA,
            "base_eval", "status"]


def collect(run: dict, results: Path, out_dir: Path,
            resamples: int = bootstrap.RESAMPLES) -> None:
    configs = run["experiments"]
    evals = Evaluations(results.parent, int(run.get("seed", 0)), resamples)
    out_dir.mkdir(parents=True, exist_ok=True)
    experiments = pd.DataFrame([experiment_row(n, c, results, evals) for n, c in configs.items()],
                               columns=experiment_columns())
    write_tsv(experiments, out_dir / "experiments.tsv")
    base_columns = ["base_eval", "base_model", "dataset", *metric_columns(), *EVAL_EXTRA,
                    "used_by", "status"]
    write_tsv(pd.DataFrame([base_row(d, users, configs, evals)
                            for d, users in base_evals(configs).items()], columns=base_columns),
              out_dir / "base_metrics.tsv")
    tested = family.control({
        "comparison": pd.DataFrame(comparison_rows(configs, results, evals),
                                   columns=PAIRED_COLUMNS),
        "quantization": pd.DataFrame(quantization_rows(configs, evals),
                                     columns=QUANTIZATION_COLUMNS),
        "ranking": pd.DataFrame(ranking_rows(experiments, results, evals),
                                columns=RANKING_COLUMNS),
        "search_vs_grid": pd.DataFrame(search_grid_rows(run, results, evals),
                                       columns=SEARCH_GRID_COLUMNS),
        **general_tables(configs, results, evals.seed, resamples),  # forgetting, benchmarks
        **judge_tables(run, results, evals.seed, resamples),  # judge.tsv, when judging
        **preference_tables(run, results, evals.seed, resamples)})  # policy vs its start
    for name, table in tested.items():
        write_tsv(table, out_dir / f"{name}.tsv")
    write_tsv(pd.DataFrame(study_rows(run), columns=["study", "kind", "varies", "experiment"]),
              out_dir / "studies.tsv")
    write_tsv(training_log(configs, results), out_dir / "training_log.tsv")
    write_tsv(data_stats(run.get("datasets", {}), results, configs), out_dir / "data_stats.tsv")
    write_json(out_dir / "experiments.json", configs)


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser(__doc__)
    parser.add_argument("--config", required=True, type=Path,
                        help="the config snapshot (results/metrics/config.json)")
    parser.add_argument("--results", default=Path("results"), type=Path,
                        help="the results directory the evaluations and adapters are in")
    parser.add_argument("--out-dir", default=Path("results/metrics"), type=Path,
                        help="where the TSV tables go")
    parser.add_argument("--resamples", default=bootstrap.RESAMPLES, type=int,
                        help="bootstrap resamples per interval and paired difference, corpus "
                             "metrics (sacreBLEU, chrF) included")
    args = parser.parse_args(argv)
    collect(read_json(args.config), args.results, args.out_dir, args.resamples)


if __name__ == "__main__":
    main()

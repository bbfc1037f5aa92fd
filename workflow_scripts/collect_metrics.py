"""Gather every experiment's training and evaluation files into the tables of results/metrics/.

    python -m workflow_scripts.collect_metrics --config run.json --results results \\
        --out-dir results/metrics

A file that a failed or pending job never wrote leaves empty cells, not an error.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from workflow_scripts.io_utils import read_json, read_jsonl, write_json

EVAL_METRICS = ("loss", "perplexity", "bleu4", "rouge1", "rouge2", "rougeL", "sacrebleu",
                "chrf", "distinct1", "distinct2", "nonempty_share", "mean_answer_chars")
EVAL_EXTRA = ("n_loss_tokens", "gen_time_per_sample_s", "n_samples")
TRAIN_FIELDS = ("trainable_params", "total_params", "trainable_share", "steps", "wall_time_s",
                "train_tokens", "tokens_per_s", "peak_memory_mb", "final_loss", "eval_loss",
                "device")
SETTINGS = {"base_model": "base_model", "dataset": "dataset", "method": "method",
            "r": "lora.r", "alpha": "lora.alpha", "dropout": "lora.dropout",
            "learning_rate": "training.learning_rate", "batch_size": "training.batch_size",
            "grad_accum": "training.grad_accum", "epochs": "training.epochs",
            "warmup_ratio": "training.warmup_ratio", "max_length": "training.max_length"}
COMPARISON_COLUMNS = ["experiment", "base_model", "dataset", "metric", "base", "finetuned",
                      "change_pct"]
RANK_KEYS = frozenset({"lora.r"})
HYPERPARAMETER_KEYS = frozenset({"training.learning_rate", "training.batch_size",
                                 "training.grad_accum", "training.epochs",
                                 "training.warmup_ratio"})
DATA_COLUMN_ORDER = ("dataset", "format", "raw", "kept", "rejected_", "splits_", "lengths_",
                     "turns_", "share_")
DATA_SUFFIX_ORDER = ("train", "valid", "test", "mean", "p50", "p90", "p99", "max")
# Settings that change where or how fast a job runs, never its result.
IGNORED_PREFIXES = ("resources.",)


def read_optional(path: Path) -> dict:
    return read_json(path) if path.is_file() else {}


def flatten(config: dict) -> dict:
    """Dotted keys to JSON-encoded values, so lists and dicts compare by content."""
    flat = pd.json_normalize(config, sep=".").iloc[0].to_dict()
    return {k: json.dumps(v, sort_keys=True) for k, v in flat.items()
            if not k.startswith(IGNORED_PREFIXES)}


def groups_differing_only_in(experiments: dict[str, dict], keys: frozenset[str]) -> list[list[str]]:
    """Groups of two or more experiments equal in every setting outside `keys`, not inside."""
    groups: dict[str, list[str]] = {}
    flat = {name: flatten(config) for name, config in experiments.items()}
    for name, settings in flat.items():
        rest = {k: v for k, v in settings.items() if k not in keys}
        groups.setdefault(json.dumps(rest, sort_keys=True), []).append(name)
    studies = []
    for names in groups.values():
        varied = {json.dumps({k: flat[n].get(k) for k in keys}, sort_keys=True) for n in names}
        if len(names) > 1 and len(varied) > 1:
            studies.append(names)
    return studies


def experiment_columns() -> list[str]:
    evaluation = [f"test_{m}" if m == "loss" else m for m in EVAL_METRICS + EVAL_EXTRA]
    return ["experiment", *SETTINGS, *TRAIN_FIELDS, *evaluation, "status"]


def status(train: dict, evaluation: dict) -> str:
    if train and evaluation:
        return "done"
    return "trained" if train else "missing"


def experiment_row(name: str, config: dict, results: Path) -> dict:
    flat = pd.json_normalize(config, sep=".").iloc[0].to_dict()
    train = read_optional(results / "adapters" / name / "train_metrics.json")
    evaluation = read_optional(results / "eval" / name / "metrics.json")
    row = {"experiment": name, **{col: flat.get(key) for col, key in SETTINGS.items()}}
    row.update({field: train.get(field) for field in TRAIN_FIELDS})
    row.update({f"test_{m}" if m == "loss" else m: evaluation.get(m)
                for m in EVAL_METRICS + EVAL_EXTRA})  # "loss" alone would be ambiguous
    row["status"] = status(train, evaluation)
    return row


def base_pairs(experiments: dict[str, dict]) -> list[tuple[str, str]]:
    return sorted({(c["base_model"], c["dataset"]) for c in experiments.values()})


def base_row(model: str, dataset: str, results: Path) -> dict:
    metrics = read_optional(results / "eval" / "base" / model / dataset / "metrics.json")
    row = {"base_model": model, "dataset": dataset}
    row.update({m: metrics.get(m) for m in EVAL_METRICS + EVAL_EXTRA})
    row["status"] = "done" if metrics else "missing"
    return row


def change_pct(base: float | None, tuned: float | None) -> float | None:
    """Relative change in percent; undefined when either is missing or the base is 0."""
    if base is None or tuned is None or pd.isna(base) or pd.isna(tuned) or base == 0:
        return None
    return 100.0 * (tuned - base) / abs(base)


def comparison_rows(experiments: dict[str, dict], results: Path) -> list[dict]:
    rows = []
    for name, config in experiments.items():
        base_dir = results / "eval" / "base" / config["base_model"] / config["dataset"]
        base = read_optional(base_dir / "metrics.json")
        tuned = read_optional(results / "eval" / name / "metrics.json")
        for metric in EVAL_METRICS:
            b, t = base.get(metric), tuned.get(metric)
            values = [name, config["base_model"], config["dataset"], metric, b, t,
                      change_pct(b, t)]
            rows.append(dict(zip(COMPARISON_COLUMNS, values)))
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
    table = table.reindex(columns=columns + [c for c in table.columns if c not in columns])
    return table


def data_column_rank(column: str) -> tuple[int, int]:
    """Sort key putting data_stats columns in the order a reader expects."""
    groups = (i for i, prefix in enumerate(DATA_COLUMN_ORDER) if column.startswith(prefix))
    suffix = column.rsplit("_", 1)[-1]
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
        stats.pop("files", None)
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


def collect(run: dict, results: Path, out_dir: Path) -> None:
    experiments = run["experiments"]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tsv(pd.DataFrame([experiment_row(n, c, results) for n, c in experiments.items()],
                           columns=experiment_columns()), out_dir / "experiments.tsv")
    base_columns = ["base_model", "dataset", *EVAL_METRICS, *EVAL_EXTRA, "status"]
    write_tsv(pd.DataFrame([base_row(m, d, results) for m, d in base_pairs(experiments)],
                           columns=base_columns), out_dir / "base_metrics.tsv")
    write_tsv(pd.DataFrame(comparison_rows(experiments, results), columns=COMPARISON_COLUMNS),
              out_dir / "comparison.tsv")
    write_tsv(training_log(experiments, results), out_dir / "training_log.tsv")
    write_tsv(data_stats(run.get("datasets", {}), results, experiments), out_dir / "data_stats.tsv")
    write_json(out_dir / "experiments.json", experiments)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path,
                        help="JSON with experiments, datasets and base_models")
    parser.add_argument("--results", default=Path("results"), type=Path)
    parser.add_argument("--out-dir", default=Path("results/metrics"), type=Path)
    args = parser.parse_args(argv)
    collect(read_json(args.config), args.results, args.out_dir)


if __name__ == "__main__":
    main()

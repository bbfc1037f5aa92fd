"""What one experiment's tracker run holds, read from the workflow's files (no backend here).

Params are the experiment's resolved settings, flattened; the run is found again by a tag
holding the experiment's name and the hash of those same settings. Step metrics come from
trainer_log.jsonl, final metrics (with their interval bounds, the base's values and the
paired differences) from collect_metrics' tables.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from workflow_scripts.common.io_utils import canonical_json, read_json, read_jsonl

# trainer_log.jsonl field -> step metric name
CURVES = {"loss": "train_loss", "eval_loss": "eval_loss", "learning_rate": "learning_rate",
          "grad_norm": "grad_norm"}
# preference training's TRL metrics (rewards/margins, eval_rewards/accuracies, ...), logged
# under their own names
PREFERENCE_CURVES = ("rewards/", "logps/", "eval_rewards/", "eval_logps/")
# collect_metrics names the test loss `loss` in comparison.tsv and `test_loss` elsewhere
COMPARISON_NAMES = {"loss": "test_loss"}
TRAINING_SUMMARY = ("final_loss", "trainable_params", "total_params", "steps",
                    "wall_time_s", "tokens_per_s", "peak_memory_mb")
TAG_PREFIX = "lora_zh."


def flatten(settings: dict, prefix: str = "") -> dict[str, str]:
    """Nested settings as `a.b.c` -> text; lists as JSON (MLflow params are strings)."""
    flat = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, dict)):
            flat[name] = json.dumps(value, ensure_ascii=False, sort_keys=True)
        else:
            flat[name] = str(value)
    return flat


def config_hash(settings: dict) -> str:
    """12 hex digits of the canonical JSON of the tracked settings."""
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()[:12]


def number(text: str | None) -> float | None:
    """A TSV cell as a finite float, None when empty or not a number."""
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def tsv_rows(path: Path) -> Iterator[dict[str, str]]:
    if path.is_file():
        with open(path, encoding="utf-8", newline="") as fh:
            yield from csv.DictReader(fh, delimiter="\t")


@dataclass
class RunRecord:
    experiment: str
    settings: dict
    params: dict[str, str]
    tags: dict[str, str]
    final: dict[str, float]
    trainer_log: Path
    # artifact path (folder/file name, the name of the local file) -> local file
    artifacts: dict[str, Path] = field(default_factory=dict)

    @property
    def config_hash(self) -> str:
        return self.tags[TAG_PREFIX + "config_hash"]

    @property
    def run_key(self) -> str:
        """What finds the run again: experiment name and config hash."""
        return self.tags[TAG_PREFIX + "run_key"]

    def curve_points(self) -> Iterator[tuple[str, int, float]]:
        """(metric, step, value) for every curve point, streamed from trainer_log.jsonl."""
        for row in read_jsonl(self.trainer_log):
            step = row.get("step")
            named = [(source, name) for source, name in CURVES.items()]
            named += [(key, key) for key in row if key.startswith(PREFERENCE_CURVES)]
            for source, name in named:
                value = row.get(source)
                if step is not None and isinstance(value, (int, float)) and math.isfinite(value):
                    yield name, int(step), float(value)


def final_metrics(experiment: str, metrics_dir: Path) -> dict[str, float]:
    """The experiment's row of experiments.tsv (metrics with `_low`/`_high` bounds and the
    training summary), the base's values with their bounds, and each paired difference."""
    final: dict[str, float] = {}
    row = next((r for r in tsv_rows(metrics_dir / "experiments.tsv")
                if r.get("experiment") == experiment), {})
    metric_names = [k[:-4] for k in row if k.endswith("_low") and f"{k[:-4]}_high" in row]
    for name in metric_names + list(TRAINING_SUMMARY):
        for key in (name, f"{name}_low", f"{name}_high"):
            if number(row.get(key)) is not None:
                final[key] = number(row[key])
    base = next((r for r in tsv_rows(metrics_dir / "base_metrics.tsv")
                 if row.get("base_eval") and r.get("base_eval") == row["base_eval"]), {})
    for name in metric_names:
        for suffix in ("", "_low", "_high"):
            if number(base.get(name + suffix)) is not None:
                final[f"base_{name}{suffix}"] = number(base[name + suffix])
    for comp in tsv_rows(metrics_dir / "comparison.tsv"):
        if comp.get("experiment") != experiment:
            continue
        name = COMPARISON_NAMES.get(comp["metric"], comp["metric"])
        for suffix in ("", "_low", "_high"):
            if number(comp.get("difference" + suffix)) is not None:
                final[f"{name}_diff{suffix}"] = number(comp["difference" + suffix])
    return final


def verdict_tags(experiment: str, metrics_dir: Path) -> dict[str, str]:
    """The paired verdict per metric (better / worse / no clear difference)."""
    return {f"{TAG_PREFIX}verdict.{COMPARISON_NAMES.get(r['metric'], r['metric'])}": r["verdict"]
            for r in tsv_rows(metrics_dir / "comparison.tsv")
            if r.get("experiment") == experiment and r.get("verdict")}


def provenance_tags(job: dict, adapter_dir: Path, model_hash: str) -> dict[str, str]:
    exp = job["settings"]
    info = read_json(adapter_dir / "run_info.json") if (adapter_dir / "run_info.json").is_file() else {}
    tags = {
        TAG_PREFIX + "experiment": job["experiment"],
        TAG_PREFIX + "dataset": exp["dataset"],
        TAG_PREFIX + "base_model": exp["base_model"],
        TAG_PREFIX + "method": exp["method"],
        TAG_PREFIX + "model_hash": model_hash,
        TAG_PREFIX + "git_commit": info.get("git_commit", "unknown"),
        TAG_PREFIX + "snakemake_job": job.get("snakemake_job", "unknown"),
        TAG_PREFIX + "host": socket.gethostname(),
        "mlflow.source.git.commit": info.get("git_commit", "unknown"),
    }
    if os.environ.get("SLURM_JOB_ID"):
        tags[TAG_PREFIX + "slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    for path, digest in sorted(info.get("data_files", {}).items()):
        tags[f"{TAG_PREFIX}data_sha256.{Path(path).stem}"] = digest
    hardware = info.get("hardware", {})
    tags[TAG_PREFIX + "device"] = str(hardware.get("gpu") or hardware.get("cpu") or "unknown")
    return tags


def build_record(job: dict, results: Path, model_hash: str) -> RunRecord:
    """Everything one run holds. `job` is the rule's config slice (rules/track.smk)."""
    name = job["experiment"]
    settings = job["settings"]
    digest = config_hash(settings)
    adapter_dir = results / "adapters" / name
    eval_dir = results / "eval" / name
    tags = provenance_tags(job, adapter_dir, model_hash)
    tags[TAG_PREFIX + "config_hash"] = digest
    tags[TAG_PREFIX + "run_key"] = f"{name}@{digest}"
    tags.update(verdict_tags(name, results / "metrics"))
    artifacts = {
        "adapter/adapter_config.json": adapter_dir / "adapter_config.json",
        "training/train_metrics.json": adapter_dir / "train_metrics.json",
        "training/run_info.json": adapter_dir / "run_info.json",
        "evaluation/metrics.json": eval_dir / "metrics.json",
        "evaluation/preference.json": eval_dir / "preference.json",  # preference experiments
    }
    if job.get("log_adapter"):
        artifacts["adapter/adapter_model.safetensors"] = adapter_dir / "adapter_model.safetensors"
    params = {"experiment": name, **flatten(settings)}
    return RunRecord(name, settings, params, tags, final_metrics(name, results / "metrics"),
                     adapter_dir / "trainer_log.jsonl",
                     {k: v for k, v in artifacts.items() if v.is_file()})

"""What an evaluation scores besides its test split: a general text (forgetting) and
multiple-choice benchmarks, as one settings dict that a base model and an adapter share.

Imported while Snakemake builds the DAG (rules/common.smk, rules/evaluate.smk), so it stays
light: no torch, no lm-eval. The settings become part of the evaluation settings key, so an
adapter and the base it is compared with are scored on the same texts and questions with the
same quantization (docs/metrics.md, "General text" and "Benchmarks").
"""
from __future__ import annotations

from pathlib import PurePath

# Records per part of the general text and tokens per record, unless the entry sets them.
DEFAULT_MAX_RECORDS = 500
DEFAULT_MAX_LENGTH = 512
TASKS_ROOT = "results/benchmark_tasks"


def benchmark_task_dir(name: str) -> str:
    """Where a local benchmark's lm-eval task (task.yaml, test.jsonl, dev.jsonl) is generated."""
    return f"{TASKS_ROOT}/{name}"


def benchmark_task_files(name: str) -> list[str]:
    return [f"{benchmark_task_dir(name)}/{f}" for f in ("task.yaml", "test.jsonl", "dev.jsonl")]


def local_benchmarks(config: dict) -> list[str]:
    return [n for n, spec in config.get("benchmarks", {}).items() if "format" in spec]


def exam_files(spec: dict) -> dict[str, list[str]]:
    """A local benchmark's files by split: `files` as a list is the test split; as a map,
    `test` and optionally `dev` (each a path or a list of paths)."""
    files = spec["files"]
    if isinstance(files, list):
        return {"test": list(files), "dev": []}
    as_list = {k: ([v] if isinstance(v, str) else list(v)) for k, v in files.items()}
    return {"test": as_list["test"], "dev": as_list.get("dev", [])}


def general_text_parts(config: dict, model_name: str) -> dict[str, dict]:
    """The named parts of a base model's general text: `general_text.files` (one part per
    file, named by its stem), or for a scratch model the validation splits of the datasets it
    was pretrained on, rendered as the plain text it was pretrained on (held out: pretraining
    reads only the training splits). Empty when neither applies."""
    spec = config["base_models"][model_name]
    if "general_text" in spec:
        parts: dict[str, dict] = {}
        for path in spec["general_text"]["files"]:
            stem = PurePath(path).stem
            name = stem if stem not in parts else f"{stem}-{len(parts) + 1}"
            parts[name] = {"files": [path], "kind": "file"}
        return parts
    if spec["source"] == "scratch":
        return {ds: {"files": [f"results/data/{ds}/valid.jsonl"], "kind": "conversations"}
                for ds in spec["pretrain"]["datasets"]}
    return {}


def general_job(config: dict, experiment: dict) -> dict | None:
    """The general-text and benchmark settings of one experiment's evaluation (and of its
    base's), or None when there is nothing to score besides the test split."""
    model_spec = config["base_models"][experiment["base_model"]]
    text_spec = model_spec.get("general_text", {})
    texts = general_text_parts(config, experiment["base_model"])
    benchmarks = {}
    for name in experiment.get("evaluation", {}).get("benchmarks", []):
        spec = config["benchmarks"][name]
        entry = {"shots": spec.get("shots", 0)}
        if "task" in spec:
            entry["task"] = spec["task"]
        else:
            entry["task_dir"] = benchmark_task_dir(name)
        benchmarks[name] = entry
    if not texts and not benchmarks:
        return None
    return {"texts": texts, "benchmarks": benchmarks,
            "max_records": text_spec.get("max_records", DEFAULT_MAX_RECORDS),
            "max_length": text_spec.get("max_length", DEFAULT_MAX_LENGTH)}


def general_inputs(job: dict | None) -> list[str]:
    """The files an evaluation with these general settings reads besides its test split."""
    if not job:
        return []
    files = [f for part in job["texts"].values() for f in part["files"]]
    for name, spec in job["benchmarks"].items():
        if "task_dir" in spec:
            files += benchmark_task_files(name)
    return files

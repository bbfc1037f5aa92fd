"""The table of known experiments, base models and datasets, and what each has produced.

Everything the studio shows starts from the config (the same validation and expansion the
Snakefile uses), so experiments not run yet are listed too, and a name from a request is
only ever looked up in these tables, never joined to a path.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from workflow_scripts.common.config import resolve_experiments, validate
from workflow_scripts.models.loading import resolve_model_dir
from workflow_scripts.search.plan import TrialExperiments, plan_searches
from workflow_scripts.studio.errors import UnknownName
from workflow_scripts.studio.files import modified_ago, read_json_cached, read_tail, read_tsv_cached
from workflow_scripts.studio.progress import Progress, curves_from_trainer_log, read_progress

TEXT_METRICS = ("bleu4", "rouge1", "rouge2", "rougeL", "sacrebleu", "chrf", "distinct1",
                "distinct2")
FAILURE_MARKERS = ("Traceback (most recent call last)", "Killed")
STATUSES = ("planned", "running", "done", "failed", "incomplete")


@dataclass(frozen=True)
class ExperimentPaths:
    adapter: Path
    eval: Path
    progress: Path
    train_log: Path
    eval_log: Path


def metric_interval(metrics: dict, name: str) -> list[float] | None:
    """A metric's confidence interval, in whichever form the evaluation wrote it:
    `{name}_ci: [lo, hi]`, `{name}_low`/`{name}_high`, or `intervals: {name: [lo, hi] |
    {"low", "high"}}`. None when there is none."""
    candidates = [metrics.get(f"{name}_ci"), metrics.get("intervals", {}).get(name)
                  if isinstance(metrics.get("intervals"), dict) else None]
    if f"{name}_low" in metrics and f"{name}_high" in metrics:
        candidates.append([metrics[f"{name}_low"], metrics[f"{name}_high"]])
    for value in candidates:
        if isinstance(value, dict) and "low" in value and "high" in value:
            value = [value["low"], value["high"]]
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(
                isinstance(v, (int, float)) for v in value):
            return [float(value[0]), float(value[1])]
    return None


def table_interval(row: dict[str, str], column: str) -> list[float] | None:
    """`{column}_low`/`{column}_high` of a results/metrics table row, if both are numbers."""
    try:
        low, high = float(row[f"{column}_low"]), float(row[f"{column}_high"])
    except (KeyError, TypeError, ValueError):
        return None
    return None if math.isnan(low) or math.isnan(high) else [low, high]


def metric_value(metrics: dict, name: str) -> float | None:
    value = metrics.get(name)
    if isinstance(value, dict):  # {"value", "low", "high"}
        value = value.get("value", value.get("mean"))
    return value if isinstance(value, (int, float)) else None


def log_failed(path: Path) -> bool:
    """Whether a rule log ends in an error (only its last 8 KiB are read)."""
    try:
        tail, _ = read_tail(path, 8192)
    except OSError:
        return False
    return any(marker in tail for marker in FAILURE_MARKERS)


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted keys to leaf values (lists stay whole)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


class Catalog:
    """The config's experiments, models and datasets, over one working directory."""

    def __init__(self, config_path: Path, workdir: Path, stale_after_s: float = 900.0):
        self.workdir = workdir.resolve()
        self.config_path = config_path if config_path.is_absolute() else self.workdir / config_path
        self.stale_after_s = stale_after_s
        self._loaded_signature: float | None = None
        self._table_source: list | None = None
        self._table_index: dict[str, dict] = {}
        self.reload()

    def reload(self) -> None:
        """Read the config again if it changed (a new sweep shows up without a restart)."""
        signature = self.config_path.stat().st_mtime
        if signature == self._loaded_signature:
            return
        with open(self.config_path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh) or {}
        config = validate(raw, str(self.config_path))
        self.config = config
        experiments = resolve_experiments(config, str(self.config_path))
        # search trials with the settings their rounds gave them, listed together
        self.experiments = TrialExperiments(experiments, plan_searches(config, experiments),
                                            self.workdir)
        self.base_models: dict[str, dict] = dict(config["base_models"])
        self.datasets: dict[str, dict] = dict(config["datasets"])
        self._paths: dict[str, ExperimentPaths] = {}
        self._loaded_signature = signature

    # Lookups: the only way a request's name becomes a path.
    def experiment(self, name: str) -> dict:
        if name not in self.experiments:
            raise UnknownName("experiment", name, self.experiments)
        return self.experiments[name]

    def dataset(self, name: str) -> dict:
        if name not in self.datasets:
            raise UnknownName("dataset", name, self.datasets)
        return self.datasets[name]

    def paths(self, name: str) -> ExperimentPaths:
        if name not in self._paths:
            self.experiment(name)
            root = self.workdir
            self._paths[name] = ExperimentPaths(
                adapter=root / "results" / "adapters" / name,
                eval=root / "results" / "eval" / name,
                progress=root / "logs" / "train_adapter" / f"{name}.progress.jsonl",
                train_log=root / "logs" / "train_adapter" / f"{name}.log",
                eval_log=root / "logs" / "evaluate" / f"{name}.log",
            )
        return self._paths[name]

    def model_dir(self, base_model: str) -> Path:
        if base_model not in self.base_models:
            raise UnknownName("base model", base_model, self.base_models)
        spec = self.base_models[base_model]
        path = Path(resolve_model_dir(base_model, spec, str(self.workdir / "results" / "models")))
        return path if path.is_absolute() else self.workdir / path

    def dataset_dir(self, name: str) -> Path:
        self.dataset(name)
        return self.workdir / "results" / "data" / name

    def adapter_ready(self, name: str) -> bool:
        adapter = self.paths(name).adapter
        return (adapter / "adapter_config.json").is_file() and (
            adapter / "adapter_model.safetensors").is_file()

    def base_model_ready(self, base_model: str) -> bool:
        return (self.model_dir(base_model) / "config.json").is_file()

    # What has happened to an experiment.
    def status(self, name: str, progress: Progress | None, now: float,
               trained: bool | None = None, evaluated: bool | None = None) -> str:
        """planned, running, done, failed or incomplete (trained but not evaluated, or a
        training that stopped without failing: killed, or waiting to resume)."""
        paths = self.paths(name)
        if trained is None:
            trained = (paths.adapter / "train_metrics.json").is_file()
        if evaluated is None:
            evaluated = (paths.eval / "metrics.json").is_file()
        if trained and evaluated:
            return "done"
        log = paths.eval_log if trained else paths.train_log
        if log_failed(log):
            return "failed"
        if self._fresh(log, now) or (not trained and progress is not None and not progress.ended
                                     and self._fresh(paths.progress, now)):
            return "running"
        if trained or progress is not None:
            return "incomplete"
        return "planned"

    def _fresh(self, path: Path, now: float) -> bool:
        age = modified_ago(path, now)
        return age is not None and age < self.stale_after_s

    def row(self, name: str, now: float | None = None) -> dict:
        """One line of the experiments table: settings, training and evaluation figures."""
        now = time.time() if now is None else now
        exp, paths = self.experiment(name), self.paths(name)
        progress = read_progress(paths.progress)
        train = read_json_cached(paths.adapter / "train_metrics.json")
        metrics = read_json_cached(paths.eval / "metrics.json")
        training = exp.get("training", {})
        status = self.status(name, progress, now, trained=bool(train), evaluated=bool(metrics))
        live = progress.summary(now, with_curve=False) if progress else {}
        return {
            "experiment": name, "status": status, **self._search_fields(name, train),
            "base_model": exp["base_model"], "dataset": exp["dataset"], "method": exp["method"],
            "r": exp["lora"].get("r"), "alpha": exp["lora"].get("alpha"),
            "learning_rate": training.get("learning_rate"),
            "steps": train.get("steps", live.get("step")),
            "max_steps": positive(training.get("max_steps", live.get("max_steps"))),
            "wall_time_s": train.get("wall_time_s", live.get("elapsed_s")),
            "tokens_per_s": train.get("tokens_per_s", live.get("tokens_per_s")),
            "peak_memory_mb": train.get("peak_memory_mb"),  # host RSS
            "peak_cuda_reserved_mb": train.get("peak_cuda_reserved_mb"),  # GPU, on CUDA only
            "peak_cuda_allocated_mb": train.get("peak_cuda_allocated_mb"),
            "final_loss": train.get("final_loss", live.get("loss")),
            "eval_loss": train.get("eval_loss", live.get("eval_loss")),
            "test_loss": metric_value(metrics, "loss"),
            "perplexity": metric_value(metrics, "perplexity"),
            "metrics": {m: metric_value(metrics, m) for m in TEXT_METRICS},
            "intervals": self._intervals(name, metrics),
        }

    def _search_fields(self, name: str, train: dict) -> dict:
        """A search trial's search, and whether it was pruned or diverged (else None)."""
        plan = self.experiments.plan_of(name)
        if plan is None:
            return {}
        return {"search": plan.name, "trial_stop": (train.get("stop") or {}).get("state")}

    def _intervals(self, name: str, metrics: dict) -> dict[str, list[float]]:
        """95% intervals of the test loss and text metrics: from metrics.json if it has
        them, else from results/metrics/experiments.tsv (collect_metrics's bootstrap)."""
        table = self._table_row(name)
        out = {}
        for metric in ("test_loss", *TEXT_METRICS):
            source = "loss" if metric == "test_loss" else metric
            interval = metric_interval(metrics, source) or table_interval(table, metric)
            if interval is not None:
                out[metric] = interval
        return out

    def _table_row(self, name: str) -> dict[str, str]:
        rows = read_tsv_cached(self.workdir / "results" / "metrics" / "experiments.tsv")
        if self._table_source is not rows:  # the table changed: index it again
            self._table_index = {row.get("experiment"): row for row in rows}
            self._table_source = rows
        return self._table_index.get(name, {})

    def rows(self) -> list[dict]:
        self.reload()
        now = time.time()
        return [self.row(name, now) for name in self.experiments]

    def curves(self, name: str) -> dict:
        """Loss curves (and a preference experiment's reward curves): the finished trainer
        log, else what the progress file has so far."""
        paths = self.paths(name)
        finished = curves_from_trainer_log(paths.adapter / "trainer_log.jsonl")
        if finished["train"] or finished["eval"]:
            return finished
        progress = read_progress(paths.progress)
        return {"train": progress.train, "eval": progress.eval} if progress else finished

    def live(self, now: float | None = None) -> list[dict]:
        """Every training whose progress file shows it running, with its curve so far."""
        self.reload()
        now = time.time() if now is None else now
        out = []
        for name in self.experiments:
            paths = self.paths(name)
            if modified_ago(paths.progress, now) is None:
                continue
            progress = read_progress(paths.progress)
            if progress is None or progress.ended or self.status(name, progress, now) != "running":
                continue
            out.append({"experiment": name, **progress.summary(now)})
        return out


def positive(value):
    """A step limit, or None where none was set (-1, 0 or missing)."""
    return value if isinstance(value, (int, float)) and value > 0 else None

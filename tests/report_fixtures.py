"""A fake but complete results tree, laid out as docs/artifacts.md describes.

`build_results(root)` writes root/results/... and root/run.json (the JSON the collect_metrics
and render_report CLIs take) and returns that run dict; `run_pipeline(root)` then runs both
CLIs on it. The numbers follow simple formulas so tests can recompute them.
"""
from __future__ import annotations

import math
from pathlib import Path

from workflow_scripts import collect_metrics, render_report
from workflow_scripts.experiment_config import resolve_experiments, validate
from workflow_scripts.io_utils import write_json, write_jsonl
from workflow_scripts.text_metrics import compute_text_metrics

REPO = Path(__file__).resolve().parent.parent
CONFIG = {
    "seed": 42,
    "datasets": {
        "alpaca_zh": {"format": "alpaca", "files": ["data/raw/alpaca_zh_demo.json"]},
        "lccc": {"format": "lccc", "files": {"train": "data/raw/LCCC-base_train.json",
                                             "valid": "data/raw/LCCC-base_valid.json",
                                             "test": "data/raw/LCCC-base_test.json"}},
    },
    "base_models": {"tiny-zh": {"source": "scratch", "architecture": "qwen2", "vocab_size": 500,
                               "hidden_size": 32, "intermediate_size": 64, "layers": 1,
                               "heads": 2, "kv_heads": 1, "max_position_embeddings": 128,
                               "pretrain": {"datasets": ["alpaca_zh"], "steps": 10}}},
    "defaults": {"training": {"learning_rate": 2.0e-3, "logging_steps": 5}},
    "experiments": {"lccc-r8": {"base_model": "tiny-zh", "dataset": "lccc"}},
    "sweeps": {
        "rank-study": {"base": {"base_model": "tiny-zh", "dataset": "alpaca_zh"},
                       "grid": {"lora.r": [4, 8, 16]}},
        "lr-study": {"base": {"base_model": "tiny-zh", "dataset": "alpaca_zh", "lora": {"r": 8}},
                     "grid": {"training.learning_rate": [5.0e-4, 1.0e-3]}},
    },
}
STEPS = 60
SAMPLES = [
    ("a1", "介绍一下北京。", "北京是中国的首都，历史悠久。"),
    ("a2", "用一句话解释机器学习。", "机器学习让计算机从数据中学习规律。"),
    ("a3", "写出 <html> 标签的作用 & 用法", "<html> 是网页的根元素 & 包含全部内容"),
    ("a4", "推荐一本书。", "推荐《红楼梦》，这是一部经典小说。"),
]
DIALOGUE = [
    ("l1", "今天天气怎么样", "挺好的，出去走走吧"),
    ("l2", "你吃饭了吗", "吃过了，你呢"),
    ("l3", "周末有什么安排", "打算在家看电影"),
]


def loss_at(step: int, quality: float) -> float:
    """A falling loss curve with a deterministic wiggle; higher quality ends lower."""
    return 1.0 + 3.0 * math.exp(-step / 15.0) - 0.2 * quality + 0.05 * math.sin(step)


def trainer_rows(quality: float, eval_every: int | None) -> list[dict]:
    rows = []
    for step in range(5, STEPS + 1, 5):
        rows.append({"step": step, "epoch": step / STEPS, "loss": round(loss_at(step, quality), 4),
                     "learning_rate": 2.0e-3 * (1 - step / STEPS), "grad_norm": 1.5,
                     "elapsed_s": step * 0.5, "memory_mb": 300.0 + step})
        if eval_every and step % eval_every == 0:
            rows.append({"step": step, "epoch": step / STEPS, "elapsed_s": step * 0.5,
                         "eval_loss": round(loss_at(step, quality) + 0.1, 4)})
    return rows


def train_metrics(config: dict, quality: float, rows: list[dict]) -> dict:
    trainable = 2 * 128 * config["lora"]["r"] * 14
    total = 1_000_000 + trainable
    eval_losses = [r["eval_loss"] for r in rows if "eval_loss" in r]
    return {"trainable_params": trainable, "total_params": total,
            "trainable_share": trainable / total, "steps": STEPS,
            "wall_time_s": 30.0 + config["lora"]["r"], "train_tokens": 48_000,
            "tokens_per_s": 48_000 / (30.0 + config["lora"]["r"]),
            "peak_memory_mb": 360.0 + config["lora"]["r"] * 2,
            "final_loss": [r["loss"] for r in rows if "loss" in r][-1],
            "eval_loss": eval_losses[-1] if eval_losses else None,
            "device": "cpu", "method": config["method"]}


def run_info(config: dict, dataset: str) -> dict:
    return {"config": config, "seed": 42,
            "packages": {"torch": "2.13.0+cpu", "transformers": "5.23.0", "peft": "0.21.2",
                         "pandas": "3.1.1"},
            "git_commit": "0123456789abcdef0123456789abcdef01234567",
            "data_files": {f"results/data/{dataset}/train.jsonl": "ab" * 32},
            "hardware": {"cpu": "Test CPU 9000", "cores": 2, "memory_gb": 23.5, "gpu": None,
                         "cuda": None},
            "python": "3.11.7", "platform": "Linux-test-x86_64"}


def answers(samples: list[tuple[str, str, str]], quality: float) -> list[dict]:
    """Predictions that keep a `quality` share of each reference's characters."""
    rows = []
    for sample_id, prompt, reference in samples:
        keep = max(1, int(len(reference) * quality))
        prediction = reference[:keep] if quality > 0 else "嗯嗯"
        rows.append({"id": sample_id, "prompt": prompt, "reference": reference,
                     "prediction": prediction})
    return rows


def write_eval(directory: Path, samples: list, quality: float, dialogue: bool) -> None:
    rows = answers(samples, quality)
    metrics = compute_text_metrics([r["prediction"] for r in rows],
                                   [r["reference"] for r in rows], dialogue)
    loss = 3.0 - quality
    metrics.update({"loss": loss, "perplexity": math.exp(loss), "n_loss_tokens": 500,
                    "gen_time_per_sample_s": 0.2, "n_samples": len(rows)})
    write_jsonl(directory / "predictions.jsonl", rows)
    write_json(directory / "metrics.json", metrics)


def write_data(results: Path, name: str, fmt: str) -> None:
    stats = {"dataset": name, "format": fmt, "raw": 120, "kept": 100,
             "rejected": {"empty_response": 12, "duplicate": 8},
             "splits": {"train": 90, "valid": 5, "test": 5},
             "lengths": {key: {"mean": 20.5, "p50": 18, "p90": 40, "p99": 60, "max": 80}
                         for key in ("prompt_chars", "response_chars")},
             "turns": {"mean": 1.0, "max": 1}, "share_with_input": 0.25,
             "share_with_history": 0.0, "files": {f"data/raw/{name}.json": "cd" * 32}}
    write_json(results / "data" / name / "stats.json", stats)


def quality_of(config: dict) -> float:
    return min(0.9, 0.3 + 0.1 * math.log2(config["lora"]["r"]) +
               (0.05 if config["training"]["learning_rate"] >= 1e-3 else 0.0))


def write_experiment(results: Path, name: str, config: dict) -> None:
    quality = quality_of(config)
    rows = trainer_rows(quality, eval_every=20 if config["dataset"] == "alpaca_zh" else None)
    adapter = results / "adapters" / name
    write_jsonl(adapter / "trainer_log.jsonl", rows)
    write_json(adapter / "train_metrics.json", train_metrics(config, quality, rows))
    write_json(adapter / "run_info.json", run_info(config, config["dataset"]))
    dialogue = config["dataset"] == "lccc"
    write_eval(results / "eval" / name, DIALOGUE if dialogue else SAMPLES, quality, dialogue)


def build_results(root: Path) -> dict:
    """Write root/results and root/run.json; return the run dict."""
    config = validate(CONFIG, "report fixture")
    experiments = resolve_experiments(config, "report fixture")
    results = root / "results"
    for name, fmt in (("alpaca_zh", "alpaca"), ("lccc", "lccc")):
        write_data(results, name, fmt)
    write_eval(results / "eval" / "base" / "tiny-zh" / "alpaca_zh", SAMPLES, 0.15, False)
    write_eval(results / "eval" / "base" / "tiny-zh" / "lccc", DIALOGUE, 0.0, True)
    for name, exp in experiments.items():
        write_experiment(results, name, exp)
    run = {"experiments": experiments, "datasets": config["datasets"],
           "base_models": config["base_models"],
           "report": {"title": "Fixture report", "sample_count": 3}}
    write_json(root / "run.json", run)
    return run


def run_pipeline(root: Path) -> Path:
    """collect_metrics and render_report through their CLIs; returns the results folder."""
    results = root / "results"
    collect_metrics.main(["--config", str(root / "run.json"), "--results", str(results),
                          "--out-dir", str(results / "metrics")])
    render_report.main(["--metrics-dir", str(results / "metrics"), "--results", str(results),
                        "--templates", str(REPO / "reports" / "templates"),
                        "--config", str(root / "run.json"),
                        "--out-dir", str(results / "report")])
    return results

"""A fake but complete results tree, laid out as docs/artifacts.md describes.

`build_results(root)` writes root/results/... and root/run.json (the config snapshot the
collect_metrics and render_report CLIs take: experiments with their `base_eval` directories,
sweeps, datasets) and returns that run dict; `run_pipeline(root)` then runs both CLIs on it.
The numbers follow simple formulas so tests can recompute them: an experiment's quality
decides its answers (a share of each reference's characters) and its per-token test loss
(3 - quality, plus a per-record difficulty shared by all models and a small per-experiment
wiggle). Quality is capped, so rank-study-r16 and rank-study-r32 cannot be told apart;
lr-study-lr1e-05 barely moves from its base.
"""
from __future__ import annotations

import math
import zlib
from pathlib import Path

from workflow_scripts.report import collect_metrics, render_report
from workflow_scripts.common.config import resolve_experiments, validate
from workflow_scripts.common.io_utils import read_json, write_json, write_jsonl
from workflow_scripts.evaluation.text_metrics import compute_text_metrics, sample_scores

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
                               "pretrain": {"datasets": ["alpaca_zh"], "steps": 10}},
                    "other-zh": {"source": "scratch", "architecture": "qwen2", "vocab_size": 500,
                                 "hidden_size": 64, "intermediate_size": 128, "layers": 2,
                                 "heads": 2, "kv_heads": 1, "max_position_embeddings": 128,
                                 "pretrain": {"datasets": ["alpaca_zh"], "steps": 10}}},
    "defaults": {"training": {"learning_rate": 2.0e-3, "logging_steps": 5}},
    "experiments": {"lccc-r8": {"base_model": "tiny-zh", "dataset": "lccc"},
                    "other-r8": {"base_model": "other-zh", "dataset": "alpaca_zh"}},
    "sweeps": {
        "rank-study": {"base": {"base_model": "tiny-zh", "dataset": "alpaca_zh"},
                       "grid": {"lora.r": [4, 8, 16, 32]}},
        "lr-study": {"base": {"base_model": "tiny-zh", "dataset": "alpaca_zh", "lora": {"r": 8}},
                     "grid": {"training.learning_rate": [1.0e-5, 5.0e-4, 1.0e-3]}},
        "method-study": {"base": {"base_model": "tiny-zh", "dataset": "alpaca_zh"},
                         "grid": {"method": ["lora", "qlora"]}},
    },
}
STEPS = 60
TEST_RECORDS = 40
FULL_KEY, NF4_KEY = "full-0123456789", "nf4-0123456789"
SAMPLES = [
    ("a1", "介绍一下北京。", "北京是中国的首都，历史悠久。"),
    ("a2", "用一句话解释机器学习。", "机器学习让计算机从数据中学习规律。"),
    ("a3", "写出 <html> 标签的作用 & 用法", "<html> 是网页的根元素 & 包含全部内容"),
    ("a4", "推荐一本书。", "推荐《红楼梦》，这是一部经典小说。"),
    ("a5", "列出三种水果。", "1. 苹果\n2. 香蕉\n3. 橙子"),
    ("a6", "如何保持健康？", "多运动，早睡早起，饮食均衡。"),
    ("a7", "翻译：Good morning", "早上好"),
    ("a8", "写一句关于春天的诗。", "春风又绿江南岸，明月何时照我还。"),
    ("a9", "解释一下光合作用。", "植物利用阳光把二氧化碳和水变成养分。"),
    ("a10", "给朋友写一句生日祝福。", "祝你生日快乐，天天开心！"),
    ("a11", "什么是人工智能？", "人工智能是让机器模拟人类智能的技术。"),
    ("a12", "如何学好英语？", "多听多说，每天坚持阅读。"),
    ("a13", "描述一下秋天。", "秋天天高气爽，树叶变黄飘落。"),
    ("a14", "为什么要多喝水？", "水帮助身体代谢，保持健康。"),
    ("a15", "推荐一个旅游城市。", "推荐杭州，西湖风景很美。"),
    ("a16", "怎样做番茄炒蛋？", "先炒鸡蛋，再加番茄翻炒，最后调味。"),
]
DIALOGUE = [
    ("l1", "今天天气怎么样", "挺好的，出去走走吧"),
    ("l2", "你吃饭了吗", "吃过了，你呢"),
    ("l3", "周末有什么安排", "打算在家看电影"),
    ("l4", "最近忙什么呢", "忙着准备考试"),
    ("l5", "这部电影好看吗", "还不错，值得一看"),
    ("l6", "晚上一起跑步吧", "好啊，七点见"),
]
BASE_QUALITY = {"alpaca_zh": 0.15, "lccc": 0.0}


def loss_at(step: int, quality: float) -> float:
    """A falling loss curve with a length saw-tooth; higher quality ends lower."""
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


def train_metrics(config: dict, rows: list[dict]) -> dict:
    r = config["lora"]["r"]
    trainable = 2 * 128 * r * 14
    total = 1_000_000 + trainable
    eval_losses = [row["eval_loss"] for row in rows if "eval_loss" in row]
    qlora = config["method"] == "qlora"
    return {"trainable_params": trainable, "total_params": total,
            "trainable_share": trainable / total, "steps": STEPS,
            "wall_time_s": 30.0 + r + (12.0 if qlora else 0.0), "train_tokens": 48_000,
            "tokens_per_s": 48_000 / (30.0 + r),
            "peak_memory_mb": (250.0 if qlora else 360.0) + r * 2,
            "final_loss": [row["loss"] for row in rows if "loss" in row][-1],
            "eval_loss": eval_losses[-1] if eval_losses else None,
            "device": "cpu", "method": config["method"],
            "tokenization": {"record_tokens": {"mean": 30.5, "p50": 28, "p90": 50, "p99": 70,
                                               "max": 90}}}


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
    """Predictions that keep a `quality` share of each reference's characters; the better
    half of the answers (by quality) end with the end-of-turn token."""
    rows = []
    for i, (sample_id, prompt, reference) in enumerate(samples):
        keep = max(1, int(len(reference) * quality))
        prediction = reference[:keep] if quality > 0 else "嗯嗯"
        rows.append({"id": sample_id, "prompt": prompt, "reference": reference,
                     "prediction": prediction, "ended": i < quality * len(samples),
                     "stopped": i < quality * len(samples),
                     "new_tokens": len(prediction), **sample_scores(prediction, reference)})
    return rows


def record_losses(name: str, quality: float, count: int = TEST_RECORDS) -> list[dict]:
    """Per-record loss sums: per-token loss 3 - quality + difficulty + a small wiggle."""
    wiggle = zlib.crc32(name.encode()) % 1000 / 1000
    rows = []
    for i in range(count):
        per_token = 3.0 - quality + 0.4 * math.sin(1.7 * i) + 0.03 * math.sin(i + 7 * wiggle)
        tokens = 10 + (i * 7) % 23
        rows.append({"id": f"r{i:02d}", "loss_sum": per_token * tokens, "n_tokens": tokens})
    return rows


def tool_calls(quality: float, count: int = 28) -> list[dict]:
    """tool_calls.jsonl rows: a `quality` share of the calls parse, name and argue right;
    two call turns per conversation."""
    call = {"name": "get_weather", "arguments": {"city": "北京"}}
    return [{"id": f"t{i // 2}#{i % 2}", "conversation": f"t{i // 2}",
             "prompt": f"北京今天天气怎么样？第{i}问", "reference": [call],
             "prediction": f"<tool_call>{call}</tool_call>" if i < quality * count else "",
             **dict.fromkeys(("tool_valid", "tool_name_correct", "tool_args_exact"),
                             int(i < quality * count))}
            for i in range(count)]


def write_tool_calls(directory: Path, quality: float) -> None:
    """Tool-call scores for an evaluation of a dataset with calls (here: lccc's)."""
    rows = tool_calls(quality)
    write_jsonl(directory / "tool_calls.jsonl", rows)
    metrics = read_json(directory / "metrics.json")
    names = {"tool_valid": "tool_valid_share", "tool_name_correct": "tool_name_accuracy",
             "tool_args_exact": "tool_args_exact"}
    metrics.update({name: sum(r[key] for r in rows) / len(rows) for key, name in names.items()})
    write_json(directory / "metrics.json", metrics)


def write_eval(directory: Path, samples: list, quality: float, dialogue: bool,
               quantization: str | None = None, records: int = TEST_RECORDS) -> None:
    rows = answers(samples, quality)
    metrics = compute_text_metrics([r["prediction"] for r in rows],
                                   [r["reference"] for r in rows], dialogue, per_sample=rows)
    losses = record_losses("/".join(directory.parts[-3:]), quality, records)
    loss = sum(r["loss_sum"] for r in losses) / sum(r["n_tokens"] for r in losses)
    metrics.update({"loss": loss, "perplexity": math.exp(loss),
                    "n_loss_tokens": sum(r["n_tokens"] for r in losses),
                    "n_records": len(losses),
                    "eot_share": sum(r["ended"] for r in rows) / len(rows),
                    "gen_time_per_sample_s": 0.2, "n_samples": len(rows),
                    "stopped_share": sum(r["ended"] for r in rows) / len(rows),
                    "quantization": quantization,
                    "settings_key": NF4_KEY if quantization else FULL_KEY})
    write_jsonl(directory / "predictions.jsonl", rows)
    write_jsonl(directory / "record_losses.jsonl", losses)
    write_json(directory / "metrics.json", metrics)


def write_data(results: Path, name: str, fmt: str) -> None:
    stats = {"dataset": name, "format": fmt, "raw": 120, "kept": 100,
             "rejected": {"empty_response": 12, "duplicate": 8, "too_long": 0},
             "splits": {"train": 90, "valid": 5, "test": 5},
             "lengths": {key: {"mean": 20.5, "p50": 18, "p90": 40, "p99": 60, "max": 80}
                         for key in ("prompt_chars", "response_chars")},
             "turns": {"mean": 1.0, "max": 1}, "share_with_input": 0.25,
             "share_with_history": 0.0, "files": {f"data/raw/{name}.json": "cd" * 32},
             "per_file": {f"data/raw/{name} demo.json": {"raw": 120, "kept": 100,
                                                         "rejected": 20, "split": "hash"}}}
    write_json(results / "data" / name / "stats.json", stats)
    rejects = [{"file": f"data/raw/{name}.json", "index": i, "reason": reason,
                "detail": detail, "record": {"instruction": text, "output": ""}}
               for i, (reason, detail, text) in enumerate([
                   ("empty_response", "output is empty", "你好吗？"),
                   ("duplicate", "same as index 0", "你好吗？"),
                   ("empty_response", "output is empty", "再见")])]
    write_jsonl(results / "data" / name / "rejects.jsonl", rejects)


def quality_of(config: dict) -> float:
    """Higher with rank and learning rate, capped; a learning rate of 1e-5 barely trains."""
    if config["training"]["learning_rate"] < 1e-4:
        return 0.2
    return min(0.75, 0.3 + 0.1 * math.log2(config["lora"]["r"]) +
               (0.05 if config["training"]["learning_rate"] >= 1e-3 else 0.0))


def base_eval(config: dict, quantized: bool) -> str:
    key = NF4_KEY if quantized else FULL_KEY
    return f"results/eval/base/{config['base_model']}/{config['dataset']}/{key}"


def write_experiment(results: Path, name: str, config: dict, evaluated: bool = True) -> None:
    """The adapter's training files and, when `evaluated`, its evaluation directory."""
    quality = quality_of(config)
    rows = trainer_rows(quality, eval_every=20 if config["dataset"] == "alpaca_zh" else None)
    adapter = results / "adapters" / name
    write_jsonl(adapter / "trainer_log.jsonl", rows)
    write_json(adapter / "train_metrics.json", train_metrics(config, rows))
    write_json(adapter / "run_info.json", run_info(config, config["dataset"]))
    if not evaluated:
        return
    dialogue = config["dataset"] == "lccc"
    write_eval(results / "eval" / name, DIALOGUE if dialogue else SAMPLES, quality, dialogue,
               "4bit" if config["method"] == "qlora" else None)
    if dialogue:
        write_tool_calls(results / "eval" / name, quality + 0.2)


def with_base_evals(experiments: dict) -> dict:
    """The snapshot's experiments: each names the base evaluation it is compared with."""
    out = {}
    for name, config in experiments.items():
        qlora = config["method"] == "qlora"
        out[name] = {**config, "base_eval": base_eval(config, qlora)}
        if qlora:
            out[name]["base_eval_unquantized"] = base_eval(config, False)
    return out


def build_results(root: Path) -> dict:
    """Write root/results and root/run.json; return the run dict."""
    config = validate(CONFIG, "report fixture")
    experiments = with_base_evals(resolve_experiments(config, "report fixture"))
    results = root / "results"
    for name, fmt in (("alpaca_zh", "alpaca"), ("lccc", "lccc")):
        write_data(results, name, fmt)
    directories = {c[key] for c in experiments.values()
                   for key in ("base_eval", "base_eval_unquantized") if key in c}
    for directory in sorted(directories):
        dataset = directory.split("/")[4]
        quantized = directory.endswith(NF4_KEY)
        write_eval(root / directory, DIALOGUE if dataset == "lccc" else SAMPLES,
                   BASE_QUALITY[dataset] - (0.05 if quantized else 0.0), dataset == "lccc",
                   "4bit" if quantized else None)
        if dataset == "lccc":
            write_tool_calls(root / directory, BASE_QUALITY[dataset])
    for name, exp in experiments.items():
        write_experiment(results, name, exp)
    run = {"experiments": experiments, "sweeps": config["sweeps"],
           "datasets": config["datasets"], "base_models": config["base_models"],
           "seed": config["seed"], "report": {"title": "Fixture report", "sample_count": 3}}
    write_json(root / "run.json", run)
    return run


SMALL_EXPERIMENT = "small-r8"


def small_run(root: Path, base_model: dict | None = None) -> tuple[dict, dict]:
    """root/results with the data files of alpaca_zh, and the run dict of one experiment
    (SMALL_EXPERIMENT, alpaca_zh on `base_model`, tiny-zh's config by default); nothing
    evaluated yet: returns (run, the experiment's config)."""
    models = {"small": base_model or CONFIG["base_models"]["tiny-zh"]}
    config = validate({**{k: CONFIG[k] for k in ("seed", "datasets", "defaults")},
                       "base_models": models,
                       "experiments": {SMALL_EXPERIMENT: {"base_model": "small",
                                                          "dataset": "alpaca_zh"}}},
                      "small report fixture")
    experiments = with_base_evals(resolve_experiments(config, "small report fixture"))
    write_data(root / "results", "alpaca_zh", "alpaca")
    run = {"experiments": experiments, "sweeps": {}, "datasets": config["datasets"],
           "base_models": models, "seed": config["seed"],
           "report": {"title": "Small report", "sample_count": 3}}
    return run, experiments[SMALL_EXPERIMENT]


def build_small(root: Path, samples: int) -> dict:
    """A run of one experiment whose evaluation, and its base's, scored `samples` generated
    answers and as many test records: what a first try with `evaluation.samples` 1 or 2
    gives. Writes root/run.json; returns the run dict."""
    run, config = small_run(root)
    results = root / "results"
    write_eval(root / config["base_eval"], SAMPLES[:samples], BASE_QUALITY["alpaca_zh"], False,
               records=samples)
    write_experiment(results, SMALL_EXPERIMENT, config, evaluated=False)
    write_eval(results / "eval" / SMALL_EXPERIMENT, SAMPLES[:samples], quality_of(config),
               False, records=samples)
    write_json(root / "run.json", run)
    return run


def run_pipeline(root: Path, resamples: int = 200) -> Path:
    """collect_metrics and render_report through their CLIs; returns the results folder."""
    results = root / "results"
    collect_metrics.main(["--config", str(root / "run.json"), "--results", str(results),
                          "--out-dir", str(results / "metrics"), "--resamples", str(resamples)])
    render_report.main(["--metrics-dir", str(results / "metrics"), "--results", str(results),
                        "--templates", str(REPO / "reports" / "templates"),
                        "--config", str(root / "run.json"),
                        "--out-dir", str(results / "report")])
    return results


def summary_lines(md: str) -> list[str]:
    """The bullet lines of the report's Summary section."""
    section = md.split("## Summary", 1)[1].split("\n## ", 1)[0]
    return [line[2:] for line in section.splitlines() if line.startswith("- ")]


def summary_problems(metrics_dir: Path, md: str) -> list[str]:
    """Where the Markdown report's summary disagrees with the metric tables it was generated
    from (empty when every claim checks out): the best experiment and the runners-up it
    cannot be told apart from per (dataset, base model), per headline metric the count of
    experiments better than their base, and the experiments called noise."""
    import re

    import pandas as pd

    ranking = pd.read_csv(metrics_dir / "ranking.tsv", sep="\t")
    comparison = pd.read_csv(metrics_dir / "comparison.tsv", sep="\t")
    lines, problems = summary_lines(md), []
    for (dataset, model), group in ranking.groupby(["dataset", "base_model"]):
        group = group.sort_values("position")
        best = group.iloc[0]["experiment"]
        start = f"On {dataset} with {model}, the lowest test loss is {best}'s"
        line = next((x for x in lines if x.startswith(start)), None)
        if line is None:
            problems.append(f"no summary line starts with {start!r}")
            continue
        ties = set(group[(group["position"] > 1) & (group["verdict"] != "worse")]["experiment"])
        tail = line.split("cannot be told apart from", 1)[-1] if "cannot be told" in line else ""
        named = set(re.findall(r"([\w.-]+) \([+-]", tail))
        if named != ties:
            problems.append(f"{dataset}/{model}: summary ties {sorted(named)}, "
                            f"table {sorted(ties)}")
        if not ties and len(group) > 1 and "it is the best" not in line:
            problems.append(f"{dataset}/{model}: a clear best is not called best")
    for label, metric in (("test loss", "loss"), ("BLEU-4", "bleu4"), ("ROUGE-L", "rougeL")):
        rows = comparison[(comparison["metric"] == metric) & comparison["verdict"].notna()]
        better = (rows["verdict"] == "better").sum()
        claim = f"{label}: better than the base in {better} of {len(rows)} experiments"
        line = next((x for x in lines if x.startswith(claim)), None)
        if line is None:
            problems.append(f"missing or wrong count: {claim!r}")
            continue
        noise = sorted(rows.loc[rows["verdict"] == "no clear difference", "experiment"])
        if noise and f"no clear difference (noise) in {len(noise)} (" not in line:
            problems.append(f"{label}: the {len(noise)} noisy experiments are not named")
        if any(name not in line for name in noise):
            problems.append(f"{label}: some of {noise} missing from {line!r}")
    return problems

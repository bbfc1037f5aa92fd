"""The whole DAG on tests/configs/smoke.yaml: every rule runs and the report is filled."""
import json
import re

import pytest

from workflow_scripts.common.io_utils import read_json, read_jsonl

pytestmark = pytest.mark.slow

SECTIONS = ["Results", "Studies", "Training", "Data", "Samples", "Metrics", "Environment"]
EXPERIMENTS = ["lccc-qlora", "rank-r2", "rank-r4"]
TOOL_EXPERIMENTS = {"tools-sharegpt": "tools_sharegpt", "tools-openai": "tools_openai"}


def report_md(workflow) -> str:
    return (workflow.workdir / "results/report/training_report.md").read_text(encoding="utf-8")


def test_report_has_every_section_in_order(smoke_run):
    headings = re.findall(r"^## \d+ (\w+)", report_md(smoke_run), flags=re.M)
    assert headings == SECTIONS


def test_summary_claims_match_the_metric_tables(smoke_run):
    from report_fixtures import summary_problems

    md = report_md(smoke_run)
    assert md.index("## Summary") < md.index("## 1 Results")
    assert summary_problems(smoke_run.workdir / "results/metrics", md) == []


def test_report_numbers_come_from_this_run(smoke_run):
    md = report_md(smoke_run)
    results = smoke_run.workdir / "results"
    for name in EXPERIMENTS:
        train = read_json(results / f"adapters/{name}/train_metrics.json")
        row = next(l for l in md.splitlines() if l.startswith(f"| {name} | {train['total_params']}"))
        assert f"| {train['trainable_params']} |" in row
        assert f"| {train['final_loss']:.4g} |" in row
        evaluation = read_json(results / f"eval/{name}/metrics.json")
        assert f"| perplexity | " in md and f"{evaluation['perplexity']:.4g}" in md


def test_html_report_is_self_contained(smoke_run):
    html = (smoke_run.workdir / "results/report/training_report.html").read_text(encoding="utf-8")
    images = re.findall(r'<img[^>]+src="([^"]+)"', html)
    assert len(images) >= 5 and all(src.startswith("data:image/png;base64,") for src in images)
    assert "http://" not in html and "https://" not in html


def test_every_raw_record_is_kept_or_rejected(smoke_run):
    for dataset in ("alpaca_zh", "lccc", *TOOL_EXPERIMENTS.values()):
        folder = smoke_run.workdir / "results/data" / dataset
        stats = read_json(folder / "stats.json")
        kept = sum(1 for split in ("train", "valid", "test") for _ in read_jsonl(folder / f"{split}.jsonl"))
        rejected = sum(1 for _ in read_jsonl(folder / "rejects.jsonl"))
        assert stats["raw"] == kept + rejected == stats["kept"] + sum(stats["rejected"].values())


def test_training_outputs_and_logs(smoke_run):
    results = smoke_run.workdir / "results"
    for name in EXPERIMENTS:
        folder = results / "adapters" / name
        config = read_json(folder / "adapter_config.json")
        assert config["peft_type"] == "LORA" and "lm_head" not in config["target_modules"]
        rows = list(read_jsonl(folder / "trainer_log.jsonl"))
        assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
        assert all(r["elapsed_s"] > 0 and r["memory_mb"] > 0 for r in rows if "loss" in r)
        assert any("eval_loss" in r for r in rows)
        assert list((folder / "tensorboard").rglob("events.out.tfevents.*"))
    assert read_json(results / "adapters/lccc-qlora/train_metrics.json")["method"] == "qlora"
    assert read_json(results / "adapters/rank-r2/adapter_config.json")["r"] == 2


def test_tool_calling_datasets_train_and_evaluate(smoke_run):
    results = smoke_run.workdir / "results"
    for experiment, dataset in TOOL_EXPERIMENTS.items():
        stats = read_json(results / "data" / dataset / "stats.json")
        assert stats["tool_calls"]["records_with_calls"] > 0 and stats["tool_calls"]["calls"] > 0
        assert {"unknown_function", "tool_result_without_call"} <= set(stats["rejected"])
        metrics = read_json(results / "eval" / experiment / "metrics.json")
        rows = list(read_jsonl(results / "eval" / experiment / "tool_calls.jsonl"))
        assert rows and metrics["n_tool_samples"] == len(rows)
        assert metrics["tool_valid_share"] == sum(r["tool_valid"] for r in rows) / len(rows)
        base = read_json(results / "metrics/config.json")["experiments"][experiment]["base_eval"]
        base_ids = [r["id"] for r in read_jsonl(smoke_run.workdir / base / "tool_calls.jsonl")]
        assert base_ids == [r["id"] for r in rows]  # the same call turns on both sides
    assert "tool_valid_share" in (results / "metrics/comparison.tsv").read_text(encoding="utf-8")


def base_eval(workflow, experiment: str) -> str:
    config = read_json(workflow.workdir / "results/metrics/config.json")
    return config["experiments"][experiment]["base_eval"].removeprefix("results/")


def test_predictions_pair_prompt_reference_and_prediction(smoke_run):
    for folder in ["eval/rank-r2", "eval/lccc-qlora", base_eval(smoke_run, "lccc-qlora")]:
        rows = list(read_jsonl(smoke_run.workdir / "results" / folder / "predictions.jsonl"))
        assert len(rows) == 4
        assert all(set(r) >= {"id", "prompt", "reference", "prediction"} for r in rows)
        assert all(r["prompt"] and r["reference"] for r in rows)
        metrics = read_json(smoke_run.workdir / "results" / folder / "metrics.json")
        assert metrics["n_samples"] == 4 and metrics["perplexity"] > 1


def test_run_info_records_config_versions_and_data_hashes(smoke_run):
    info = read_json(smoke_run.workdir / "results/adapters/rank-r4/run_info.json")
    assert info["config"]["experiment"]["lora"]["r"] == 4 and info["seed"] == 7
    assert info["packages"]["torch"].startswith("2.")
    assert all(len(h) == 64 for h in info["data_files"].values())
    assert json.dumps(info)  # plain JSON throughout


def test_snakemake_report_bundles_captioned_tables_and_plots(smoke_run, tmp_path):
    import zipfile

    archive = tmp_path / "report.zip"
    smoke_run.run("--report", str(archive))
    names = zipfile.ZipFile(archive).namelist()
    for expected in ("training_report.html", "experiments.tsv", "training_loss.png"):
        assert any(n.endswith(expected) for n in names), expected


def test_experiments_with_the_same_tokens_share_one_tokenization(smoke_run):
    results = smoke_run.workdir / "results"
    assert len(list(results.glob("tokenized/*/*/manifest.json"))) == 4  # 5 experiments, 4 settings
    used = {}
    for name in EXPERIMENTS + list(TOOL_EXPERIMENTS):
        files = read_json(results / f"adapters/{name}/run_info.json")["data_files"]
        [manifest] = [f for f in files if f.endswith("manifest.json")]
        used[name] = manifest
        stats = read_json(smoke_run.workdir / manifest.replace("manifest.json", "stats.json"))
        assert read_json(results / f"adapters/{name}/train_metrics.json")["tokenization"] == stats["train"]
    assert used["rank-r2"] == used["rank-r4"]  # the rank sweep tokenized once
    assert len(set(used.values())) == 4

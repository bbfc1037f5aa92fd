"""collect_metrics, plots and render_report on a fake results tree (tests/report_fixtures.py)."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from report_fixtures import REPO, build_results, run_pipeline

from workflow_scripts import collect_metrics
from workflow_scripts.collect_metrics import HYPERPARAMETER_KEYS, RANK_KEYS
from workflow_scripts.collect_metrics import groups_differing_only_in
from workflow_scripts.io_utils import read_json, read_jsonl
from workflow_scripts.plots import expected_plots

SECTIONS = ("1 Overview", "2 Environment", "3 Data", "4 Training", "5 Comparison",
            "6 Samples", "7 Findings")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    run = build_results(root)
    results = run_pipeline(root)
    report = results / "report"
    return {"run": run, "results": results,
            "md": (report / "training_report.md").read_text(encoding="utf-8"),
            "html": (report / "training_report.html").read_text(encoding="utf-8")}


def both(built) -> tuple[str, str]:
    return built["md"], built["html"]


def test_tables_follow_the_contract(built):
    metrics, run = built["results"] / "metrics", built["run"]
    names = set(run["experiments"])
    experiments = pd.read_csv(metrics / "experiments.tsv", sep="\t")
    assert set(experiments["experiment"]) == names
    assert (experiments["status"] == "done").all()
    comparison = pd.read_csv(metrics / "comparison.tsv", sep="\t")
    assert len(comparison) == len(names) * len(collect_metrics.EVAL_METRICS)
    log = pd.read_csv(metrics / "training_log.tsv", sep="\t")
    logged = sum(len(list(read_jsonl(built["results"] / "adapters" / n / "trainer_log.jsonl")))
                 for n in names)
    assert len(log) == logged
    stats = pd.read_csv(metrics / "data_stats.tsv", sep="\t").set_index("dataset")
    assert stats.loc["alpaca_zh", "rejected_empty_response"] == 12
    base = pd.read_csv(metrics / "base_metrics.tsv", sep="\t")
    assert set(zip(base["base_model"], base["dataset"])) == {("tiny-zh", "alpaca_zh"),
                                                             ("tiny-zh", "lccc")}
    assert read_json(metrics / "experiments.json") == json.loads(json.dumps(run["experiments"]))


def test_study_groups_are_detected_from_the_configs(built):
    experiments = built["run"]["experiments"]
    assert [sorted(g) for g in groups_differing_only_in(experiments, RANK_KEYS)] == [
        ["rank-study-r16", "rank-study-r4", "rank-study-r8"]]
    assert [sorted(g) for g in groups_differing_only_in(experiments, HYPERPARAMETER_KEYS)] == [
        ["lr-study-lr0.0005", "lr-study-lr0.001", "rank-study-r8"]]


def test_every_section_is_rendered(built):
    for text in both(built):
        for section in SECTIONS:
            assert section in text
        assert "Rank study" in text and "batch x accum" in text
        assert "Fixture report" in text


def test_numbers_come_from_the_files(built):
    results = built["results"]
    tuned = read_json(results / "eval" / "rank-study-r16" / "metrics.json")
    base = read_json(results / "eval" / "base" / "tiny-zh" / "alpaca_zh" / "metrics.json")
    train = read_json(results / "adapters" / "rank-study-r16" / "train_metrics.json")
    info = read_json(results / "adapters" / "rank-study-r16" / "run_info.json")
    change = 100 * (tuned["rougeL"] - base["rougeL"]) / base["rougeL"]
    expected = [format(tuned["bleu4"], ".4g"), format(tuned["rougeL"], ".4g"),
                f"{change:+.1f}%", str(train["trainable_params"]), str(train["total_params"]),
                info["git_commit"], info["hardware"]["cpu"],
                next(iter(info["data_files"].values())),
                "empty response", "n/a"]
    for text in both(built):
        for value in expected:
            assert value in text, value


def test_findings_name_the_best_run_and_the_loss_trend(built):
    for text in both(built):
        assert "alpaca_zh, bleu4: rank-study-r16 has the highest value" in text
        assert "rank-study-r4: training loss was still falling at the end" in text


def test_samples_show_base_and_finetuned_answers_escaped(built):
    md, html = both(built)
    rows = {r["id"]: r for r in read_jsonl(built["results"] / "eval" / "rank-study-r16" /
                                           "predictions.jsonl")}
    assert rows["a1"]["prediction"] in md and rows["a1"]["prediction"] in html
    assert "<html> 是" not in html and "&lt;html&gt; 是网页的根元素" in html
    assert "&lt;html&gt;" in md


def test_html_embeds_every_plot_and_md_links_them(built):
    md, html = both(built)
    plots = expected_plots(built["run"]["experiments"])
    assert set(plots) == {"training_loss", "eval_loss", "base_vs_finetuned", "rank_metrics",
                          "rank_cost"}
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == len(plots)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(src|href)="(https?:|//|plots/)', html)
    for name in plots:
        assert f"(plots/{name}.png)" in md
        assert (built["results"] / "report" / "plots" / f"{name}.png").stat().st_size > 5000


def test_missing_optional_files_render_as_na(tmp_path):
    build_results(tmp_path)
    results = tmp_path / "results"
    (results / "eval" / "rank-study-r4" / "metrics.json").unlink()
    (results / "eval" / "base" / "tiny-zh" / "lccc" / "predictions.jsonl").unlink()
    (results / "adapters" / "lccc-r8" / "run_info.json").unlink()
    run_pipeline(tmp_path)
    experiments = pd.read_csv(results / "metrics" / "experiments.tsv", sep="\t")
    assert experiments.set_index("experiment").loc["rank-study-r4", "status"] == "trained"
    md = (results / "report" / "training_report.md").read_text(encoding="utf-8")
    assert "| rank-study-r4 | tiny-zh | alpaca_zh | lora | 4 | 16 | 0.002 | 60 | trained |" in md
    lccc_samples = md.split("### lccc-r8\n", 2)[-1].split("###")[0]
    assert "_n/a_" in lccc_samples


def test_cli_runs_as_a_module(built, tmp_path):
    results = built["results"]
    out = tmp_path / "report"
    subprocess.run([sys.executable, "-m", "workflow_scripts.render_report",
                    "--metrics-dir", str(results / "metrics"), "--results", str(results),
                    "--templates", str(REPO / "reports" / "templates"),
                    "--config", str(results.parent / "run.json"), "--out-dir", str(out)],
                   check=True, cwd=REPO)
    assert (out / "training_report.html").read_text(encoding="utf-8") == built["html"]


def test_data_stats_add_token_lengths_per_base_model(tmp_path):
    from workflow_scripts.collect_metrics import data_stats
    from workflow_scripts.io_utils import write_json

    write_json(tmp_path / "data/ds/stats.json", {"dataset": "ds", "raw": 3, "kept": 3})
    summary = {"mean": 12.5, "p50": 12, "p90": 20, "p99": 20, "max": 21}
    write_json(tmp_path / "adapters/exp/train_metrics.json",
               {"tokenization": {"record_tokens": summary}})
    experiments = {"exp": {"base_model": "tiny", "dataset": "ds"}}
    row = data_stats({"ds": {}}, tmp_path, experiments).iloc[0]
    assert row["lengths_tokens_tiny_mean"] == 12.5 and row["lengths_tokens_tiny_max"] == 21

"""collect_metrics, plots and render_report on a fake results tree (tests/report_fixtures.py)."""
import json
import math
import re
import subprocess
import sys

import pandas as pd
import pytest
from report_fixtures import REPO, build_results, run_pipeline, summary_lines, summary_problems

from workflow_scripts.report import collect_metrics
from workflow_scripts.common.io_utils import read_json, read_jsonl, write_jsonl
from workflow_scripts.evaluation.bootstrap import ratio_interval
from workflow_scripts.report.plots import expected_plots

SECTIONS = ["1 Results", "2 Studies", "3 Training", "4 Data", "5 Samples", "6 Metrics",
            "7 Environment"]
RESAMPLES = 200


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    run = build_results(root)
    results = run_pipeline(root, resamples=RESAMPLES)
    report = results / "report"
    return {"run": run, "results": results, "metrics": results / "metrics",
            "md": (report / "training_report.md").read_text(encoding="utf-8"),
            "html": (report / "training_report.html").read_text(encoding="utf-8")}


def table(built, name: str) -> pd.DataFrame:
    return pd.read_csv(built["metrics"] / f"{name}.tsv", sep="\t")


def both(built) -> tuple[str, str]:
    return built["md"], built["html"]


def test_tables_follow_the_contract(built):
    names = set(built["run"]["experiments"])
    experiments = table(built, "experiments")
    assert set(experiments["experiment"]) == names and (experiments["status"] == "done").all()
    comparison = table(built, "comparison")
    tool_metrics = {"tool_valid_share", "tool_name_accuracy", "tool_args_exact"}
    general = len(collect_metrics.EVAL_METRICS) - len(tool_metrics)
    assert len(comparison) == len(names) * general + len(tool_metrics)  # lccc-r8 has calls
    assert set(comparison[comparison["experiment"] != "lccc-r8"]["metric"]).isdisjoint(
        tool_metrics)
    log = table(built, "training_log")
    assert len(log) == sum(len(list(read_jsonl(built["results"] / "adapters" / n /
                                               "trainer_log.jsonl"))) for n in names)
    base = table(built, "base_metrics").set_index("base_eval")
    alpaca = "results/eval/base/tiny-zh/alpaca_zh/"
    assert set(base.index) == {alpaca + "full-0123456789", alpaca + "nf4-0123456789",
                               "results/eval/base/tiny-zh/lccc/full-0123456789",
                               "results/eval/base/other-zh/alpaca_zh/full-0123456789"}
    assert base.loc[alpaca + "nf4-0123456789", "used_by"] == "method-study-qlora"
    assert set(table(built, "quantization")["experiment"]) == {"method-study-qlora"}
    studies = table(built, "studies").groupby("study")["kind"].first().to_dict()
    assert studies == {"rank-study": "rank", "lr-study": "hyperparameters",
                       "method-study": "method"}
    assert read_json(built["metrics"] / "experiments.json") == json.loads(
        json.dumps(built["run"]["experiments"]))


def test_every_metric_has_an_interval_around_its_value(built):
    experiments = table(built, "experiments").set_index("experiment")
    for name in experiments.index:
        metrics = read_json(built["results"] / "eval" / name / "metrics.json")
        for metric in ("loss", "bleu4", "rougeL", "sacrebleu", "chrf", "eot_share"):
            column = collect_metrics.column(metric)
            row = experiments.loc[name]
            assert row[column] == pytest.approx(metrics[metric])
            assert row[f"{column}_low"] <= row[column] + 1e-9 <= row[f"{column}_high"] + 2e-9
    # The loss interval resamples test records: recomputed here with the same seed.
    losses = list(read_jsonl(built["results"] / "eval" / "rank-study-r4" / "record_losses.jsonl"))
    expected = ratio_interval([r["loss_sum"] for r in losses], [r["n_tokens"] for r in losses],
                              RESAMPLES, seed=built["run"]["seed"])
    row = experiments.loc["rank-study-r4"]
    assert (row["test_loss_low"], row["test_loss_high"]) == pytest.approx(
        (expected.low, expected.high))


def test_differences_are_paired_and_verdicts_follow_the_interval(built):
    comparison = table(built, "comparison")
    tested = comparison[~comparison["verdict"].isin(["not tested", "too few items"])]
    assert (tested["n_paired"] >= 6).all()
    excludes = (tested["difference_low"] > 0) | (tested["difference_high"] < 0)
    held = excludes & (tested["p_holm"] < 0.05)  # Holm over every comparison of the run
    assert (held == (tested["verdict"] != "no clear difference")).all()
    assert (excludes & ~held).any()  # a marginal interval that Holm does not keep
    noisy = comparison.set_index(["experiment", "metric"]).loc[("lr-study-lr1e-05", "rougeL")]
    assert noisy["verdict"] == "no clear difference"
    assert noisy["difference_low"] < 0 < noisy["difference_high"]
    assert (comparison["n_paired"].dropna() > 0).all()


def test_tool_call_scores_are_compared_per_sample(built):
    rows = table(built, "comparison").set_index(["experiment", "metric"])
    valid = rows.loc[("lccc-r8", "tool_valid_share")]
    assert (valid["base"], valid["finetuned"]) == (0.0, pytest.approx(24 / 28))
    assert valid["n_paired"] == 28 and valid["difference_low"] > 0 and valid["verdict"] == "better"
    stopped = rows.loc[("lccc-r8", "stopped_share")]  # predictions' per-sample flag
    assert stopped["verdict"] != "not tested" and stopped["p_value"] < 0.05
    assert 0 < stopped["difference_low"] < stopped["difference"] < stopped["difference_high"]
    experiments = table(built, "experiments").set_index("experiment")
    assert experiments.loc["lccc-r8", "tool_valid_share_low"] < 24 / 28
    assert math.isnan(experiments.loc["rank-study-r4", "tool_valid_share"])


def test_tool_calls_have_their_own_table_and_samples(built):
    md, html = both(built)
    section = md[md.index("### Tool calls"):md.index("## 2 Studies")]
    row = next(line for line in section.splitlines() if line.startswith("| lccc-r8 |"))
    assert "0% → 86%, +0.857 [+0.643, +1] better" in row
    assert "rank-study-r4" not in section  # no tool calls in its data
    samples = md[md.index("### lccc-r8: tool calls"):]
    assert "| reference | [{&quot;name&quot;" in samples or '| reference | [{"name"' in samples
    assert "| base | (empty answer) |" in samples and "Tool calls" in html


def test_no_percent_change_against_a_near_zero_base(built):
    rows = table(built, "comparison").set_index(["experiment", "metric"])
    zero = rows.loc[("lccc-r8", "sacrebleu")]
    assert zero["base"] == 0 and zero["difference"] > 0 and math.isnan(zero["change_pct"])
    small = rows.loc[("rank-study-r8", "bleu4")]  # the base scores 0.67 of 100
    assert 0 < small["base"] < 5 and math.isnan(small["change_pct"])
    loss = rows.loc[("rank-study-r8", "loss")]
    relative = 100 * (loss["finetuned"] - loss["base"]) / loss["base"]
    assert loss["change_pct"] == pytest.approx(relative)
    for text in both(built):
        assert not re.search(r"[+-]\d{5,}(\.\d)?%", text)  # no +1586031564.7%


def test_rankings_stay_within_dataset_and_base_model(built):
    ranking = table(built, "ranking")
    groups = {k: list(g.sort_values("position")["experiment"])
              for k, g in ranking.groupby(["dataset", "base_model"])}
    assert groups[("alpaca_zh", "other-zh")] == ["other-r8"]
    assert groups[("lccc", "tiny-zh")] == ["lccc-r8"]
    tiny = ranking[ranking["base_model"] == "tiny-zh"].set_index("experiment")
    assert set(groups[("alpaca_zh", "tiny-zh")][:2]) == {"rank-study-r16", "rank-study-r32"}
    runner_up = groups[("alpaca_zh", "tiny-zh")][1]
    assert tiny.loc[runner_up, "verdict"] == "no clear difference"
    assert (tiny.loc[groups[("alpaca_zh", "tiny-zh")][2:], "verdict"] == "worse").all()


def test_summary_claims_match_the_tables(built):
    assert summary_problems(built["metrics"], built["md"]) == []
    lines = summary_lines(built["md"])
    assert any("cannot be told apart from" in line for line in lines)
    # lccc-r8: 6 dialogue samples, too few to survive Holm over the run's comparisons
    assert any("no clear difference (noise) in 2 (lccc-r8 and lr-study-lr1e-05)" in line
               for line in lines)
    assert any(line.startswith("Loading the base model in 4 bits") and "(worse)" in line
               for line in lines)
    trend = next(line for line in lines if line.startswith("Training loss, mean of the last"))
    assert "not tested" in trend and "rank-study-r4 " in trend and "falling" not in trend
    family = next(line for line in lines if "paired comparison" in line)
    n = sum(table(built, t)["p_holm"].notna().sum() for t in ("comparison", "ranking",
                                                              "quantization"))
    assert family.startswith(f"This report makes {n} paired comparisons") and "Holm" in family
    md, html = both(built)
    assert md.index("## Summary") < md.index("## 1 Results")
    assert "11 fine-tuning experiments (10 LoRA and 1 QLoRA) of 2 base models on 2 datasets" in md
    assert html.index('id="summary"') < html.index('id="results"')


def test_summary_notices_a_wrong_claim(built):
    wrong = built["md"].replace("better than the base in 11 of 11",
                                "better than the base in 9 of 11")
    assert summary_problems(built["metrics"], wrong)


def test_every_section_is_rendered_in_order(built):
    md, html = both(built)
    assert re.findall(r"^## (\d \w+)", md, flags=re.M) == SECTIONS
    for text in (md, html):
        for title in ("Rank", "LoRA vs QLoRA", "Hyper-parameter rounds", "Fixture report",
                      "batch x accum", "Cost of loading the base in 4 bits"):
            assert title in text, title


def test_study_tables_show_intervals_and_base_end_of_turn_share(built):
    md = built["md"]
    rank = md.split("**rank-study (varies lora.r)**", 1)[1].split("\n\n", 2)[1]
    rows = [line for line in rank.splitlines() if line.startswith("| rank-study-")]
    assert [row.split(" | ")[1] for row in rows] == ["4", "8", "16", "32"]
    experiments = table(built, "experiments").set_index("experiment")
    r8 = experiments.loc["rank-study-r8"]
    assert f"{r8['bleu4']:.4g} [{r8['bleu4_low']:.4g}, {r8['bleu4_high']:.4g}]" in rows[1]
    assert rows[1].endswith("| 69% (19%) | ")


def test_data_section_is_readable(built):
    md = built["md"]
    data = md.split("## 4 Data", 1)[1].split("## 5 Samples", 1)[0]
    assert "per file" not in data and "too long" not in data
    assert "| rejected: empty response | 12 |" in data and "| rejected: duplicate | 8 |" in data
    order = [data.index(f"| {split} split |") for split in ("train", "valid", "test")]
    assert order == sorted(order)
    assert "| alpaca_zh | record tokens: tiny-zh | 30.5 | 28 | 50 | 70 | 90 |" in data
    examples = data.split("### Rejected records", 1)[1]
    assert examples.count("| alpaca_zh | empty response |") == 1
    assert '{"instruction": "你好吗？", "output": ""}' in examples


def test_samples_show_reference_base_and_finetuned_answers_escaped(built):
    md, html = both(built)
    rows = {r["id"]: r for r in read_jsonl(built["results"] / "eval" / "rank-study-r16" /
                                           "predictions.jsonl")}
    base = {r["id"]: r for r in read_jsonl(built["results"] / "eval" / "base" / "tiny-zh" /
                                           "alpaca_zh" / "full-0123456789" / "predictions.jsonl")}
    assert f"| rank-study-r16 | {rows['a1']['prediction']} |" in md
    assert f"| base | {base['a1']['prediction']} |" in md
    assert f"| reference | {rows['a1']['reference']} |" in md
    assert "<html> 是" not in html and "&lt;html&gt; 是网页的根元素" in html
    assert "&lt;html&gt;" in md


def test_html_embeds_every_plot_and_md_links_them(built):
    md, html = both(built)
    plots = expected_plots(table(built, "studies"))
    assert set(plots) == {"training_loss", "test_loss", "base_vs_finetuned", "rank_metrics",
                          "rank_cost", "method_cost"}
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
    base = results / "eval" / "base" / "tiny-zh" / "lccc" / "full-0123456789"
    (base / "predictions.jsonl").unlink()
    (results / "adapters" / "lccc-r8" / "run_info.json").unlink()
    answers = list(read_jsonl(results / "eval" / "lccc-r8" / "predictions.jsonl"))
    write_jsonl(results / "eval" / "lccc-r8" / "predictions.jsonl",
                [{**answers[0], "prediction": ""}, *answers[1:]])
    run_pipeline(tmp_path, resamples=50)
    experiments = pd.read_csv(results / "metrics" / "experiments.tsv", sep="\t")
    assert experiments.set_index("experiment").loc["rank-study-r4", "status"] == "trained"
    md = (results / "report" / "training_report.md").read_text(encoding="utf-8")
    assert "| rank-study-r4 | 4 | 14336 | 34 | 368 | 0.9297 | n/a | n/a | n/a |" in md
    lccc = md.split("### lccc / tiny-zh", 1)[1]
    assert "| base | n/a |" in lccc and "| lccc-r8 | (empty answer) |" in lccc


def test_cli_runs_as_a_module_and_is_deterministic(built, tmp_path):
    results = built["results"]
    out = tmp_path / "report"
    subprocess.run([sys.executable, "-m", "workflow_scripts.report.render_report",
                    "--metrics-dir", str(results / "metrics"), "--results", str(results),
                    "--templates", str(REPO / "reports" / "templates"),
                    "--config", str(results.parent / "run.json"), "--out-dir", str(out)],
                   check=True, cwd=REPO)
    assert (out / "training_report.html").read_text(encoding="utf-8") == built["html"]


def test_data_stats_add_token_lengths_per_base_model(tmp_path):
    from workflow_scripts.common.io_utils import write_json
    from workflow_scripts.report.collect_metrics import data_stats

    write_json(tmp_path / "data/ds/stats.json", {"dataset": "ds", "raw": 3, "kept": 3})
    summary = {"mean": 12.5, "p50": 12, "p90": 20, "p99": 20, "max": 21}
    write_json(tmp_path / "adapters/exp/train_metrics.json",
               {"tokenization": {"record_tokens": summary}})
    experiments = {"exp": {"base_model": "tiny", "dataset": "ds"}}
    row = data_stats({"ds": {}}, tmp_path, experiments).iloc[0]
    assert row["lengths_tokens_tiny_mean"] == 12.5 and row["lengths_tokens_tiny_max"] == 21


def test_cells_read_naturally():
    from workflow_scripts.report.formatting import fmt_ci, fmt_diff, fmt_pct

    assert fmt_diff(0.0, 0.0, 0.0) == "0 [0, 0]"
    assert fmt_diff(0.00163, -0.00547, 0.0071) == "+0.00163 [-0.00547, +0.0071]"
    assert fmt_diff(1.2e-4, None, None) == "+1.20e-04"
    assert fmt_pct(-0.031) == "-0.03%" and fmt_pct(12.34) == "+12.3%" and fmt_pct(None) == ""
    assert fmt_ci(2.2416, 2.1692, 2.3147) == "2.242 [2.169, 2.315]"
    assert fmt_ci(2.2416, float("nan"), float("nan")) == "2.242"

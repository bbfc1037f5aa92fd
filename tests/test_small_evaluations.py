"""The metric tables and the report of evaluations too small to compare: a first try with
one or two generated samples, a judge whose replies never parse, a small run on a local
model directory. collect_metrics and render_report finish, and the report says what could
not be measured instead of claiming it (report/family.py, evaluation/bootstrap.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from random_chat_models import random_adapter, random_base
from report_fixtures import (SAMPLES, SMALL_EXPERIMENT, build_small, run_pipeline, small_run,
                             summary_lines, write_experiment)

from workflow_scripts.common.io_utils import write_json, write_jsonl
from workflow_scripts.evaluation.evaluate import evaluate

from workflow_scripts.evaluation.bootstrap import MIN_ITEMS, TOO_FEW, UNCLEAR
from workflow_scripts.report import family, sections


def read(results, name: str) -> pd.DataFrame:
    return pd.read_csv(results / "metrics" / f"{name}.tsv", sep="\t")


def test_a_table_without_any_verdict_yet_takes_one():
    # pandas 3 infers float for a column of empty cells and refuses to write words into it
    empty = pd.DataFrame({"verdict": [np.nan], "p_value": [np.nan]})
    claimed = pd.DataFrame({"verdict": ["better", "worse"], "p_value": [0.06, 0.001]})
    tested = family.control({"ranking": empty, "comparison": claimed})
    assert tested["ranking"]["verdict"].isna().all()
    assert list(tested["comparison"]["verdict"]) == [UNCLEAR, "worse"]
    for table in tested.values():
        table.loc[:, "verdict"] = UNCLEAR  # every table takes a verdict, whatever it held


@pytest.mark.parametrize("samples", [1, 2])
def test_a_one_or_two_sample_evaluation_gets_its_report(tmp_path, samples):
    build_small(tmp_path, samples)
    results = run_pipeline(tmp_path)
    ranking = read(results, "ranking")
    assert list(ranking["experiment"]) == [SMALL_EXPERIMENT] and ranking["verdict"].isna().all()
    comparison = read(results, "comparison")
    assert set(comparison["n_paired"]) == {samples}
    # every difference looks certain (one item: zero spread), none is claimed
    assert set(comparison["verdict"]) == {TOO_FEW, "not tested"}
    assert comparison["p_holm"].isna().all()
    md = (results / "report" / "training_report.md").read_text(encoding="utf-8")
    assert f"the lowest test loss is {SMALL_EXPERIMENT}'s" in md
    assert (f"test loss: better than the base in 0 of 1 experiments, not measurable with "
            f"fewer than {MIN_ITEMS} paired items in 1 ({SMALL_EXPERIMENT}).") in summary_lines(md)
    assert any(line.startswith("No difference is tested: ") and
               f"paired fewer than {MIN_ITEMS} items and claim nothing" in line
               for line in summary_lines(md))
    assert "| loss | " in md and f"| {TOO_FEW} |" in md
    assert (results / "report" / "training_report.html").is_file()


def test_a_small_run_on_a_local_model_directory_gets_its_report(tmp_path):
    # a first run with one's own model: a Qwen2 body and its ChatML tokenizer saved to a
    # directory (source: path), an adapter, 8 test records both are really evaluated on
    model_dir = random_base(tmp_path / "my-qwen2", hidden=32, layers=1)
    run, config = small_run(tmp_path, {"source": "path", "path": str(model_dir)})
    adapter = random_adapter(model_dir, tmp_path / "results" / "adapters" / SMALL_EXPERIMENT,
                             seed=1)
    write_experiment(tmp_path / "results", SMALL_EXPERIMENT, config, evaluated=False)
    test_file = tmp_path / "test.jsonl"
    write_jsonl(test_file, [{"id": i, "messages": [{"role": "user", "content": q},
                                                   {"role": "assistant", "content": a}]}
                            for i, q, a in SAMPLES[:8]])
    job = {"evaluation": {k: v for k, v in config["evaluation"].items() if k != "benchmarks"}
           | {"samples": 8, "max_new_tokens": 6, "batch_size": 4},
           "quantization": None, "seed": run["seed"], "dialogue": False,
           "base_model": run["base_models"]["small"]}
    evaluate(job, str(model_dir), None, test_file, tmp_path / config["base_eval"])
    evaluate(job, str(model_dir), str(adapter), test_file,
             tmp_path / "results" / "eval" / SMALL_EXPERIMENT)
    write_json(tmp_path / "run.json", run)
    results = run_pipeline(tmp_path)
    comparison = read(results, "comparison").set_index("metric")
    assert comparison.loc["loss", "n_paired"] == 8 and comparison.loc["bleu4", "n_paired"] == 8
    assert comparison["verdict"].map(type).eq(str).all()  # every row says what it found
    md = (results / "report" / "training_report.md").read_text(encoding="utf-8")
    assert f"**{SMALL_EXPERIMENT} (base: {config['base_eval']})**" in md
    assert "| loss | " in md and (results / "report" / "training_report.html").is_file()


def test_a_runner_up_on_too_few_records_is_not_called_a_tie():
    ranking = pd.DataFrame({"dataset": "d", "base_model": "m", "position": [1, 2, 3],
                            "experiment": ["a", "b", "c"], "test_loss": [1.0, 1.2, 1.5],
                            "difference": [np.nan, 0.2, 0.5],
                            "verdict": [np.nan, TOO_FEW, "worse"]})
    table, = sections.ranking_tables(ranking)
    assert [row[-1] for row in table.rows] == ["lowest", TOO_FEW, "higher"]

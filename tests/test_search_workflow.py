"""A search run end to end through Snakemake (tests/configs/search.yaml): six trials in
rounds of two on the smoke model, the first diverging, one pruned; raising the trials to seven
trains one more, and then to eight one more again (the partly filled round is not asked again);
a finished search has nothing to do."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from workflow_runner import REPO, make_workflow

pytestmark = pytest.mark.slow
CONFIG = REPO / "tests" / "configs" / "search.yaml"


def told(work: Path) -> list[dict]:
    """Every told trial of the search's current study, in order."""
    snapshot = json.loads((work / "results/metrics/config.json").read_text(encoding="utf-8"))
    search = snapshot["searches"]["lr-rank"]
    trials = []
    for r in range(search["rounds"]):
        trials += json.loads((work / search["directory"] / f"told-{r}.json").read_text())["trials"]
    return trials


def told_dir(work: Path) -> str:
    snapshot = json.loads((work / "results/metrics/config.json").read_text(encoding="utf-8"))
    return snapshot["searches"]["lr-rank"]["directory"]


def table_rows(work: Path) -> dict[str, dict]:
    with open(work / "results/metrics/experiments.tsv", encoding="utf-8") as fh:
        return {row["experiment"]: row for row in csv.DictReader(fh, delimiter="\t")}


def test_a_search_runs_in_rounds_and_grows_by_exactly_the_new_trials(tmp_path):
    wf = make_workflow(tmp_path, CONFIG)
    wf.run("--cores", "2")
    trials = told(wf.workdir)
    assert [t["name"] for t in trials] == [f"lr-rank-t{k}" for k in range(6)]
    # the enqueued first trial diverges: failed with its reason, and the search went on
    assert trials[0]["state"] == "failed" and "nan" in trials[0]["reason"]
    # the median of earlier trials' validation losses stops one: its adapter and curve kept
    assert [t["state"] for t in trials] == ["failed"] + ["complete"] * 2 + ["pruned"] + ["complete"] * 2
    pruned = trials[3]
    assert pruned["curve"] == [[2, pruned["value"]]] and "median threshold" in pruned["reason"]
    assert (wf.workdir / "results/adapters/lr-rank-t3/adapter_model.safetensors").is_file()
    assert len({t["params"]["training.learning_rate"] for t in trials}) == 6
    # each trial is an ordinary experiment, with the settings its round gave it
    rows = table_rows(wf.workdir)
    for trial in trials:
        assert float(rows[trial["name"]]["learning_rate"]) == trial["params"]["training.learning_rate"]
        assert int(rows[trial["name"]]["r"]) == trial["params"]["lora.r"]
    assert wf.planned_jobs() == {}
    report = (wf.workdir / "results/report/training_report.md").read_text(encoding="utf-8")
    assert "### Search lr-rank" in report and "importance (fANOVA)" in report
    assert (wf.workdir / "results/report/plots/search-lr-rank.png").is_file()

    # 7 trials: the new round asks for two and trains one
    wf.config.write_text(wf.config.read_text().replace("trials: 6", "trials: 7"))
    planned = wf.planned_jobs()
    assert planned["train_adapter"] == 1 and planned["search_ask"] == 1
    wf.run("--cores", "2")
    round_file = wf.workdir / told_dir(wf.workdir) / "round-3.json"
    asked = round_file.read_bytes()
    # 8 trials: the partly filled round is not asked again, lr-rank-t6 does not retrain
    wf.config.write_text(wf.config.read_text().replace("trials: 7", "trials: 8"))
    planned = wf.planned_jobs()
    assert planned["train_adapter"] == 1 and "search_ask" not in planned
    assert planned["search_tell"] == 1
    wf.run("--cores", "2")
    grown = told(wf.workdir)
    assert grown[:6] == trials and len(grown) == 8
    assert round_file.read_bytes() == asked
    assert wf.planned_jobs() == {}

"""A search run end to end through Snakemake (tests/configs/search.yaml): six trials in
rounds of two on the smoke model, the first diverging, one pruned; the run is killed
(SIGKILL to Snakemake's process group) while round 1's trials train and started again, and
loses or repeats no trial; raising the trials to seven trains one more, and then to eight one
more again (the partly filled round is not asked again); a finished search has nothing to do."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest

from workflow_runner import REPO, Workflow, make_workflow

pytestmark = pytest.mark.slow
CONFIG = REPO / "tests" / "configs" / "search.yaml"


def snapshot(work: Path) -> dict:
    return json.loads((work / "results/metrics/config.json").read_text(encoding="utf-8"))


def told(work: Path) -> list[dict]:
    """Every told trial of the search's current study, in order."""
    search = snapshot(work)["searches"]["lr-rank"]
    trials = []
    for r in range(search["rounds"]):
        trials += json.loads((work / search["directory"] / f"told-{r}.json").read_text())["trials"]
    return trials


def told_dir(work: Path) -> str:
    return snapshot(work)["searches"]["lr-rank"]["directory"]


def table_rows(work: Path) -> dict[str, dict]:
    with open(work / "results/metrics/experiments.tsv", encoding="utf-8") as fh:
        return {row["experiment"]: row for row in csv.DictReader(fh, delimiter="\t")}


def kill_while_training(wf: Workflow, trials: list[str]) -> dict[str, bool]:
    """Run the workflow and SIGKILL Snakemake and its jobs once one of `trials` has started
    training; whether each had finished then."""
    out = wf.workdir.parent / "killed-run.out"
    progress = [wf.workdir / "logs/train_adapter" / f"{t}.progress.jsonl" for t in trials]
    with open(out, "w") as fh:
        proc = subprocess.Popen(wf.command("--cores", "2"), cwd=wf.workdir, env=wf.environment(),
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        while not any(p.is_file() and p.stat().st_size for p in progress):
            assert proc.poll() is None, out.read_text()[-4000:]
            assert time.monotonic() < deadline, "no trial of the round started"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return {t: (wf.workdir / f"results/adapters/{t}/train_metrics.json").is_file() for t in trials}


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> tuple[Workflow, dict[str, bool]]:
    """The search run to its end after a kill while round 1's trials trained: the workflow,
    and which of those trials had finished when it was killed."""
    wf = make_workflow(tmp_path_factory.mktemp("search"), CONFIG)
    finished = kill_while_training(wf, ["lr-rank-t2", "lr-rank-t3"])
    round_dir = next((wf.workdir / "results/search/lr-rank").glob("*/round-1.json")).parent
    assert not (round_dir / "told-1.json").exists()  # the kill landed inside round 1
    wf.run("--unlock")
    planned = wf.planned_jobs("--rerun-incomplete")
    assert planned["train_adapter"] >= 2 - sum(finished.values())
    assert planned["search_ask"] == 1  # round 2's: round 1 is not asked again
    wf.run("--cores", "2", "--rerun-incomplete")
    return wf, finished


def test_a_round_killed_while_its_trials_train_resumes_without_losing_or_repeating_a_trial(searched):
    wf, finished = searched
    assert not all(finished.values())  # at least one of the round's trainings was cut short
    search = snapshot(wf.workdir)["searches"]["lr-rank"]
    study = optuna.load_study(study_name=f"lr-rank-{search['key']}",
                              storage=f"sqlite:///{wf.workdir}/results/search/lr-rank/study.db")
    # each trial number once, each asked for one experiment, none left running
    numbers = [t.number for t in study.trials]
    assert numbers == list(range(len(numbers)))
    names = [t.user_attrs["experiment"] for t in study.trials]
    assert names == [f"lr-rank-t{k}" for k in range(len(names))]
    assert all(t.state.is_finished() for t in study.trials)
    # every trial of the results told once, as the study holds it
    trials = told(wf.workdir)
    assert [t["name"] for t in trials] == search["trials"] == names[:len(search["trials"])]
    states = {optuna.trial.TrialState.COMPLETE: "complete", optuna.trial.TrialState.PRUNED: "pruned",
              optuna.trial.TrialState.FAIL: "failed"}
    for trial, frozen in zip(trials, study.trials):
        assert (trial["number"], trial["state"], trial["value"]) == (
            frozen.number, states[frozen.state], frozen.value)
        assert trial["curve"] == sorted([s, v] for s, v in frozen.intermediate_values.items())


def test_a_search_runs_in_rounds_and_grows_by_exactly_the_new_trials(searched):
    wf, _ = searched  # killed in round 1 and resumed: the same trials as a run never killed
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

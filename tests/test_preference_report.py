"""preference.tsv, its place in the run's Holm family and the report's "Preference tuning"
section, on a small fake results tree (tests/report_fixtures.py) with preference experiments
continuing its SFT experiment."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml
from report_fixtures import (SAMPLES, SMALL_EXPERIMENT, build_small, quality_of, run_pipeline,
                             summary_lines, write_eval, write_experiment)

from workflow_runner import SMOKE_CONFIG, make_workflow

from workflow_scripts.common.io_utils import read_json, write_json, write_jsonl
from workflow_scripts.evaluation.bootstrap import BETTER, FAMILY_ALPHA, UNCLEAR, WORSE
from workflow_scripts.evaluation.preference_eval import (KTO_METRICS, PAIRWISE_METRICS,
                                                         preference_metrics)
from workflow_scripts.report.family import P_HOLM

RESAMPLES = 200
PAIRS = 30
# name: (loss, beta, chosen gain, rejected gain) in nats per pair, before the noise
STUDY = {"dpo-b01": ("dpo", 0.1, 1.0, -2.0), "dpo-b05": ("dpo", 0.5, -0.5, -1.5),
         "ipo-b01": ("ipo", 0.1, 0.0, 0.0)}
KTO = "kto-b01"


def pair_rows(chosen_gain: float, rejected_gain: float, seed: int) -> list[dict]:
    noise = np.random.default_rng(seed).normal(scale=0.5, size=(PAIRS, 2))
    return [{"id": f"p{i}", "chosen_tokens": 8 + i % 5, "rejected_tokens": 12,
             "start_chosen_logp": -20.0 - i % 7, "chosen_logp": -20.0 - i % 7 + chosen_gain + a,
             "start_rejected_logp": -24.0, "rejected_logp": -24.0 + rejected_gain + b}
            for i, (a, b) in enumerate(noise)]


def kto_rows() -> list[dict]:
    return [{"id": f"k{i}", "label": i % 2 == 0, "completion_tokens": 9, "kl_tokens": 9,
             "start_completion_logp": -15.0, "completion_logp": -15.0 + (1.0 if i % 2 == 0 else -1.0)
             + 0.1 * (i % 3), "start_kl_logp": -30.0, "kl_logp": -30.5} for i in range(PAIRS)]


def log_rows(margin: float) -> list[dict]:
    rows = []
    for step in range(5, 41, 5):
        rows.append({"step": step, "epoch": step / 40, "loss": 0.69 - 0.005 * step,
                     "rewards/margins": margin * step / 40, "rewards/accuracies": 0.5 + step / 100,
                     "rewards/chosen": 0.01 * step, "rewards/rejected": -0.01 * step,
                     "logps/chosen": -20.0, "logps/rejected": -24.0})
    rows.append({"step": 40, "epoch": 1.0, "eval_loss": 0.5, "eval_rewards/margins": margin,
                 "eval_rewards/accuracies": 0.8})
    return rows


def add_preference(root, run: dict) -> dict:
    """Preference experiments continuing SMALL_EXPERIMENT: training files, their SFT-shaped
    evaluation, and preference_eval's files."""
    results = root / "results"
    sft = run["experiments"][SMALL_EXPERIMENT]
    specs = {**{n: (loss, beta, pair_rows(c, r, seed=i), "pairwise")
                for i, (n, (loss, beta, c, r)) in enumerate(STUDY.items())},
             KTO: ("kto", 0.1, kto_rows(), "kto")}
    for name, (loss, beta, rows, kind) in specs.items():
        params = {"beta": beta, **({"desirable_weight": 1.0, "undesirable_weight": 1.0}
                                   if kind == "kto" else {"sft_weight": 0.0})}
        config = {**sft, "stage": "preference", "init_from": SMALL_EXPERIMENT,
                  "preference": {"loss": loss, **params}}
        run["experiments"][name] = config
        write_experiment(results, name, config, evaluated=False)
        write_jsonl(results / "adapters" / name / "trainer_log.jsonl", log_rows(beta * 3))
        write_eval(results / "eval" / name, SAMPLES, quality_of(config), False)
        write_jsonl(results / "eval" / name / "preference_pairs.jsonl", rows)
        write_json(results / "eval" / name / "preference.json",
                   {"experiment": name, "start": SMALL_EXPERIMENT, "kind": kind, "loss": loss,
                    "parameters": params, "n": len(rows)})
    write_json(root / "run.json", run)
    return run


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("preference_report")
    run = add_preference(root, build_small(root, samples=8))
    results = run_pipeline(root, resamples=RESAMPLES)
    return {"run": run, "results": results, "metrics": results / "metrics",
            "md": (results / "report" / "training_report.md").read_text(encoding="utf-8"),
            "html": (results / "report" / "training_report.html").read_text(encoding="utf-8")}


def table(built, name: str) -> pd.DataFrame:
    return pd.read_csv(built["metrics"] / f"{name}.tsv", sep="\t")


def test_one_row_per_experiment_and_metric_with_its_settings(built):
    pref = table(built, "preference")
    metrics = pref.groupby("experiment")["metric"].apply(set).to_dict()
    assert metrics == {**{n: set(PAIRWISE_METRICS) for n in STUDY}, KTO: set(KTO_METRICS)}
    assert SMALL_EXPERIMENT not in set(pref["experiment"])
    first = pref.set_index(["experiment", "metric"])
    row = first.loc[("dpo-b05", "reward_margin")]
    assert (row["loss"], row["beta"], row["start"], row["kind"], row["n"]) == (
        "dpo", 0.5, SMALL_EXPERIMENT, "pairwise", PAIRS)
    assert math.isnan(row["gamma"]) and first.loc[(KTO, "reward_margin"), "desirable_weight"] == 1


def test_figures_are_the_evaluation_routine_on_the_pairs_file(built):
    pref = table(built, "preference").set_index(["experiment", "metric"])
    rows = pair_rows(*STUDY["dpo-b01"][2:], seed=0)
    expected = preference_metrics(rows, "pairwise", 0.1, built["run"]["seed"], RESAMPLES)
    for metric, figures in expected.items():
        got = pref.loc[("dpo-b01", metric)]
        assert got["policy"] == pytest.approx(figures["policy"])
        assert got["difference_low"] == pytest.approx(figures["difference_low"])
        assert got["p_value"] == pytest.approx(figures["p_value"])
    # a clear study: beta 0.1 with chosen up and rejected down; ipo-b01 moved nothing
    assert pref.loc[("dpo-b01", "reward_margin"), "verdict"] == BETTER
    assert pref.loc[("dpo-b01", "chosen_logp_per_token"), "verdict"] == "higher"
    assert pref.loc[("dpo-b05", "chosen_logp_per_token"), "verdict"] == "lower"
    assert pref.loc[("ipo-b01", "reward_margin"), "verdict"] == UNCLEAR
    assert pref.loc[(KTO, "undesirable_reward"), "verdict"] == BETTER  # lower is better there


def test_preference_rows_join_the_one_holm_family(built):
    pref = table(built, "preference")
    assert pref[P_HOLM].notna().all()
    assert (pref[P_HOLM] >= pref["p_value"] - 1e-12).all()
    claimed = pref[pref["verdict"].isin([BETTER, WORSE, "higher", "lower"])]
    assert len(claimed) and (claimed[P_HOLM] < FAMILY_ALPHA).all()
    names = ("comparison", "ranking", "quantization", "general_text", "benchmarks",
             "search_vs_grid", "preference")
    tables = [table(built, n) for n in names]
    n = sum(int(t[P_HOLM].notna().sum()) for t in tables if P_HOLM in t)
    # Holm's adjustment over all of them: the smallest p-value is multiplied by n
    p = pd.concat([t["p_value"] for t in tables if "p_value" in t]).dropna()
    smallest = pref.loc[pref["p_value"].idxmin()]
    if smallest["p_value"] == p.min():
        assert smallest[P_HOLM] == pytest.approx(min(1.0, n * smallest["p_value"]))
    line = next(x for x in summary_lines(built["md"]) if "paired comp" in x)
    assert line.startswith(f"This report makes {n} paired comparisons")
    assert "preference experiments against their starting points" in line


def test_the_report_shows_the_section_with_its_plots(built):
    md, html = built["md"], built["html"]
    studies = md.split("## 2 Studies", 1)[1].split("\n## 3 Training", 1)[0]
    assert "### Preference tuning" in studies
    for name in (*STUDY, KTO):
        assert f"| {name} | {SMALL_EXPERIMENT} |" in studies
    assert "| dpo β=0.5 |" in studies and "reward margin" in studies
    plots = built["results"] / "report" / "plots"
    for name in ("preference_study", "preference_training"):
        assert (plots / f"{name}.png").stat().st_size > 5000
        assert f"](plots/{name}.png)" in md
    assert html.count('alt="plots/preference_') == 2 and "<h3>Preference tuning</h3>" in html


def test_training_log_keeps_the_reward_curves(built):
    log = table(built, "training_log")
    rows = log[log["experiment"] == "dpo-b05"]
    assert rows["rewards/margins"].notna().sum() == 8
    assert rows["eval_rewards/accuracies"].dropna().tolist() == [0.8]


def test_without_preference_experiments_there_is_no_section(tmp_path):
    build_small(tmp_path, samples=8)
    results = run_pipeline(tmp_path, resamples=RESAMPLES)
    pref = pd.read_csv(results / "metrics" / "preference.tsv", sep="\t")
    assert pref.empty and "metric" in pref.columns
    md = (results / "report" / "training_report.md").read_text(encoding="utf-8")
    assert "Preference tuning" not in md
    assert not (results / "report" / "plots" / "preference_study.png").exists()


def test_an_experiment_not_evaluated_yet_has_no_rows(tmp_path):
    run = add_preference(tmp_path, build_small(tmp_path, samples=8))
    (tmp_path / "results" / "eval" / "ipo-b01" / "preference.json").unlink()
    results = run_pipeline(tmp_path, resamples=RESAMPLES)
    pref = pd.read_csv(results / "metrics" / "preference.tsv", sep="\t")
    assert "ipo-b01" not in set(pref["experiment"]) and "dpo-b01" in set(pref["experiment"])
    assert read_json(results / "metrics" / "experiments.json").keys() == run["experiments"].keys()


def test_the_report_waits_for_every_preference_evaluation(tmp_path):
    """A beta point and a reference-free loss beside the smoke config's DPO experiment: each
    is evaluated against the same starting-point scores (one reference job), and the tables
    wait for all of them."""
    config = yaml.safe_load(SMOKE_CONFIG.read_text(encoding="utf-8"))
    dpo = config["experiments"]["rank-dpo"]
    config["experiments"]["rank-dpo-b05"] = {**dpo, "preference": {"loss": "dpo", "beta": 0.5}}
    config["experiments"]["rank-simpo"] = {**dpo, "preference": {"loss": "simpo"}}
    workflow = make_workflow(tmp_path)
    workflow.config.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    jobs = workflow.planned_jobs()  # the default target: the report
    assert (jobs["evaluate_preference"], jobs["reference_logps"]) == (3, 1)
    printed = workflow.run("-n", "-p", "results/metrics/preference.tsv").stdout
    starts = {line.split("--start-dir ")[1].split()[0] for line in printed.splitlines()
              if "workflow_scripts.evaluation.preference_eval" in line}
    assert len(starts) == 1 and starts.pop().startswith("results/preference/reference/")

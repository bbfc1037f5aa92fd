"""Hyper-parameter searches (workflow_scripts/search/): the config, the study's ask and tell
across rounds, reproducibility, resuming a killed round, and the pruners' thresholds."""
from __future__ import annotations

import copy
import math

import optuna
import pytest
import yaml

from workflow_scripts.common.config import ConfigError, resolve_experiments, validate
from workflow_scripts.search.plan import plan_searches
from workflow_scripts.search.pruning import stop_rules
from workflow_scripts.search.study import ask_round, open_study, tell_round
from workflow_runner import REPO, SMOKE_CONFIG

SEARCH = {"base": {"base_model": "tiny", "dataset": "alpaca_zh"},
          "space": {"training.learning_rate": {"low": 1.0e-4, "high": 1.0e-1, "log": True},
                    "lora.r": {"low": 2, "high": 16}},
          "trials": 6, "parallel": 2, "sampler": {"startup_trials": 2}}


def plans(search: dict = SEARCH, name: str = "lr"):
    config = yaml.safe_load(SMOKE_CONFIG.read_text(encoding="utf-8"))
    config["searches"] = {name: copy.deepcopy(search)}
    cfg = validate(config, "test.yaml")
    return plan_searches(cfg, resolve_experiments(cfg, "test.yaml"), "test.yaml")


def job(tmp_path, round_: int, search: dict = SEARCH) -> dict:
    return plans(search)["lr"].ask_job(round_) | {"storage": f"sqlite:///{tmp_path}/study.db"}


def loss(params: dict) -> float:
    """A made-up objective: best at a learning rate of 1e-2, a little better with rank."""
    return (math.log10(params["training.learning_rate"]) + 2) ** 2 + 1 / params["lora.r"]


def result(trial: dict, state: str = "complete", value: float | None = None) -> dict:
    value = loss(trial["params"]) if value is None else value
    return {"name": trial["name"], "state": state, "value": value if state == "complete" else None,
            "reason": None, "curve": [[2, value + 1], [4, value]]}


def told_job(tmp_path, round_: int, search: dict = SEARCH) -> dict:
    return plans(search)["lr"].tell_job(round_) | {"storage": f"sqlite:///{tmp_path}/study.db"}


def run_search(tmp_path, search: dict = SEARCH) -> list[dict]:
    """Every round asked and told; the trials trained (those up to `trials`) back."""
    asked = []
    for round_ in range(plans(search)["lr"].rounds):
        trials = ask_round(job(tmp_path, round_, search))
        tell = told_job(tmp_path, round_, search)
        trials = [t for t in trials if t["name"] in tell["trials"]]
        tell_round(tell, [result(t) for t in trials])
        asked += trials
    return asked


def test_trials_are_experiments_named_after_the_search():
    plan = plans()["lr"]
    assert plan.trials == [f"lr-t{k}" for k in range(6)]
    assert plan.rounds == 3 and plan.round_trials(2) == ["lr-t4", "lr-t5"]
    assert plan.base["lora"]["r"] == 4  # the smoke defaults: the searched keys come later


def test_the_key_ignores_the_trial_count_but_not_the_space_or_objective():
    key = plans()["lr"].key
    assert plans(SEARCH | {"trials": 8})["lr"].key == key
    assert plans(SEARCH | {"objective": {"metric": "bleu-4", "direction": "maximize"}})["lr"].key != key
    narrower = copy.deepcopy(SEARCH)
    narrower["space"]["lora.r"]["high"] = 8
    assert plans(narrower)["lr"].key != key


@pytest.mark.parametrize("bad, message", [
    ({"spaec": {}}, "unknown key searches.lr.spaec"),
    ({"space": {"training.max_length": [64, 128]}}, "searches.lr.space"),
    ({"space": {"lora.r": {"low": 0, "high": 4}}}, "searches.lr.space.lora.r: 0"),
    ({"space": {"training.learning_rate": {"low": 0, "high": 1, "log": True}}}, "log scale"),
    ({"pruner": {"name": "hyperband"}}, "searches.lr.pruner.name"),
    ({"enqueue": [{"lora.alpha": 4}]}, "searches.lr.enqueue[0]: lora.alpha is not in the space"),
])
def test_a_bad_search_is_refused_naming_the_key(bad, message):
    with pytest.raises(ConfigError, match=".*" + message.replace("[", r"\[").replace("]", r"\]")):
        plans(SEARCH | bad)


def test_the_same_config_proposes_the_same_trials_in_the_same_order(tmp_path):
    first = run_search(tmp_path / "a")
    second = run_search(tmp_path / "b")
    assert [t["params"] for t in first] == [t["params"] for t in second]
    assert len({t["params"]["training.learning_rate"] for t in first}) == 6
    other_seed = copy.deepcopy(SEARCH)
    other_seed["sampler"] = {"startup_trials": 3}
    assert [t["params"] for t in run_search(tmp_path / "c", other_seed)][3:] != \
        [t["params"] for t in first][3:]


def test_a_round_asked_again_reuses_its_trials(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    whole = ask_round(job(tmp_path / "a", 0))
    # killed after its first trial was asked: the rerun keeps it and asks the second alone
    half = job(tmp_path / "b", 0)
    ask_round(half | {"trials": half["trials"][:1]})
    assert ask_round(half) == whole == ask_round(half)
    study = open_study(half)
    assert [t.number for t in study.trials] == [0, 1]


def test_a_round_told_twice_counts_each_trial_once_and_the_next_round_follows(tmp_path):
    trials = ask_round(job(tmp_path, 0))
    results = [result(trials[0]), result(trials[1], "failed") | {"reason": "loss is nan at step 3"}]
    told = tell_round(job(tmp_path, 0), results)
    assert tell_round(job(tmp_path, 0), results) == told
    assert [t["state"] for t in told] == ["complete", "failed"]
    assert told[1]["reason"] == "loss is nan at step 3"
    nxt = ask_round(job(tmp_path, 1))
    assert [t["number"] for t in nxt] == [2, 3]
    assert len(open_study(job(tmp_path, 1)).trials) == 4


def test_raising_trials_into_a_partly_filled_round_asks_and_trains_only_the_new_trial(tmp_path):
    seven, eight = SEARCH | {"trials": 7}, SEARCH | {"trials": 8}
    first = run_search(tmp_path / "a", seven)
    assert [t["name"] for t in first] == [f"lr-t{k}" for k in range(7)]
    # the last round's ask job, and so its round file, is the same for 7 and 8 trials:
    # Snakemake asks nothing again and trains nothing again for lr-t6
    assert plans(seven)["lr"].ask_job(3) == plans(eight)["lr"].ask_job(3)
    asked_before = ask_round(job(tmp_path / "a", 3, seven))
    assert [t["name"] for t in asked_before] == ["lr-t6", "lr-t7"]
    assert ask_round(job(tmp_path / "a", 3, eight)) == asked_before
    # only the new trial is told; lr-t6's result stays as it was
    assert plans(seven)["lr"].tell_job(3)["trials"] == ["lr-t6"]
    assert plans(eight)["lr"].tell_job(3)["trials"] == ["lr-t6", "lr-t7"]
    t6_before = tell_round(told_job(tmp_path / "a", 3, seven), [result(asked_before[0])])
    told = tell_round(told_job(tmp_path / "a", 3, eight), [result(t) for t in asked_before])
    assert told[0] == t6_before[0] and told[1]["state"] == "complete"
    # and the 8 trials have the settings a search of 8 from the start gives them
    assert [t["params"] for t in run_search(tmp_path / "b", eight)] == \
        [t["params"] for t in first + asked_before[1:]]


def test_a_round_before_the_last_is_told_first(tmp_path):
    ask_round(job(tmp_path, 0))
    with pytest.raises(RuntimeError, match="lr-t0, lr-t1 of an earlier round were never told"):
        ask_round(job(tmp_path, 1))


def test_enqueued_settings_come_first(tmp_path):
    point = {"training.learning_rate": 0.05, "lora.r": 3}
    trials = ask_round(job(tmp_path, 0, SEARCH | {"enqueue": [point]}))
    assert trials[0]["params"] == point and trials[1]["params"] != point


def curve_study(tmp_path, curves: list[dict], states=None) -> optuna.Study:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/p.db", study_name="p")
    for curve, state in zip(curves, states or ["complete"] * len(curves)):
        trial = study.ask()
        for step, value in curve.items():
            trial.report(value, step)
        if state == "complete":
            study.tell(trial, list(curve.values())[-1])
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return study


def test_median_thresholds_come_from_complete_trials_after_warmup(tmp_path):
    study = curve_study(tmp_path, [{2: 3.0, 4: 2.0}, {2: 5.0, 4: 4.0}, {2: 4.0}],
                        ["complete", "complete", "pruned"])
    pruner = {"name": "median", "startup_trials": 2, "warmup_steps": 2}
    assert stop_rules(study, pruner)["thresholds"] == [[4, 3.0]]
    assert stop_rules(study, pruner | {"startup_trials": 3})["thresholds"] == []
    assert stop_rules(study, {"name": "none"})["thresholds"] == []


def test_successive_halving_keeps_the_best_share_at_each_rung(tmp_path):
    curves = [{2: v, 4: v - 1, 8: v - 2} for v in (3.0, 4.0, 5.0, 6.0, 7.0)]
    study = curve_study(tmp_path, curves)
    pruner = {"name": "successive_halving", "min_steps": 2, "reduction_factor": 2}
    # five before it, six with it: the best three go on at step 2, at step 4 and at step 8
    assert stop_rules(study, pruner)["thresholds"] == [[2, 5.0], [4, 4.0], [8, 3.0]]


def test_a_trial_stops_when_its_loss_is_not_finite_or_above_the_threshold():
    from transformers import TrainerControl, TrainerState

    from workflow_scripts.training.stop_rules import StopRules

    rules = {"pruner": "median", "thresholds": [[2, 3.0], [4, 2.0]], "nonfinite": True}
    state = TrainerState(global_step=2, max_steps=6)
    kept = StopRules(rules)
    control = TrainerControl()
    kept.on_evaluate(None, state, control, metrics={"eval_loss": 2.9})
    assert not control.should_training_stop and kept.stopped is None
    state.global_step = 4
    kept.on_evaluate(None, state, control, metrics={"eval_loss": 2.5})  # best 2.5 > 2.0
    assert control.should_training_stop
    assert kept.stopped["state"] == "pruned" and kept.stopped["step"] == 4
    assert "median threshold 2" in kept.stopped["reason"]

    diverged, control = StopRules(rules), TrainerControl()
    diverged.on_log(None, TrainerState(global_step=3, max_steps=6), control,
                    logs={"loss": float("nan")})
    assert control.should_training_stop
    assert diverged.stopped == {"state": "diverged", "step": 3,
                                "reason": "training loss is nan at step 3"}

    last, control = StopRules(rules), TrainerControl()
    last.on_evaluate(None, TrainerState(global_step=4, max_steps=4), control,
                     metrics={"eval_loss": 9.0})  # its last step: complete, not pruned
    assert not control.should_training_stop and last.stopped is None


def test_a_stopped_trial_killed_and_resumed_stops_where_it_would_have():
    from transformers import TrainerControl, TrainerState

    from workflow_scripts.training.stop_rules import StopRules

    rules = {"pruner": "median", "thresholds": [[2, 3.0], [4, 2.2]], "nonfinite": True}
    # the stop's step keeps no checkpoint (save_steps there): a job killed before it wrote
    # its adapter trains up to the stop again instead of resuming past it
    pruned, control = StopRules(rules), TrainerControl(should_save=True)
    pruned.on_evaluate(None, TrainerState(global_step=2, max_steps=6), control,
                       metrics={"eval_loss": 3.5})
    assert control.should_training_stop and not control.should_save
    diverged, control = StopRules(rules), TrainerControl(should_save=True)
    diverged.on_log(None, TrainerState(global_step=3, max_steps=6), control,
                    logs={"loss": float("inf")})
    assert control.should_training_stop and not control.should_save
    kept, control = StopRules(rules), TrainerControl(should_save=True)
    kept.on_evaluate(None, TrainerState(global_step=2, max_steps=6), control,
                     metrics={"eval_loss": 2.9})
    assert control.should_save

    # resumed from the checkpoint at step 2: its best so far is the evaluation before it
    state = TrainerState(global_step=2, max_steps=6,
                         log_history=[{"step": 2, "loss": 3.1}, {"step": 2, "eval_loss": 2.1}])
    resumed, control = StopRules(rules), TrainerControl()
    resumed.on_train_begin(None, state, control)
    state.global_step = 4
    resumed.on_evaluate(None, state, control, metrics={"eval_loss": 2.5})  # best 2.1 <= 2.2
    assert not control.should_training_stop and resumed.stopped is None


def test_the_report_section_shows_history_importance_and_the_best_against_base(tmp_path):
    import pandas as pd

    from workflow_scripts.common.io_utils import write_json
    from workflow_scripts.report.search_section import search_sections

    space = plans()["lr"].spec["space"]
    trials = [{"name": f"lr-t{k}", "state": state, "value": value, "reason": reason,
               "params": {"training.learning_rate": lr, "lora.r": r}, "curve": []}
              for k, (state, value, reason, lr, r) in enumerate([
                  ("failed", None, "validation loss is nan at step 2", 0.09, 2),
                  ("complete", 3.0, None, 1e-3, 4), ("complete", 2.0, None, 1e-2, 8),
                  ("pruned", 3.5, "above the median", 1e-4, 4), ("complete", 2.5, None, 3e-3, 2)])]
    write_json(tmp_path / "results/search/lr/k/told-0.json", {"trials": trials[:3]})
    write_json(tmp_path / "results/search/lr/k/told-1.json", {"trials": trials[3:]})
    run = {"seed": 7, "searches": {"lr": {
        "rounds": 2, "directory": "results/search/lr/k", "space": space, "pruner": "median",
        "objective": {"metric": "eval_loss", "direction": "minimize"}}}}
    comparison = pd.DataFrame([{"experiment": "lr-t2", "metric": "loss", "base": 4.0,
                                "finetuned": 3.0, "difference": -1.0, "difference_low": -1.2,
                                "difference_high": -0.8, "p_holm": 0.001, "verdict": "better"}])
    [section] = search_sections(run, tmp_path / "results", comparison, tmp_path / "plots")
    history, importance, best = section["tables"]
    assert [row[1] for row in history.rows] == ["failed", "complete", "complete", "pruned", "complete"]
    assert [row[3] for row in history.rows] == ["n/a", "3", "2", "2", "2"]  # best so far
    assert history.rows[0][-1] == "validation loss is nan at step 2"
    assert {row[0] for row in importance.rows} == {"training.learning_rate", "lora.r"}
    assert best.title == "Best trial (lr-t2) against its base model"
    assert best.rows == [["loss", "4", "3", "-1 [-1.2, -0.8]", "0.001", "better"]]
    assert "1 pruned, 1 failed" in section["summary"]
    assert (tmp_path / "plots/search-lr.png").stat().st_size > 1000


def test_the_studio_lists_a_searchs_trials_together_with_their_settings(tmp_path):
    from workflow_scripts.common.io_utils import write_json
    from workflow_scripts.studio.catalog import Catalog

    config = tmp_path / "config.yaml"
    config.write_text((REPO / "tests/configs/search.yaml").read_text(encoding="utf-8"))
    catalog = Catalog(config, tmp_path)
    plan = catalog.experiments.plan_of("lr-rank-t0")
    asked = {"name": "lr-rank-t1", "params": {"training.learning_rate": 0.02, "lora.r": 6}}
    write_json(tmp_path / plan.round_file(0), {"trials": [asked | {"name": "lr-rank-t0"}, asked]})
    write_json(tmp_path / "results/adapters/lr-rank-t1/train_metrics.json",
               {"steps": 2, "stop": {"state": "pruned", "step": 2, "reason": "median"}})
    rows = [r for r in catalog.rows() if r.get("search") == "lr-rank"]
    assert [r["experiment"] for r in rows] == [f"lr-rank-t{k}" for k in range(6)]
    t1 = rows[1]
    assert (t1["learning_rate"], t1["r"], t1["trial_stop"]) == (0.02, 6, "pruned")
    assert rows[2]["learning_rate"] == 1.0e-3  # not asked yet: the search's starting point


def write_experiment(results, name: str, eval_loss: float, record_losses: list[float]) -> None:
    """A trained and evaluated experiment: its validation loss and per-record test losses."""
    from workflow_scripts.common.io_utils import write_json, write_jsonl

    write_json(results / "adapters" / name / "train_metrics.json", {"eval_loss": eval_loss})
    write_jsonl(results / "adapters" / name / "trainer_log.jsonl", [{"step": 4, "eval_loss": eval_loss}])
    write_json(results / "eval" / name / "metrics.json",
               {"loss": sum(record_losses) / (10 * len(record_losses))})
    write_jsonl(results / "eval" / name / "record_losses.jsonl",
                [{"id": str(i), "loss_sum": x, "n_tokens": 10} for i, x in enumerate(record_losses)])


def test_the_best_trial_is_paired_with_each_sweeps_best_point_on_its_dataset(tmp_path):
    import pandas as pd

    from workflow_scripts.common.io_utils import write_json
    from workflow_scripts.report import family
    from workflow_scripts.report.collect_metrics import (SEARCH_GRID_COLUMNS, Evaluations,
                                                         search_grid_rows)
    from workflow_scripts.report.search_section import search_sections

    results = tmp_path / "results"
    alpaca, lccc = ({"dataset": d, "base_model": "tiny"} for d in ("alpaca_zh", "lccc"))
    run = {"seed": 7, "experiments": {"lr-t0": alpaca, "lr-t1": alpaca, "rank-r4": alpaca,
                                      "rank-r8": alpaca, "chat-r4": lccc},
           "sweeps": {"rank": {"grid": {"lora.r": [4, 8]}}, "chat": {"grid": {"lora.r": [4]}}},
           "searches": {"lr": {"rounds": 1, "directory": "results/search/lr/k",
                               "objective": {"metric": "eval_loss", "direction": "minimize"},
                               "space": plans()["lr"].spec["space"], "pruner": "median"}}}
    write_json(results / "search/lr/k/told-0.json", {"trials": [
        {"name": f"lr-t{k}", "state": "complete", "value": v, "reason": None, "curve": [],
         "params": {"training.learning_rate": lr, "lora.r": 4}}
        for k, (v, lr) in enumerate([(2.0, 1e-3), (1.5, 1e-2)])]})
    ids = range(60)
    write_experiment(results, "lr-t0", 2.0, [30.0 + i % 7 for i in ids])
    write_experiment(results, "lr-t1", 1.5, [20.0 + i % 5 for i in ids])
    # the sweep's best point by validation loss is r8, though r4 scores better on the test
    write_experiment(results, "rank-r4", 1.8, [21.0 + i % 5 for i in ids])
    write_experiment(results, "rank-r8", 1.6, [25.0 + i % 3 for i in ids])
    write_experiment(results, "chat-r4", 0.1, [1.0 for i in ids])  # another dataset

    rows = search_grid_rows(run, results, Evaluations(tmp_path, 7, 200))
    assert [(r["search"], r["experiment"], r["sweep"], r["grid_experiment"], r["metric"])
            for r in rows] == [("lr", "lr-t1", "rank", "rank-r8", "loss")]
    assert rows[0]["trial"] < rows[0]["grid"] and rows[0]["difference_high"] < 0
    assert rows[0]["verdict"] == "better" and rows[0]["n_paired"] == 60
    # one family with the other comparisons: Holm adjusts over both tables
    other = pd.DataFrame([{"p_value": 0.01, "verdict": "better"}] * 3)
    tested = family.control({"comparison": other,
                             "search_vs_grid": pd.DataFrame(rows, columns=SEARCH_GRID_COLUMNS)})
    assert tested["search_vs_grid"]["p_holm"][0] == pytest.approx(
        min(1.0, 4 * rows[0]["p_value"]))
    [section] = search_sections(run, results, pd.DataFrame(), tmp_path / "plots",
                                tested["search_vs_grid"])
    grid = section["tables"][-1]
    assert grid.title == "Best trial (lr-t1) against the best point of each sweep on its dataset"
    assert [row[:3] for row in grid.rows] == [["rank", "rank-r8", "loss"]]


def test_told_trials_stay_with_their_study_when_a_new_study_retrains_the_names(tmp_path):
    """Telling a round links its trials' files into the study's folder; a trial retrained
    under the same name by a new study (its outputs removed, new files written, as Snakemake
    does) leaves the old study's copy as it was."""
    from workflow_scripts.search.archive import keep_trials

    results = tmp_path / "results"
    adapter = results / "adapters" / "s-t0"
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"old weights")
    (adapter / "train_metrics.json").write_text('{"eval_loss": 1.5}')
    (results / "eval" / "s-t0").mkdir(parents=True)
    (results / "eval" / "s-t0" / "metrics.json").write_text('{"loss": 1.6}')
    old_study = results / "search" / "s" / "aaaaaaaaaa"
    assert keep_trials(["s-t0", "s-t1"], results, old_study) == 3  # s-t1 has no files yet
    for path in list(adapter.iterdir()):  # the new study's training replaces the outputs
        path.unlink()
    (adapter / "adapter_model.safetensors").write_bytes(b"new weights")
    kept = old_study / "trials" / "s-t0"
    assert (kept / "adapters" / "adapter_model.safetensors").read_bytes() == b"old weights"
    assert (kept / "adapters" / "train_metrics.json").read_text() == '{"eval_loss": 1.5}'
    assert (kept / "eval" / "metrics.json").read_text() == '{"loss": 1.6}'

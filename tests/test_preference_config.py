"""Preference experiments in the config: refused before any job when their settings, data or
starting point cannot work (naming the key), and a beta sweep planned with one tokenization
and one reference job for its three trainings."""
from __future__ import annotations

import copy

import pytest
import yaml
from workflow_runner import SMOKE_CONFIG, make_workflow


def smoke_config() -> dict:
    return yaml.safe_load(SMOKE_CONFIG.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    return make_workflow(tmp_path_factory.mktemp("preference_config"))


def write(workflow, config: dict) -> None:
    workflow.config.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")


def test_a_beta_sweep_scores_its_reference_once(workflow):
    config = smoke_config()
    config["sweeps"]["dpo-beta"] = {
        "base": {"stage": "preference", "init_from": "rank-r2", "dataset": "pref_zh"},
        "grid": {"preference.beta": [0.05, 0.1, 0.5]}}
    config["experiments"]["simpo-base"] = {  # reference-free, from the base: no reference read
        "stage": "preference", "base_model": "tiny", "dataset": "pref_zh",
        "preference": {"loss": "simpo"}}
    write(workflow, config)
    jobs = workflow.planned_jobs()
    # the beta sweep and rank-dpo share rank-r2 as reference; simpo-base's start is the base
    assert jobs["train_preference"] == 5
    assert jobs["tokenize_preference"] == 1
    assert jobs["reference_logps"] == 2
    plan = workflow.run("-n", "-p", "results/adapters/dpo-beta-beta0.5/adapter_model.safetensors")
    text = plan.stdout + plan.stderr
    assert text.count("workflow_scripts.training.reference_logps") == 1
    assert "--init-adapter results/adapters/rank-r2" in text


def refusal(edit) -> dict:
    config = smoke_config()
    edit(config["experiments"]["rank-dpo"], config)
    return config


BAD = {
    "a parameter the loss does not take": (
        lambda e, c: e["preference"].update(gamma=0.5),
        "experiments.rank-dpo.preference.gamma: loss 'dpo' takes no 'gamma'"),
    "kto on pairwise data": (
        lambda e, c: e["preference"].update(loss="kto"),
        "experiments.rank-dpo.preference.loss: 'kto' needs unpaired (kto) data"),
    "a start that is not an SFT experiment": (
        lambda e, c: e.update(init_from="tools-openai2"),
        "experiments.rank-dpo.init_from: 'tools-openai2' is not an SFT experiment"),
    "lora settings on a continued adapter": (
        lambda e, c: e.update(lora={"r": 16}),
        "experiments.rank-dpo.lora: continues rank-r2's adapter"),
    "preference settings on an SFT experiment": (
        lambda e, c: c["experiments"]["tools-openai"].update(preference={"loss": "dpo"}),
        "experiments.tools-openai.preference: only for `stage: preference`"),
    "a chat dataset for a preference experiment": (
        lambda e, c: e.update(dataset="alpaca_zh"),
        "experiments.rank-dpo.dataset: 'alpaca_zh' has format 'alpaca', not a preference format"),
    "model answers from a model that is not an SFT experiment": (
        lambda e, c: c["datasets"].update(mine={"format": "pairs_from", "source": "lccc",
                                                "rejected": "model_answer", "model": "rank-dpo"}),
        "datasets.mine.model: 'rank-dpo' is not an SFT experiment"),
    "beta out of range": (
        lambda e, c: e["preference"].update(beta=0),
        "experiments.rank-dpo"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_preference_experiment_is_refused_naming_the_key(case):
    from workflow_scripts.common.config import ConfigError, resolve_experiments, validate
    from workflow_scripts.training.preference_plan import PreferencePlan

    edit, expected = BAD[case]
    with pytest.raises(ConfigError) as refused:
        config = validate(refusal(edit), "smoke.yaml")
        PreferencePlan(resolve_experiments(config, "smoke.yaml"), config, "smoke.yaml")
    assert str(refused.value).startswith("invalid config in smoke.yaml")
    assert expected in str(refused.value)


def test_the_workflow_refuses_it_before_any_job(workflow):
    edit, expected = BAD["a parameter the loss does not take"]
    write(workflow, refusal(edit))
    proc = workflow.run("-n", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"invalid config in {workflow.config}" in output, output[-2000:]
    assert expected in output, output[-2000:]
    assert "Traceback" not in output
    assert not (workflow.workdir / "results").exists()


def test_the_smoke_config_resolves_its_dpo_experiment_from_its_start():
    from workflow_scripts.common.config import resolve_experiments, validate
    from workflow_scripts.training.preference_plan import PreferencePlan

    config = validate(copy.deepcopy(smoke_config()))
    experiments = resolve_experiments(config)
    dpo, start = experiments["rank-dpo"], experiments["rank-r2"]
    assert (dpo["base_model"], dpo["method"], dpo["lora"]) == (start["base_model"], start["method"],
                                                               start["lora"])
    plan = PreferencePlan(experiments, config)
    assert plan.names == ["rank-dpo"]
    assert experiments["rank-dpo"]["preference"] == {"loss": "dpo", "beta": 0.1, "sft_weight": 0.0}
    assert plan.start_dir("rank-dpo") == "results/adapters/rank-r2"
    assert plan.reference_dir("rank-dpo") == plan.start_scores_dir("rank-dpo")

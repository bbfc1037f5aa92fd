"""A search's Optuna study: ask for a round of trials, tell it their results.

Both sides are idempotent, so a round killed anywhere resumes without losing or repeating a
trial: each trial carries its experiment's name as a user attribute, a round asked again
reuses the trials already there, and a trial already told is not told again. Proposals are
reproducible: the sampler of trial k is seeded from the config's seed, the search's name and
k, so the same config and the same results before it give the same settings.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (BaseDistribution, CategoricalDistribution,
                                  FloatDistribution, IntDistribution)
from optuna.trial import TrialState

from workflow_scripts.search.pruning import stop_rules

NAME_ATTR = "experiment"
optuna.logging.set_verbosity(optuna.logging.WARNING)


def distributions(space: dict) -> dict[str, BaseDistribution]:
    """Optuna distributions of a search space (plan.with_range_defaults's form)."""
    out: dict[str, BaseDistribution] = {}
    for key, dim in space.items():
        if isinstance(dim, list):
            out[key] = CategoricalDistribution(dim)
        elif dim["type"] == "int":
            out[key] = IntDistribution(int(dim["low"]), int(dim["high"]), log=dim["log"],
                                       step=int(dim.get("step", 1)))
        else:
            out[key] = FloatDistribution(dim["low"], dim["high"], log=dim["log"],
                                         step=dim.get("step"))
    return out


def trial_seed(seed: int, search: str, number: int) -> int:
    digest = hashlib.sha256(f"{seed}/{search}/{number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def sampler(job: dict, number: int) -> optuna.samplers.BaseSampler:
    spec, seed = job["sampler"], trial_seed(job["seed"], job["search"], number)
    if spec["name"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec["startup_trials"])


def open_study(job: dict, number: int = 0) -> optuna.Study:
    if job["storage"].startswith("sqlite:///"):  # the default: a file beside the results
        Path(job["storage"].removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return optuna.create_study(storage=job["storage"], study_name=job["study"],
                               direction=job["objective"]["direction"], load_if_exists=True,
                               sampler=sampler(job, number))


def by_name(study: optuna.Study) -> dict[str, optuna.trial.FrozenTrial]:
    return {t.user_attrs[NAME_ATTR]: t for t in study.get_trials(deepcopy=False)
            if NAME_ATTR in t.user_attrs}


def ask_round(job: dict) -> list[dict]:
    """The round's trials with their settings and stop rules, asking the study for those it
    does not hold yet."""
    study = open_study(job)
    abandon_unnamed(study)
    known = by_name(study)
    waiting = [t.user_attrs[NAME_ATTR] for t in known.values()
               if t.state == TrialState.RUNNING and t.user_attrs[NAME_ATTR] not in job["trials"]]
    if waiting:
        raise RuntimeError(f"search {job['search']}: trials {', '.join(sorted(waiting))} of an "
                           "earlier round were never told; tell that round first")
    space = distributions(job["space"])
    rules = stop_rules(study, job["pruner"])
    out = []
    for offset, name in enumerate(job["trials"]):
        number = job["first_trial"] + offset
        trial = known.get(name)
        if trial is None:
            trial = ask_one(job, number, name, space)
        params = {k: trial.params[k] for k in job["space"]}
        out.append({"name": name, "number": trial.number, "params": params, "stop": rules})
    return out


def ask_one(job: dict, number: int, name: str, space: dict) -> optuna.trial.FrozenTrial:
    study = open_study(job, number)  # a sampler seeded for this trial
    if number < len(job["enqueue"]):
        study.enqueue_trial(job["enqueue"][number], skip_if_exists=True)
    trial = study.ask(space)
    trial.set_user_attr(NAME_ATTR, name)
    return frozen(study, trial.number)


def frozen(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def abandon_unnamed(study: optuna.Study) -> None:
    """A trial asked by a job killed before it named it: failed, so no sampler counts it."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if NAME_ATTR not in trial.user_attrs:
            study.tell(trial.number, state=TrialState.FAIL)


def tell_round(job: dict, results: list[dict]) -> list[dict]:
    """Tell the study each trial's outcome: {"name", "state" (complete, pruned or failed),
    "value", "reason", "curve": [[step, validation loss], ...]}; the told trials back."""
    study = open_study(job)
    known = by_name(study)
    told = []
    for result in results:
        trial = known.get(result["name"])
        if trial is None:
            raise RuntimeError(f"search {job['search']}: {result['name']} was never asked "
                               f"(study {job['study']} in {job['storage']})")
        if trial.state == TrialState.RUNNING:
            tell_one(study, trial, result)
        told.append(summary(frozen(study, trial.number), job))
    return told


def tell_one(study: optuna.Study, trial: optuna.trial.FrozenTrial, result: dict) -> None:
    live = optuna.trial.Trial(study, trial._trial_id)
    for step, value in result["curve"]:
        if math.isfinite(value) and step not in trial.intermediate_values:
            live.report(value, int(step))
    if result["reason"]:
        live.set_user_attr("reason", result["reason"])
    if result["state"] == "complete":
        study.tell(trial.number, result["value"])
    elif result["state"] == "pruned":
        study.tell(trial.number, state=TrialState.PRUNED)
    else:
        study.tell(trial.number, state=TrialState.FAIL)


def summary(trial: optuna.trial.FrozenTrial, job: dict) -> dict[str, Any]:
    state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
             TrialState.FAIL: "failed"}.get(trial.state, trial.state.name.lower())
    return {"name": trial.user_attrs[NAME_ATTR], "number": trial.number, "state": state,
            "value": trial.value, "reason": trial.user_attrs.get("reason"),
            "params": {k: trial.params[k] for k in job["space"]},
            "curve": sorted([int(s), v] for s, v in trial.intermediate_values.items())}

"""Stop rules for a round's trials from the validation curves of the trials told before it.

Training evaluates at `training.eval_steps`; a trial whose best validation loss so far is
above a threshold at one of these steps stops there (training/train_adapter.py, the job's
`stop` entry), keeps its adapter and curve, and is told as pruned. The thresholds follow
Optuna's pruners, computed once per round from the finished trials, so that a trial's stop
is decided by the round file alone (trials of one round do not prune each other):

- median (MedianPruner): at every eval step after `warmup_steps`, the median of the
  complete trials' validation losses at that step, once `startup_trials` are complete;
- successive_halving (SuccessiveHalvingPruner): at the first eval step at or after each rung
  (min_steps x reduction_factor^r), the loss a trial must reach to be among the best
  1/reduction_factor of the trials that reached the rung, itself included.
"""
from __future__ import annotations

import statistics

import optuna
from optuna.trial import TrialState


def stop_rules(study: optuna.Study, pruner: dict) -> dict:
    """{"pruner", "thresholds": [[step, value], ...], "nonfinite": True}: a non-finite loss
    always stops a trial (it diverged)."""
    name = pruner["name"]
    thresholds: dict[int, float] = {}
    if name == "median":
        thresholds = median_thresholds(study, pruner)
    elif name == "successive_halving":
        thresholds = halving_thresholds(study, pruner)
    return {"pruner": name, "thresholds": sorted([s, v] for s, v in thresholds.items()),
            "nonfinite": True}


def curves(study: optuna.Study, states: tuple) -> list[dict[int, float]]:
    return [dict(t.intermediate_values) for t in study.get_trials(deepcopy=False, states=states)
            if t.intermediate_values]


def median_thresholds(study: optuna.Study, pruner: dict) -> dict[int, float]:
    complete = curves(study, (TrialState.COMPLETE,))
    if len(complete) < max(1, pruner["startup_trials"]):
        return {}
    steps = sorted({s for c in complete for s in c if s > pruner["warmup_steps"]})
    return {s: statistics.median(c[s] for c in complete if s in c) for s in steps}


def halving_thresholds(study: optuna.Study, pruner: dict) -> dict[int, float]:
    reached = curves(study, (TrialState.COMPLETE, TrialState.PRUNED))
    steps = sorted({s for c in reached for s in c})
    factor, out, rung = pruner["reduction_factor"], {}, 0
    while steps:
        target = pruner["min_steps"] * factor ** rung
        at = next((s for s in steps if s >= target), None)
        if at is None:
            break
        values = sorted(c[at] for c in reached if at in c)
        # with this trial's own value among them, the best len//factor go on (at least one)
        keep = max(1, (len(values) + 1) // factor)
        if keep <= len(values):
            out[at] = values[keep - 1]
        steps = [s for s in steps if s > at]
        rung += 1
    return out

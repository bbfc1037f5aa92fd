"""Sweeps as studies: which experiments each sweep expanded to, and what kind of study it is.

A sweep whose grid varies `method` is a LoRA-vs-QLoRA study, one varying `lora.r` a rank
study, any other a round of hyper-parameters. Experiments outside sweeps are in the overall
tables only.
"""
from __future__ import annotations

import itertools

from workflow_scripts.experiment_config import sweep_experiment_name

RANK, METHOD, HYPERPARAMETERS = "rank", "method", "hyperparameters"


def study_kind(grid_keys: list[str]) -> str:
    if "method" in grid_keys:
        return METHOD
    return RANK if "lora.r" in grid_keys else HYPERPARAMETERS


def sweep_members(name: str, grid: dict[str, list]) -> list[str]:
    """The experiment names a sweep's grid expands to, in grid order."""
    keys = list(grid)
    return [sweep_experiment_name(name, dict(zip(keys, values)))
            for values in itertools.product(*(grid[k] for k in keys))]


def study_rows(run: dict) -> list[dict]:
    """One row per (sweep, experiment) for the sweeps of the config snapshot."""
    rows = []
    for name, spec in run.get("sweeps", {}).items():
        grid = spec.get("grid", {})
        kind = study_kind(list(grid))
        for member in sweep_members(name, grid):
            if member in run["experiments"]:
                rows.append({"study": name, "kind": kind, "varies": ", ".join(grid),
                             "experiment": member})
    return rows

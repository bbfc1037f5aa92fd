"""Sweeps as studies: which experiments each sweep expanded to, and what kind of study it is.

A sweep (a grid or listed points) that varies `method` is a LoRA-vs-QLoRA study, one
varying `lora.r` a rank study, any other a round of hyper-parameters. Experiments outside sweeps are in the overall
tables only.
"""
from __future__ import annotations

from workflow_scripts.common.config import sweep_experiment_name, sweep_points

RANK, METHOD, HYPERPARAMETERS = "rank", "method", "hyperparameters"


def study_kind(keys: list[str]) -> str:
    if "method" in keys:
        return METHOD
    return RANK if "lora.r" in keys else HYPERPARAMETERS


def varied_keys(points: list[dict]) -> list[str]:
    """The dotted keys a sweep sets, in order of first appearance."""
    return list(dict.fromkeys(key for point in points for key in point))


def sweep_members(name: str, spec: dict) -> list[str]:
    """The experiment names a sweep (grid or points) expands to, in order."""
    return [sweep_experiment_name(name, point) for point in sweep_points(spec)]


def study_rows(run: dict) -> list[dict]:
    """One row per (sweep, experiment) for the sweeps of the config snapshot."""
    rows = []
    for name, spec in run.get("sweeps", {}).items():
        keys = varied_keys(sweep_points(spec))
        kind = study_kind(keys)
        for member in sweep_members(name, spec):
            if member in run["experiments"]:
                rows.append({"study": name, "kind": kind, "varies": ", ".join(keys),
                             "experiment": member})
    return rows

"""Which experiments a search's best trial is compared with: the best point of each sweep
(grid or listed points) on the same dataset and base model, chosen by the search's own
objective, so that both sides are picked the same way (by the validation loss by default,
never by the test figures they are then compared on). collect_metrics.py pairs them over
the test records, in the run's Holm family (search_vs_grid.tsv)."""
from __future__ import annotations

from pathlib import Path

from workflow_scripts.report.search_section import told_trials
from workflow_scripts.report.studies import sweep_members
from workflow_scripts.search.tell import trial_result


def best(scored: list[tuple[str, float]], direction: str) -> str | None:
    """The name with the best value (the first of equals); None when there is none."""
    if not scored:
        return None
    sign = 1 if direction == "minimize" else -1
    return min(scored, key=lambda pair: sign * pair[1])[0]


def best_trial(search: dict, results: Path) -> str | None:
    """The search's best complete trial, as its told files record them."""
    scored = [(t["name"], t["value"]) for t in told_trials(search, results)
              if t["state"] == "complete"]
    return best(scored, search["objective"]["direction"])


def best_sweep_point(members: list[str], objective: dict, results: Path) -> str | None:
    """The sweep point with the best objective, read as a search trial's is (search/tell.py)."""
    scored = []
    for name in members:
        result = trial_result(name, objective, results)
        if result["state"] == "complete":
            scored.append((name, result["value"]))
    return best(scored, objective["direction"])


def search_grid_pairs(run: dict, results: Path) -> list[dict]:
    """Per search and per sweep on its best trial's dataset and base model:
    {"search", "experiment" (the best trial), "sweep", "grid_experiment"}."""
    pairs, experiments = [], run["experiments"]
    for name, search in run.get("searches", {}).items():
        trial = best_trial(search, results)
        if trial is None:
            continue
        where = {k: experiments[trial][k] for k in ("dataset", "base_model")}
        for sweep, spec in run.get("sweeps", {}).items():
            members = [m for m in sweep_members(sweep, spec) if m in experiments
                       and all(experiments[m][k] == v for k, v in where.items())]
            point = best_sweep_point(members, search["objective"], results)
            if point is not None:
                pairs.append({"search": name, "experiment": trial, "sweep": sweep,
                              "grid_experiment": point})
    return pairs

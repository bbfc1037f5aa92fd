"""The report's search section: for each search, its trials in order with the best so far,
each parameter's importance (Optuna's fANOVA over the complete trials), the objective
against each parameter, and the best trial against its base model and against the best point
of each sweep on its dataset (the paired differences of comparison.tsv and search_vs_grid.tsv,
in the run's Holm family)."""
from __future__ import annotations

import base64
import math
from pathlib import Path

import pandas as pd

from workflow_scripts.common.io_utils import read_json
from workflow_scripts.report.formatting import Table, fmt
from workflow_scripts.search.study import distributions

MARKERS = {"complete": ("o", "tab:blue"), "pruned": ("x", "tab:orange")}
STATES = ("complete", "pruned", "failed")


def told_trials(search: dict, results: Path) -> list[dict]:
    """Every told trial of a search's current study, in the order they were asked."""
    trials = []
    for r in range(search["rounds"]):
        trials += read_json(results.parent / search["directory"] / f"told-{r}.json")["trials"]
    return trials


def with_best_so_far(trials: list[dict], direction: str) -> list[dict]:
    best, out = None, []
    for trial in trials:
        value = trial["value"] if trial["state"] == "complete" else None
        if value is not None and (best is None or (value < best if direction == "minimize"
                                                   else value > best)):
            best = value
        out.append(trial | {"best": best})
    return out


def history_table(trials: list[dict], objective: dict) -> Table:
    keys = list(trials[0]["params"]) if trials else []
    rows = [[t["name"], t["state"], fmt(t["value"]), fmt(t["best"]),
             *[fmt(t["params"][k]) for k in keys], t["reason"] or ""] for t in trials]
    return Table(["trial", "state", objective["metric"], "best so far", *keys, "why it stopped"],
                 rows, "Optimisation history (pruned trials: their last validation loss)")


def importance(trials: list[dict], space: dict, objective: dict, seed: int = 0) -> dict[str, float]:
    """fANOVA importances over the complete trials; {} with fewer than two, or one value."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    complete = [t for t in trials if t["state"] == "complete"]
    if len(complete) < 2 or len({t["value"] for t in complete}) < 2:
        return {}
    dists = distributions(space)
    study = optuna.create_study(direction=objective["direction"])
    study.add_trials([optuna.trial.create_trial(params=t["params"], distributions=dists,
                                                value=t["value"]) for t in complete])
    return get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed))


def importance_table(scores: dict[str, float]) -> Table:
    rows = [[key, fmt(score, 3)] for key, score in sorted(scores.items(), key=lambda kv: -kv[1])]
    return Table(["parameter", "importance (fANOVA)"], rows, "Parameter importance")


def best_against_base(trials: list[dict], comparison: pd.DataFrame) -> Table:
    """`trials` with their best so far (with_best_so_far)."""
    complete = [t for t in trials if t["state"] == "complete"]
    if not complete or comparison.empty:
        return Table([], [], "Best trial against its base model")
    best = next(t["name"] for t in complete if t["value"] == trials[-1]["best"])
    rows = [[r["metric"], fmt(r["base"]), fmt(r["finetuned"]),
             f"{fmt(r['difference'])} [{fmt(r['difference_low'])}, {fmt(r['difference_high'])}]",
             fmt(r.get("p_holm")), r["verdict"]]
            for r in comparison[comparison["experiment"] == best].to_dict("records")]
    return Table(["metric", "base", best, "difference [95% paired interval]", "p (Holm)",
                  "verdict"], rows, f"Best trial ({best}) against its base model")


def best_against_grid(name: str, grid: pd.DataFrame) -> list[Table]:
    """The best trial against the best point of each sweep on its dataset and base model
    (search_vs_grid.tsv); no table where there is none."""
    rows = grid[grid["search"] == name].to_dict("records") if "search" in grid else []
    if not rows:
        return []
    best = rows[0]["experiment"]
    return [Table(["sweep", "its best point", "metric", "point", best,
                   "difference [95% paired interval]", "p (Holm)", "verdict"],
                  [[r["sweep"], r["grid_experiment"], r["metric"], fmt(r["grid"]),
                    fmt(r["trial"]), f"{fmt(r['difference'])} [{fmt(r['difference_low'])}, "
                                     f"{fmt(r['difference_high'])}]",
                    fmt(r.get("p_holm")), r["verdict"]] for r in rows],
                  f"Best trial ({best}) against the best point of each sweep on its dataset")]


def draw(trials: list[dict], search: dict, path: Path) -> None:
    """One figure: the history with the best so far, then the objective against each
    parameter (log axes for log-scale ranges)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(search["space"])
    fig, axes = plt.subplots(1, 1 + len(keys), figsize=(4 * (1 + len(keys)), 3.2), squeeze=False)
    metric = search["objective"]["metric"]
    history = axes[0][0]
    for state, (marker, color) in MARKERS.items():
        shown = [(i, t["value"]) for i, t in enumerate(trials)
                 if t["state"] == state and t["value"] is not None and math.isfinite(t["value"])]
        if shown:
            history.scatter(*zip(*shown), marker=marker, color=color, label=state)
    steps = [(i, t["best"]) for i, t in enumerate(trials) if t["best"] is not None]
    if steps:
        history.step(*zip(*steps), where="post", color="black", label="best so far")
    history.set(xlabel="trial", ylabel=metric, title="history")
    history.legend(fontsize=7)
    for ax, key in zip(axes[0][1:], keys):
        for state, (marker, color) in MARKERS.items():
            shown = [(t["params"][key], t["value"]) for t in trials
                     if t["state"] == state and t["value"] is not None]
            if shown:
                ax.scatter(*zip(*shown), marker=marker, color=color)
        dim = search["space"][key]
        if isinstance(dim, dict) and dim.get("log"):
            ax.set_xscale("log")
        ax.set(xlabel=key, ylabel=metric)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def search_sections(run: dict, results: Path, comparison: pd.DataFrame, plot_dir: Path,
                    grid: pd.DataFrame | None = None) -> list[dict]:
    """One section per search of the config snapshot (results/metrics/config.json);
    `grid`: search_vs_grid.tsv."""
    grid = pd.DataFrame() if grid is None else grid
    out = []
    for name, search in run.get("searches", {}).items():
        trials = with_best_so_far(told_trials(search, results), search["objective"]["direction"])
        scores = importance(trials, search["space"], search["objective"], run.get("seed", 0))
        path = plot_dir / f"search-{name}.png"
        draw(trials, search, path)
        counts = {s: sum(t["state"] == s for t in trials) for s in STATES}
        out.append({
            "name": name,
            "summary": (f"{len(trials)} trials ({counts['complete']} complete, "
                        f"{counts['pruned']} pruned, {counts['failed']} failed), pruner "
                        f"{search['pruner']}, objective {search['objective']['metric']} "
                        f"({search['objective']['direction']})."),
            "tables": [history_table(trials, search["objective"]), importance_table(scores),
                       best_against_base(trials, comparison),
                       *best_against_grid(name, grid)],
            "plot": {"path": f"plots/{path.name}",
                     "caption": "Each trial's objective (pruned: x, at its last validation "
                                "loss; failed trials have none) with the best so far, then the "
                                "objective against each parameter.",
                     "data_uri": "data:image/png;base64,"
                                 + base64.b64encode(path.read_bytes()).decode("ascii")},
        })
    return out

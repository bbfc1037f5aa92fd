"""results/metrics/preference.tsv: every preference experiment against its starting point.

One row per (experiment, metric) of evaluation/preference_eval.py, recomputed from the
experiment's preference_pairs.jsonl with the run's seed and resamples (the figures its
preference.json holds when those are the same), with the experiment's loss, its parameters
and its starting point (the SFT experiment it continued, or "base") repeated on each row.
Each difference carries its paired-bootstrap p-value and joins the run's one family of
comparisons (report/family.py): a verdict stands only where its 95% interval excludes zero
and Holm's correction keeps it. An experiment whose evaluation is missing has no rows.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from workflow_scripts.evaluation.preference_eval import preference_metrics, read_pairs

PARAMETERS = ("beta", "gamma", "label_smoothing", "sft_weight", "desirable_weight",
              "undesirable_weight")
PREFERENCE_COLUMNS = ["experiment", "base_model", "dataset", "start", "loss", *PARAMETERS,
                      "kind", "metric", "n", "start_value", "start_low", "start_high", "policy",
                      "policy_low", "policy_high", "difference", "difference_low",
                      "difference_high", "verdict", "p_value", "p_holm"]


def is_preference(config: dict) -> bool:
    return config.get("stage", "sft") == "preference"


def preference_rows(run: dict, results: Path, seed: int, resamples: int) -> list[dict]:
    rows = []
    for name, config in run["experiments"].items():
        found = read_pairs(results / "eval" / name) if is_preference(config) else None
        if found is None:
            continue
        summary, pairs = found
        beta = summary["parameters"]["beta"]
        settings = {"experiment": name, "base_model": config["base_model"],
                    "dataset": config["dataset"], "start": summary["start"],
                    "loss": summary["loss"], "kind": summary["kind"],
                    **{key: summary["parameters"].get(key) for key in PARAMETERS}}
        for metric, figures in preference_metrics(pairs, summary["kind"], beta, seed,
                                                  resamples).items():
            values = dict(figures)
            values["start_value"] = values.pop("start")  # `start` names the starting point
            rows.append(settings | {"metric": metric} | values)
    return rows


def preference_tables(run: dict, results: Path, seed: int,
                      resamples: int) -> dict[str, pd.DataFrame]:
    """{"preference": table} (no rows without preference experiments), its verdicts still to
    be put through family.control with the run's other comparisons."""
    return {"preference": pd.DataFrame(preference_rows(run, results, seed, resamples),
                                       columns=PREFERENCE_COLUMNS)}

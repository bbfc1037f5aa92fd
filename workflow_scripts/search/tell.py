"""Tell a search's study the results of one round's trials and write what it was told.

A trial that trained to the end is complete with its objective; one stopped by its round's
rules is pruned (its validation curve and adapter kept) or, when its loss stopped being
finite, failed with that reason; an objective that is not a finite number fails it too. The
search goes on either way: only complete trials guide the sampler.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from workflow_scripts.common.cli import parser as cli_parser
from workflow_scripts.common.io_utils import read_json, read_jsonl, write_json
from workflow_scripts.search.archive import keep_trials
from workflow_scripts.search.study import tell_round


def trial_result(name: str, objective: dict, results: Path) -> dict:
    """One trial's outcome from its training (and, for a test-set objective, evaluation)."""
    adapter = results / "adapters" / name
    metrics = read_json(adapter / "train_metrics.json")
    curve = [[row["step"], row["eval_loss"]] for row in read_jsonl(adapter / "trainer_log.jsonl")
             if "eval_loss" in row]
    stop = metrics.get("stop") or {}
    result = {"name": name, "curve": curve, "value": None, "reason": stop.get("reason")}
    if stop.get("state") == "diverged":
        return result | {"state": "failed"}
    if stop.get("state") == "pruned":
        return result | {"state": "pruned"}
    metric = objective["metric"]
    source = metrics if metric == "eval_loss" else read_json(results / "eval" / name / "metrics.json")
    value = source.get(metric)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        where = "train_metrics.json" if metric == "eval_loss" else "metrics.json"
        return result | {"state": "failed",
                         "reason": f"objective {metric} is {value!r} in {name}'s {where}"}
    return result | {"state": "complete", "value": float(value)}


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser(__doc__)
    parser.add_argument("--config", required=True, help="the round's job (SearchPlan.tell_job) as JSON")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--out", required=True, type=Path, help="the told file to write")
    args = parser.parse_args(argv)
    job = json.loads(args.config)
    results = [trial_result(name, job["objective"], args.results) for name in job["trials"]]
    told = tell_round(job, results)
    keep_trials(job["trials"], args.results, args.out.parent)  # kept if a new study retrains them
    write_json(args.out, {"search": job["search"], "key": job["key"], "round": job["round"],
                          "objective": job["objective"], "trials": told})
    for trial in told:
        print(trial["name"], trial["state"], trial["value"], trial["reason"] or "")


if __name__ == "__main__":
    main()

"""The Compare page's data: curves, differing settings, metrics and predictions side by side."""
from __future__ import annotations

import json

from workflow_scripts.studio.catalog import TEXT_METRICS, Catalog, flatten
from workflow_scripts.studio.compare_claims import add_claims
from workflow_scripts.studio.files import read_jsonl_cached
from workflow_scripts.studio.general_view import general_view

COMPARED_FIGURES = ("final_loss", "eval_loss", "test_loss", "perplexity", *TEXT_METRICS,
                    "tokens_per_s", "wall_time_s", "peak_memory_mb")
# Lower is better for these; the rest are higher-is-better or neutral.
LOWER_IS_BETTER = frozenset({"final_loss", "eval_loss", "test_loss", "perplexity",
                             "wall_time_s", "peak_memory_mb"})
IGNORED_PREFIXES = ("resources.",)


def config_diff(catalog: Catalog, names: list[str]) -> list[dict]:
    """The settings whose values are not the same for every experiment."""
    flat = {n: {k: v for k, v in flatten(catalog.experiment(n)).items()
                if not k.startswith(IGNORED_PREFIXES)} for n in names}
    keys = sorted(set().union(*(f.keys() for f in flat.values())))
    rows = []
    for key in keys:
        values = {n: flat[n].get(key) for n in names}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            rows.append({"key": key, "values": values})
    return rows


def _figure(row: dict, name: str):
    return row["metrics"].get(name) if name in TEXT_METRICS else row.get(name)


def metrics_side_by_side(rows: list[dict]) -> list[dict]:
    """Per figure: each experiment's value, its interval, and its difference from the first."""
    out = []
    reference = rows[0]
    for name in COMPARED_FIGURES:
        values = {r["experiment"]: _figure(r, name) for r in rows}
        if all(v is None for v in values.values()):
            continue
        ref = _figure(reference, name)
        diffs = {e: (None if v is None or ref is None else v - ref) for e, v in values.items()}
        intervals = {r["experiment"]: r["intervals"].get(name) for r in rows}
        out.append({"metric": name, "values": values, "diff": diffs, "intervals": intervals,
                    "lower_is_better": name in LOWER_IS_BETTER})
    return out


def predictions_side_by_side(catalog: Catalog, names: list[str], limit: int = 50) -> list[dict]:
    """Test prompts every selected experiment answered, with each one's prediction."""
    by_experiment = {n: {p.get("id"): p for p in read_jsonl_cached(
        catalog.paths(n).eval / "predictions.jsonl")} for n in names}
    ordered_ids: list = []
    for n in names:
        ordered_ids += [i for i in by_experiment[n] if i not in ordered_ids]
    rows = []
    for pid in ordered_ids[:limit]:
        first = next(by_experiment[n][pid] for n in names if pid in by_experiment[n])
        rows.append({"id": pid, "prompt": first.get("prompt"), "reference": first.get("reference"),
                     "predictions": {n: by_experiment[n].get(pid, {}).get("prediction")
                                     for n in names}})
    return rows


def comparison(catalog: Catalog, names: list[str]) -> dict:
    rows = [catalog.row(n) for n in names]
    return {
        "experiments": names,
        "curves": {n: catalog.curves(n) for n in names},
        "config_diff": config_diff(catalog, names),
        "metrics": add_claims(catalog.workdir, metrics_side_by_side(rows), rows),  # verdicts
        "predictions": predictions_side_by_side(catalog, names),
        **general_view(catalog.workdir, names),  # forgetting and benchmarks, from the report's tables
        "rows": rows,
    }

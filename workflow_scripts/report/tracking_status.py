"""The report's Environment rows for experiment tracking, read from track_experiment's
receipts (results/tracking/experiments/*.json): where each backend logged, and every
warning (a missing package, an unreachable server) by experiment."""
from __future__ import annotations

from pathlib import Path

from workflow_scripts.common.io_utils import read_json


def tracking_rows(receipts: list[Path]) -> list[list[str]]:
    """[field, value] rows: one per backend, saying where runs went and what went wrong."""
    backends: dict[str, dict] = {}
    for path in receipts:
        if not Path(path).is_file():
            continue
        receipt = read_json(path)
        for backend, entry in receipt.get("backends", {}).items():
            seen = backends.setdefault(backend, {"where": [], "logged": [], "warnings": {}})
            where = entry.get("tracking_uri") or entry.get("project")
            if where and where not in seen["where"]:
                seen["where"].append(where)
            if entry.get("run_id"):
                seen["logged"].append(receipt["experiment"])
            if entry.get("warning"):
                seen["warnings"].setdefault(entry["warning"], []).append(receipt["experiment"])
    rows = []
    for backend, seen in sorted(backends.items()):
        where = f" ({', '.join(seen['where'])})" if seen["where"] else ""
        rows.append([f"tracking.{backend}",
                     f"{len(seen['logged'])} of {len(receipts)} experiments logged{where}"])
        rows.extend([f"tracking.{backend} warning", f"{', '.join(names)}: {text}"]
                    for text, names in seen["warnings"].items())
    return rows

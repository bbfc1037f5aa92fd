"""The Data page: a dataset's cleaning table, split sizes, rejects, and text search."""
from __future__ import annotations

import json
from pathlib import Path

from workflow_scripts.studio.files import read_json_cached, read_jsonl_tolerant


def dataset_summary(name: str, spec: dict, data_dir: Path) -> dict:
    """Format, files, the cleaning table (reason -> count) and records per split."""
    stats = read_json_cached(data_dir / "stats.json")
    return {
        "dataset": name,
        "format": spec.get("format"),
        "prepared": bool(stats),
        "raw": stats.get("raw"),
        "kept": stats.get("kept"),
        "rejected": stats.get("rejected", {}),
        "splits": stats.get("splits", {}),
        "per_file": stats.get("per_file", {}),
        "cleaning": stats.get("cleaning", {}),
        "lengths": stats.get("lengths", {}),
    }


def _record_text(record: dict) -> str:
    messages = record.get("messages")
    if isinstance(messages, list):
        return "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    return json.dumps(record.get("record", record), ensure_ascii=False)


def reject_row(row: dict) -> dict:
    return {"file": row.get("file"), "index": row.get("index"), "reason": row.get("reason"),
            "detail": row.get("detail"),
            "text": json.dumps(row.get("record"), ensure_ascii=False)[:2000]}


def search(data_dir: Path, query: str, where: str, limit: int) -> dict:
    """Rejects or records of one split whose text contains `query` (case-insensitive);
    an empty query lists the first `limit`. `where` is "rejects" or a split name."""
    needle = query.casefold()
    path = data_dir / ("rejects.jsonl" if where == "rejects" else f"{where}.jsonl")
    found, scanned = [], 0
    for row in read_jsonl_tolerant(path):
        scanned += 1
        text = _record_text(row) if where != "rejects" else json.dumps(row, ensure_ascii=False)
        if needle and needle not in text.casefold():
            continue
        if where == "rejects":
            found.append(reject_row(row))
        else:
            found.append({"id": row.get("id"), "source": row.get("source"),
                          "messages": row.get("messages")})
        if len(found) >= limit:
            break
    return {"where": where, "query": query, "rows": found, "scanned": scanned,
            "truncated": len(found) >= limit}

"""Read-only access to the workflow's files, tolerant of files being written right now.

Every reader returns an empty value for a file a job has not written (yet), and JSON files
are parsed once per change (keyed by modification time and size), so a page over hundreds
of experiments stats its files instead of re-parsing them.
"""
from __future__ import annotations

import codecs
import csv
import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

_CACHE: dict[tuple[Path, str], tuple[tuple[int, int], Any]] = {}
_CACHE_LOCK = threading.Lock()


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _cached(path: Path, kind: str, parse: Callable[[Path], Any], empty: Any) -> Any:
    """`parse(path)`, reused until the file's modification time or size changes; `empty`
    when the file is missing or cannot be parsed (yet)."""
    signature = _signature(path)
    if signature is None:
        return empty
    with _CACHE_LOCK:
        hit = _CACHE.get((path, kind))
    if hit and hit[0] == signature:
        return hit[1]
    try:
        value = parse(path)
    except (OSError, ValueError, csv.Error):
        return empty
    with _CACHE_LOCK:
        _CACHE[(path, kind)] = (signature, value)
    return value


def read_json_cached(path: Path) -> Any:
    """The parsed file, or {} if it is missing or half-written."""
    return _cached(path, "json", lambda p: json.loads(p.read_text(encoding="utf-8")), {})


def read_jsonl_tolerant(path: Path, limit: int | None = None) -> Iterator[dict]:
    """Rows of a JSON Lines file; a line being appended (not yet complete) is skipped."""
    try:
        fh = open(path, encoding="utf-8")
    except OSError:
        return
    with fh:
        for count, line in enumerate(fh):
            if limit is not None and count >= limit:
                return
            if not line.endswith("\n") or not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                yield row


def read_jsonl_cached(path: Path) -> list[dict]:
    """All complete rows of a JSON Lines file."""
    return _cached(path, "jsonl", lambda p: list(read_jsonl_tolerant(p)), [])


def _tsv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def read_tsv_cached(path: Path) -> list[dict[str, str]]:
    """The rows of a tab-separated table with a header line."""
    return _cached(path, "tsv", _tsv_rows, [])


def modified_ago(path: Path, now: float) -> float | None:
    """Seconds since `path` last changed, or None if it does not exist."""
    try:
        return now - path.stat().st_mtime
    except OSError:
        return None


def read_tail(path: Path, max_bytes: int) -> tuple[str, int]:
    """The last `max_bytes` of a text file (decoded leniently) and the file's size."""
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - max_bytes))
        data = fh.read()
    return data.decode("utf-8", errors="replace"), size


def read_from(path: Path, offset: int, max_bytes: int) -> tuple[str, int]:
    """Text appended to `path` since byte `offset`, and the new offset (0 after truncation)."""
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size < offset:
            offset = 0
        fh.seek(offset)
        data = fh.read(max_bytes)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = decoder.decode(data, final=False)  # holds back a character cut at the end
    pending = len(decoder.getstate()[0])
    return text, offset + len(data) - pending

"""A base model's identity for the tracker: a hub model's pinned revision, or the sha256 of
every file of a local model, cached per model while the files' sizes and times are unchanged
(hashing a 15 GB model once, not once per experiment)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from workflow_scripts.common.io_utils import file_sha256, read_json, write_json


def file_stamps(model_dir: Path) -> dict[str, list[int]]:
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(model_dir).parts))
    return {str(p.relative_to(model_dir)): [p.stat().st_size, p.stat().st_mtime_ns] for p in files}


def model_hash(spec: dict, model_dir: Path, cache: Path) -> str:
    """`hub:<id>@<revision>`, or `sha256:<digest over each file's name and sha256>`."""
    if spec.get("source") == "hub":
        return f"hub:{spec['id']}@{spec['revision']}"
    stamps = file_stamps(model_dir)
    if cache.is_file():
        cached = read_json(cache)
        if cached.get("files") == stamps:
            return cached["hash"]
    digest = hashlib.sha256()
    for name in stamps:
        digest.update(f"{name}:{file_sha256(model_dir / name)}\n".encode())
    value = f"sha256:{digest.hexdigest()}"
    try:  # parallel tracking jobs of one model may write the cache at once; it is only a cache
        write_json(cache, {"files": stamps, "hash": value})
    except OSError:
        pass
    return value

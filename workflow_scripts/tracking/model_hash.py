"""A base model's identity for the tracker: a hub model's pinned revision, or one sha256 over
every file of a local model. Each file's digest comes from the models stage's locked digest
cache (`models.content_hash`), so a 15 GB model is hashed once, not once per experiment, and
parallel tracking jobs of one model wait for the first one's hashing."""
from __future__ import annotations

import hashlib
from pathlib import Path

from workflow_scripts.models.content_hash import model_file_hashes


def model_hash(spec: dict, model_dir: Path, cache_dir: Path) -> str:
    """`hub:<id>@<revision>`, or `sha256:<digest over each file's name and sha256>`."""
    if spec.get("source") == "hub":
        return f"hub:{spec['id']}@{spec['revision']}"
    digest = hashlib.sha256()
    for name, sha in model_file_hashes(model_dir, cache_dir):
        digest.update(f"{name}:{sha}\n".encode())
    return f"sha256:{digest.hexdigest()}"

"""Deterministic train/valid/test assignment.

A record's split depends only on its normalized-content digest and the seed, never on its
position, so appending records never moves existing ones, and duplicates (removed before
splitting, and equal in digest anyway) cannot land in two splits. Datasets that ship their
own splits (files given as a mapping) keep them.
"""
from __future__ import annotations

import hashlib
from typing import Any

SPLITS = ("train", "valid", "test")
# Pre-split files are read evaluation splits first: a record found in test and train keeps
# its place in test, and the train copy is rejected as a duplicate (no leakage).
PRESPLIT_ORDER = ("test", "valid", "train")


def record_id(normalized_digest: bytes) -> str:
    """The record id written to the splits: 16 hex digits of the normalized-content hash."""
    return normalized_digest[:8].hex()


class HashSplitter:
    """Maps a digest to a split: a seeded hash, read as a number in [0, 1)."""

    def __init__(self, valid: float = 0.05, test: float = 0.05, seed: int = 42):
        if min(valid, test) < 0 or valid + test >= 1:
            raise ValueError(f"split: valid ({valid}) and test ({test}) must be >= 0 "
                             "and leave a share for train")
        # The seed is hashed as a prefix of the digest; copying the hasher that has
        # absorbed it is cheaper than a new one. Big-endian bytes of equal length order
        # as the numbers they spell, so the thresholds are compared as bytes.
        self._seeded = hashlib.blake2b(seed.to_bytes(8, "big", signed=True), digest_size=8)
        self._test = int(test * 2**64).to_bytes(8, "big")
        self._valid = int((test + valid) * 2**64).to_bytes(8, "big")

    def __call__(self, normalized_digest: bytes) -> str:
        hasher = self._seeded.copy()
        hasher.update(normalized_digest)
        point = hasher.digest()
        return "test" if point < self._test else "valid" if point < self._valid else "train"


def file_plan(files: list[str] | dict[str, Any]) -> list[tuple[str, str | None]]:
    """(path, fixed split or None) in reading order; None means split by hash."""
    if isinstance(files, list):
        plan = [(path, None) for path in files]
    elif isinstance(files, dict):
        unknown = sorted(set(files) - set(SPLITS))
        if unknown or "train" not in files:
            raise ValueError(f"files: a mapping needs train and may have valid, test; "
                             f"got {', '.join(map(str, files))}")
        plan = [(path, split) for split in PRESPLIT_ORDER
                for path in _as_list(files.get(split, []))]
    else:
        raise ValueError(f"files: expected a list or a train/valid/test mapping, got {files!r}")
    paths = [path for path, _ in plan]
    repeated = sorted({p for p in paths if paths.count(p) > 1})
    if repeated:
        raise ValueError(f"files: listed twice: {', '.join(repeated)}")
    if not plan:
        raise ValueError("files: empty")
    return plan


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)

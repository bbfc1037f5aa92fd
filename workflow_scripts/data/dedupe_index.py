"""The memory of deduplication at corpus scale: every kept record's 128-bit normalized digest
with where it first occurred, in 32 bytes a record.

A dict of digest bytes to a tuple costs about 250 bytes a record in Python objects (2.5 GB
for 10M dialogues). Here the digests live in numpy arrays: sorted runs whose sizes halve from
the first to the last, like a binary counter; a batch is looked up in every run with
`searchsorted` and its new digests become a run that is merged with the runs no larger than
twice its size. Each record is merged O(log n) times, so a corpus costs O(n log n), all of it
vectorized per batch.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Run(NamedTuple):
    """Digests sorted by (hi, lo) with, at the same positions, their first occurrence."""

    hi: np.ndarray  # uint64: digest bytes 0-7
    lo: np.ndarray  # uint64: digest bytes 8-15
    exact: np.ndarray  # int64: the exact-content hash, to tell the two duplicate kinds apart
    file: np.ndarray  # int32: the number of the file in `DigestIndex.files`
    index: np.ndarray  # int64: the record's index in that file


def _sorted_run(parts: list[Run]) -> Run:
    columns = [np.concatenate(column) for column in zip(*parts)]
    order = np.lexsort((columns[1], columns[0]))
    return Run(*(column[order] for column in columns))


class Match(NamedTuple):
    """Per looked-up digest: whether it is in the index, and its first occurrence if so."""

    found: np.ndarray
    exact: np.ndarray
    file: np.ndarray
    index: np.ndarray


class DigestIndex:
    """A set of 128-bit digests with their first occurrence; digests are added in batches."""

    def __init__(self) -> None:
        self.files: list[str] = []
        self._runs: list[Run] = []

    def __len__(self) -> int:
        return sum(len(run.hi) for run in self._runs)

    def file_number(self, path: str) -> int:
        if path not in self.files:
            self.files.append(path)
        return self.files.index(path)

    def lookup(self, hi: np.ndarray, lo: np.ndarray) -> Match:
        match = Match(np.zeros(len(hi), bool), np.zeros(len(hi), np.int64),
                      np.zeros(len(hi), np.int32), np.zeros(len(hi), np.int64))
        for run in self._runs:
            left = np.searchsorted(run.hi, hi, "left")
            right = np.searchsorted(run.hi, hi, "right")
            single = np.flatnonzero(right - left == 1)
            single = single[run.lo[left[single]] == lo[single]]
            self._set(match, single, run, left[single])
            for k in np.flatnonzero(right - left > 1):  # rare: digests sharing a first half
                hits = left[k] + np.flatnonzero(run.lo[left[k]:right[k]] == lo[k])
                self._set(match, np.array([k]), run, hits[:1])
        return match

    @staticmethod
    def _set(match: Match, queries: np.ndarray, run: Run, at: np.ndarray) -> None:
        if len(at):
            match.found[queries] = True
            match.exact[queries] = run.exact[at]
            match.file[queries] = run.file[at]
            match.index[queries] = run.index[at]

    def add(self, run: Run) -> None:
        """Digests that are not in the index yet (each once)."""
        if not len(run.hi):
            return
        parts = [run]
        while self._runs and len(self._runs[-1].hi) <= 2 * sum(len(p.hi) for p in parts):
            parts.append(self._runs.pop())
        self._runs.append(_sorted_run(parts))


def digest_halves(digests: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """16-byte digests as two uint64 columns."""
    pairs = np.frombuffer(b"".join(digests), dtype=np.uint64).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]


def first_in_batch(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """For each position, the position of the first one in the batch with the same digest."""
    n = len(hi)
    positions = np.arange(n)
    order = np.lexsort((positions, lo, hi))
    sorted_hi, sorted_lo = hi[order], lo[order]
    starts = np.ones(n, bool)
    starts[1:] = (sorted_hi[1:] != sorted_hi[:-1]) | (sorted_lo[1:] != sorted_lo[:-1])
    group_start = np.maximum.accumulate(np.where(starts, positions, 0))
    first = np.empty(n, np.int64)
    first[order] = order[group_start]
    return first

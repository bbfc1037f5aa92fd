"""Preference pairs built offline from a chat dataset's prepared splits (`format: pairs_from`).

Each record of a prepared split (results/data/<source>/<split>.jsonl) becomes one pair: its
prompt (every message before the last), its own reference answer as `chosen`, and another
record's answer from the same split as `rejected`. The other record is picked by a seeded
hash of the record's id, so the pairs are the same on every run and on any machine, an
answer is never paired with itself nor with an identical answer (after NFKC and whitespace
collapsing), and train, valid and test stay disjoint.

`PairsReader` reads a split as the text of these pairs, TRL preference records in JSON
Lines, so prepare_dataset cleans, dedupes and writes them as it does a file's records; a
record's index is its line in the split. Memory: 8 bytes a record (the line offsets).
"""
from __future__ import annotations

import hashlib
import json
from array import array
from typing import Any

from workflow_scripts.data.cleaning import normalize_text
from workflow_scripts.data.formats import DataError

MAX_TRIES = 64  # other records looked at before a record is left with no different answer
_encode = json.JSONEncoder(ensure_ascii=False, check_circular=False).encode


class PairsReader:
    """A prepared split read as pair records, with TextReader's interface (read, eof,
    sha256 of the split file's bytes, close)."""

    def __init__(self, path: str, seed: int, answers: str | None = None):
        """`answers`: a model's answers to this split's prompts (answer_prompts' file, one
        {"id", "answer"} per record in the split's order), the rejected answers instead of
        other records' (`rejected: model_answer`)."""
        self.path = path
        self.sha256 = hashlib.sha256()
        self._seed = hashlib.blake2b(seed.to_bytes(8, "big", signed=True), digest_size=8)
        self._file, self._offsets = _open_lines(path, self.sha256)
        self._lookup = open(path, "rb")
        self._answers = None
        if answers is not None:
            self._answers, answer_offsets = _open_lines(answers, self.sha256)
            if len(answer_offsets) != len(self._offsets):
                raise DataError(f"{answers}: {len(answer_offsets)} answers for the "
                                f"{len(self._offsets)} records of {path}; answer them again")
        self._next = 0
        self.eof = not self._offsets

    def __len__(self) -> int:
        return len(self._offsets)

    def read(self, size: int) -> str:
        """The pair lines of the next records, about `size` characters of them."""
        lines, used = [], 0
        while self._next < len(self._offsets) and used < size:
            line = _encode(self.pair(self._next)) + "\n"
            lines.append(line)
            used += len(line)
            self._next += 1
        self.eof = self._next >= len(self._offsets)
        return "".join(lines)

    def pair(self, index: int) -> dict[str, Any]:
        """Record `index` of the split as a TRL preference record; `rejected_from` is the
        index of the record whose answer is `rejected` (null when every other answer looked
        at was the same as this one, which cleaning then rejects as identical_answers)."""
        record = self._record(index)
        messages = record["messages"]
        chosen = messages[-1]["content"]
        if self._answers is not None:
            other, rejected = None, self._model_answer(index, record["id"])
        else:
            other = self._other(index, record["id"], chosen)
            rejected = chosen if other is None else self._record(other)["messages"][-1]["content"]
        prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected,
                "rejected_from": other, "id": record["id"]}

    def _record(self, index: int) -> dict:
        self._lookup.seek(self._offsets[index])
        line = self._lookup.readline()
        try:
            record = json.loads(line)
            if isinstance(record["messages"][-1]["content"], str):
                return record
        except (ValueError, KeyError, IndexError, TypeError):
            pass
        raise DataError(f"{self.path}: line {index + 1} is not a prepared chat record "
                        "(id, messages); prepare its dataset again")

    def _other(self, index: int, record_id: str, answer: str) -> int | None:
        """Another record's index whose answer differs from `answer`: a seeded start among
        the other records, then the next ones in turn."""
        count = len(self._offsets)
        if count < 2:
            return None
        hasher = self._seed.copy()
        hasher.update(record_id.encode())
        start = int.from_bytes(hasher.digest(), "big")
        wanted = normalize_text(answer)
        for step in range(min(count - 1, MAX_TRIES)):
            other = (index + 1 + (start + step) % (count - 1)) % count
            text = self._record(other)["messages"][-1]["content"]
            if text != answer and normalize_text(text) != wanted:
                return other
        return None

    def _model_answer(self, index: int, record_id: str) -> str:
        """The model's answer to record `index`, read in step with the records."""
        line = self._answers.readline()
        try:
            row = json.loads(line)
            if row["id"] == record_id and isinstance(row["answer"], str):
                return row["answer"]
        except (ValueError, KeyError, TypeError):
            pass
        raise DataError(f"{self._answers.name}: line {index + 1} is not the answer to record "
                        f"{record_id!r} of {self.path}; answer its prompts again")

    def close(self) -> None:
        self._file.close()
        self._lookup.close()
        if self._answers is not None:
            self._answers.close()


def _open_lines(path: str, sha256) -> tuple[Any, array]:
    """An open file, rewound, and the byte offset of each non-blank line; its bytes hashed."""
    offsets = array("q")
    try:
        handle = open(path, "rb")
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    position = 0
    for line in handle:
        sha256.update(line)
        if line.strip():
            offsets.append(position)
        position += len(line)
    handle.seek(0)
    return handle, offsets

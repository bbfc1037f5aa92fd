"""Hash-based splits are stable, seeded and honour the configured shares."""
from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from workflow_scripts.data.split import HashSplitter, file_plan, record_id


def digest(i: int) -> bytes:
    return hashlib.blake2b(str(i).encode(), digest_size=16).digest()


def test_a_record_always_gets_the_same_split():
    first, again = HashSplitter(0.1, 0.1, seed=42), HashSplitter(0.1, 0.1, seed=42)
    assert [first(digest(i)) for i in range(500)] == [again(digest(i)) for i in range(500)]


def test_the_seed_changes_the_assignment():
    a, b = HashSplitter(0.2, 0.2, seed=1), HashSplitter(0.2, 0.2, seed=2)
    assert [a(digest(i)) for i in range(200)] != [b(digest(i)) for i in range(200)]


def test_shares_are_respected():
    counts = Counter(HashSplitter(0.05, 0.1, seed=7)(digest(i)) for i in range(20000))
    assert abs(counts["valid"] / 20000 - 0.05) < 0.01
    assert abs(counts["test"] / 20000 - 0.1) < 0.01
    assert counts["train"] + counts["valid"] + counts["test"] == 20000


def test_zero_shares_put_everything_in_train():
    assert {HashSplitter(0, 0)(digest(i)) for i in range(300)} == {"train"}


@pytest.mark.parametrize("valid, test", [(-0.1, 0.1), (0.5, 0.5), (0.9, 0.2)])
def test_impossible_shares_are_refused(valid, test):
    with pytest.raises(ValueError, match="split"):
        HashSplitter(valid, test)


def test_record_id_is_a_prefix_of_the_digest():
    assert record_id(bytes(range(16))) == "0001020304050607"


def test_file_list_is_split_by_hash():
    assert file_plan(["a.json", "b.json"]) == [("a.json", None), ("b.json", None)]


def test_presplit_files_are_read_evaluation_splits_first():
    plan = file_plan({"train": ["t1", "t2"], "valid": "v", "test": "e"})
    assert plan == [("e", "test"), ("v", "valid"), ("t1", "train"), ("t2", "train")]


@pytest.mark.parametrize("files, message", [
    ({"valid": "v"}, "needs train"),
    ({"train": "t", "dev": "d"}, "needs train"),
    (["a", "a"], "listed twice: a"),
    ([], "empty"),
    ("a.json", "expected a list"),
])
def test_bad_file_specs_are_refused(files, message):
    with pytest.raises(ValueError, match=message):
        file_plan(files)

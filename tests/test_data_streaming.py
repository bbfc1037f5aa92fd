"""Preparation in bounded memory: a file read in small blocks (records crossing every block
end, records longer than the carried tail) gives the bytes of one pass over the whole file,
and the compact dedupe index finds exactly the duplicates a dict of digests finds."""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest

from test_data_parallel import CLEANING, alpaca_rows, write
from workflow_scripts.data import prepare_dataset
from workflow_scripts.data.cleaning import Deduplicator
from workflow_scripts.data.formats import DataError
from workflow_scripts.data.prepare_dataset import OUTPUT_FILES, Lengths, prepare, summarize


def run(out: Path, spec: dict, monkeypatch, block: int, tail: int, span: int,
        workers: int = 1) -> dict[str, bytes]:
    monkeypatch.setattr(prepare_dataset, "BLOCK_BYTES", block)
    monkeypatch.setattr(prepare_dataset, "TAIL_CHARS", tail)
    monkeypatch.setattr(prepare_dataset, "SPAN_CHARS", span)
    prepare("demo", spec, CLEANING, {"valid": 0.1, "test": 0.1}, 42, out, workers)
    return {name: (out / name).read_bytes() for name in [*OUTPUT_FILES.values(), "stats.json"]}


def lccc_dialogs(n: int) -> list:
    rng = random.Random(1)
    trap = '好 , [ "x" , [ 啊'  # inside a string: a wrong span start for arrays of arrays
    return [[" ".join(f"你好{rng.randint(0, n // 3)}"), " ".join(f"很好{i % 7}"),
             trap if i % 50 == 0 else "谢 谢"] for i in range(n)]


LONG = {"instruction": "长", "output": "很长的回答。" * 400}  # longer than the small tail


@pytest.mark.parametrize("layout", ["array", "indented", "lines", "lccc array", "lccc lines"])
@pytest.mark.parametrize("workers", [1, 2])
def test_small_blocks_give_the_whole_file_bytes(layout, workers, tmp_path, monkeypatch):
    if layout.startswith("lccc"):
        path = write(tmp_path / "lccc.json", lccc_dialogs(600), layout == "lccc lines")
        spec = {"format": "lccc", "files": [path]}
    else:
        rows = alpaca_rows(500)
        rows[250:250] = [LONG]
        path = write(tmp_path / "rows.json", rows, layout == "lines",
                     2 if layout == "indented" else None)
        (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + Path(path).read_bytes())
        spec = {"format": "alpaca", "files": [path, str(tmp_path / "bom.json")]}
    whole = run(tmp_path / "whole", spec, monkeypatch, 1 << 30, 1 << 20, 1 << 30)
    blocks = run(tmp_path / "blocks", spec, monkeypatch, 997, 300, 400, workers)
    assert blocks == whole
    stats = json.loads(whole["stats.json"])
    assert stats["rejected"]["duplicate_exact"] + stats["rejected"]["duplicate_normalized"] > 0
    assert stats["files"][path] == hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("damage", ["late record", "bad utf-8"])
def test_a_broken_file_read_in_blocks_fails_as_in_one_pass(damage, tmp_path, monkeypatch):
    text = json.dumps(alpaca_rows(300), ensure_ascii=False)
    broken = ((text[:-200] + "}}" + text[-200:]).encode() if damage == "late record"
              else text[:-200].encode() + b"\xff" + text[-200:].encode())
    (tmp_path / "broken.json").write_bytes(broken)
    spec = {"format": "alpaca", "files": [str(tmp_path / "broken.json")]}
    errors = []
    for block in (1 << 30, 1000):
        with pytest.raises(DataError) as err:
            run(tmp_path / f"out{block}", spec, monkeypatch, block, 300, 400)
        errors.append(str(err.value))
        assert not (tmp_path / f"out{block}" / "train.jsonl").exists()
    assert errors[0] == errors[1]
    assert ("invalid JSON at line 1" if damage == "late record" else "not valid UTF-8") \
        in errors[0]


def test_length_counts_summarize_as_the_sorted_list():
    rng = random.Random(0)
    for n in (1, 2, 7, 100, 1001):
        values = [rng.choice([1, 2, 3, 50, 4096]) + rng.randint(0, 3) for _ in range(n)]
        lengths = Lengths()
        lengths.extend(values)
        ordered = sorted(values)
        rank = lambda q: ordered[max(0, -(-int(q * 1000) * n // 1000) - 1)]  # noqa: E731
        assert summarize(lengths) == {"mean": round(sum(values) / n, 2), "p50": rank(0.5),
                                      "p90": rank(0.9), "p99": rank(0.99), "max": max(values)}


def test_compact_dedupe_index_agrees_with_a_dict(monkeypatch):
    """Random batches with repeats inside a batch and across batches, and digests that
    share their first 8 bytes (the index's search key) but differ after."""
    rng = random.Random(3)
    pool = [rng.randbytes(16) for _ in range(3000)]
    pool += [pool[i][:8] + rng.randbytes(8) for i in range(0, 3000, 50)]  # shared halves
    dedupe, seen = Deduplicator(), {}
    index = 0
    for batch in range(40):
        digests = [rng.choice(pool) for _ in range(rng.randint(0, 300))]
        exact = [hash(d[:2]) for d in digests]
        file = f"f{batch % 3}"
        indexes = list(range(index, index + len(digests)))
        index += len(digests)
        expected = {}
        for k, (digest, e, i) in enumerate(zip(digests, exact, indexes)):
            if digest in seen:
                first = seen[digest]
                expected[k] = ("duplicate_exact" if first[0] == e else "duplicate_normalized",
                               f"same content as {first[1]} record {first[2]}")
            else:
                seen[digest] = (e, file, i)
        assert dedupe.check_all(exact, digests, file, indexes) == expected
    assert len(dedupe._index) == len(seen)
    assert dedupe._index._runs and all(
        np.all(np.diff(run.hi.astype(np.float64)) >= 0) for run in dedupe._index._runs)

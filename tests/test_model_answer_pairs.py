"""`pairs_from` with `rejected: model_answer`: a model's own answers to a split's prompts (one
per record, in order) are the rejected answers; a stale or misaligned answers file is refused
naming the file and line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from random_chat_models import random_base

from workflow_scripts.data.formats import DataError
from workflow_scripts.data.pairs_from import PairsReader

RECORDS = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"你好{i}"},
                                        {"role": "assistant", "content": f"回答{i}"}]}
           for i in range(5)]


def write_lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read_pairs(reader: PairsReader) -> list[dict]:
    text = ""
    while not reader.eof:
        text += reader.read(1 << 16)
    reader.close()
    return [json.loads(line) for line in text.splitlines()]


def test_the_model_answers_are_the_rejected_answers_in_order(tmp_path):
    split = write_lines(tmp_path / "train.jsonl", RECORDS)
    answers = write_lines(tmp_path / "answers.jsonl",
                          [{"id": r["id"], "answer": f"模型{i}", "ended": True}
                           for i, r in enumerate(RECORDS)])
    pairs = read_pairs(PairsReader(str(split), 42, str(answers)))
    assert [(p["id"], p["chosen"], p["rejected"]) for p in pairs] == [
        (f"r{i}", f"回答{i}", f"模型{i}") for i in range(5)]
    assert pairs[0]["prompt"] == [{"role": "user", "content": "你好0"}]


def test_answers_for_other_records_are_refused(tmp_path):
    split = write_lines(tmp_path / "train.jsonl", RECORDS)
    shifted = write_lines(tmp_path / "answers.jsonl", [{"id": r["id"], "answer": "x"}
                                                       for r in RECORDS[1:] + RECORDS[:1]])
    with pytest.raises(DataError, match=r"answers.jsonl: line 1 is not the answer to record 'r0'"):
        read_pairs(PairsReader(str(split), 42, str(shifted)))
    short = write_lines(tmp_path / "short.jsonl", [{"id": "r0", "answer": "x"}])
    with pytest.raises(DataError, match="1 answers for the 5 records"):
        PairsReader(str(split), 42, str(short))


def test_answer_prompts_answers_every_record_in_order(tmp_path):
    from workflow_scripts.evaluation.answer_prompts import main

    base = random_base(tmp_path / "base", hidden=32, layers=1)
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "valid", "test"):
        write_lines(data / f"{split}.jsonl", RECORDS)
    settings = {"max_new_tokens": 4, "batch_size": 2, "max_length": 128, "do_sample": False,
                "temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}
    main(["--config", json.dumps({"evaluation": settings, "seed": 1}), "--model-dir", str(base),
          "--data-dir", str(data), "--out-dir", str(tmp_path / "answers")])
    rows = [json.loads(line) for line in (tmp_path / "answers" / "test.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in RECORDS]
    assert all(isinstance(r["answer"], str) and isinstance(r["ended"], bool) for r in rows)

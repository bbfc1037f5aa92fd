"""Large files are parsed and cleaned in spans, possibly by worker processes: the outputs
must be byte-identical to one serial pass over the whole file."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from workflow_scripts.data import prepare_dataset
from workflow_scripts.data.formats import DataError, parse_span, span_starts
from workflow_scripts.data.prepare_dataset import OUTPUT_FILES, prepare

CLEANING = {"min_prompt_chars": 1, "min_response_chars": 2, "max_chars": 4096, "dedupe": True,
            "min_cjk_share": 0.0}
WIDE = str.maketrans("0123456789", "０１２３４５６７８９")
TRAP = ', {"instruction": "x", "output": "y"}'  # inside a string: a wrong span start


def alpaca_rows(n: int) -> list:
    rows = []
    for i in range(n):
        row = {"instruction": f"问题{i % 37}？", "input": "背景" if i % 5 == 0 else "",
               "output": f"回答{i % 41}。" + (TRAP if i % 7 == 0 else "")}
        if i % 11 == 0:
            row["output"] = ""  # empty_response
        if i % 13 == 0:
            row = {"instruction": "没有输出"}  # missing_field
        if i % 17 == 1:  # the row before with full-width digits: a normalized duplicate
            row = dict(rows[-1], instruction=rows[-1].get("instruction", "").translate(WIDE))
        rows.append(row)
    return rows


def write(path: Path, rows: list, lines: bool, indent: int | None = None) -> str:
    if lines:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    else:
        text = json.dumps(rows, ensure_ascii=False, indent=indent)
    path.write_text(text, encoding="utf-8")
    return str(path)


def run(out: Path, spec: dict, workers: int, span_chars: int, monkeypatch) -> dict[str, bytes]:
    monkeypatch.setattr(prepare_dataset, "SPAN_CHARS", span_chars)
    prepare("demo", spec, CLEANING, {"valid": 0.1, "test": 0.1}, 42, out, workers)
    return {name: (out / name).read_bytes() for name in [*OUTPUT_FILES.values(), "stats.json"]}


@pytest.mark.parametrize("lines, indent", [(False, None), (False, 2), (True, None)])
@pytest.mark.parametrize("workers", [1, 2])
def test_spans_and_workers_give_the_serial_bytes(lines, indent, workers, tmp_path, monkeypatch):
    files = [write(tmp_path / f"part{n}.json", alpaca_rows(400 + n), lines, indent)
             for n in range(2)]
    spec = {"format": "alpaca", "files": files}
    serial = run(tmp_path / "serial", spec, 1, 1 << 30, monkeypatch)
    spans = run(tmp_path / "spans", spec, workers, 500, monkeypatch)
    assert spans == serial
    assert json.loads(serial["stats.json"])["rejected"]["duplicate_normalized"] > 0


def test_lccc_json_lines_of_arrays_in_spans(tmp_path, monkeypatch):
    dialogs = [[f"你 好 {i}", f"很 好 {i % 9}", "谢 谢"] for i in range(300)]
    path = tmp_path / "lccc.jsonl"
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dialogs),
                    encoding="utf-8")
    spec = {"format": "lccc", "files": [str(path)]}
    assert (run(tmp_path / "a", spec, 2, 300, monkeypatch)
            == run(tmp_path / "b", spec, 1, 1 << 30, monkeypatch))


def test_a_broken_record_late_in_a_big_file_fails_as_in_one_pass(tmp_path, monkeypatch):
    text = json.dumps(alpaca_rows(300), ensure_ascii=False)
    broken = tmp_path / "broken.json"
    broken.write_text(text[:-200] + "}}" + text[-200:], encoding="utf-8")
    spec = {"format": "alpaca", "files": [str(broken)]}
    errors = []
    for workers, span_chars in ((1, 1 << 30), (2, 400)):
        with pytest.raises(DataError) as err:
            run(tmp_path / f"out{workers}", spec, workers, span_chars, monkeypatch)
        errors.append(str(err.value))
        assert not (tmp_path / f"out{workers}" / "train.jsonl").exists()
    assert errors[0] == errors[1] and "invalid JSON at line 1" in errors[0]


def test_span_starts_are_guesses_that_parsing_corrects():
    rows = alpaca_rows(50)
    text = json.dumps(rows, ensure_ascii=False)
    starts = span_starts(text, "array", 100)
    assert len(starts) > 5
    records, pos = [], 0
    for start, stop in zip(starts, starts[1:] + [len(text)]):
        if pos < stop:
            span = parse_span(text, "array", pos, stop)
            records += span.records
            pos = span.end
    assert records == rows and pos == len(text)

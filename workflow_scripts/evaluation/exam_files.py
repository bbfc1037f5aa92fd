"""Turn a local multiple-choice exam (C-Eval or CMMLU CSV) into an lm-eval task.

    python -m workflow_scripts.evaluation.exam_files --name my-exam \\
        --test exams/my_exam.csv [--dev exams/my_exam_dev.csv] --out-dir results/benchmark_tasks/my-exam

A file has the columns `id,question,A,B,C,D,answer` (C-Eval's), or CMMLU's `Question` and
`Answer` (its unnamed first column is ignored; rows are then numbered); other columns
(C-Eval's `explanation`) are ignored. A missing column, an empty question or option, an
answer other than A-D, or a repeated id is refused with the file, row and column. The
output is `test.jsonl` and `dev.jsonl` (normalized rows) and `task.yaml`, an lm-eval task
that scores them as lm-eval's own C-Eval task does: the question and options, "答案：", and
the log-likelihood of each answer letter. Run it by hand with
`lm_eval --include_path results/benchmark_tasks/my-exam --tasks <task name in task.yaml>`
from the workflow's directory.
"""
from __future__ import annotations

import csv
from pathlib import Path

import yaml

from workflow_scripts.common.cli import parser as cli_parser
from workflow_scripts.common.io_utils import write_jsonl

LETTERS = ("A", "B", "C", "D")
# Column -> the names it may have in a file (C-Eval first, then CMMLU's).
COLUMNS = {"id": ("id",), "question": ("question", "Question"), "A": ("A",), "B": ("B",),
           "C": ("C",), "D": ("D",), "answer": ("answer", "Answer")}
PROMPT = "{{question.strip()}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\n答案："


class ExamFileError(ValueError):
    """A row of an exam file that cannot be scored; the message names file, row and column."""


def header_map(path: Path, header: list[str]) -> dict[str, str]:
    """Our column -> the file's column name; `id` may be absent (rows are numbered)."""
    found = {}
    for column, names in COLUMNS.items():
        match = next((n for n in names if n in header), None)
        if match is None and column != "id":
            raise ExamFileError(f"{path}: missing column {column!r} "
                                f"(the header has: {', '.join(header) or 'nothing'})")
        if match is not None:
            found[column] = match
    return found


def read_exam(path: str | Path) -> list[dict]:
    """Rows of one exam file as {id, question, A, B, C, D, answer}; rows count from 1 after
    the header, as a spreadsheet shows them minus one."""
    path = Path(path)
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        names = header_map(path, list(reader.fieldnames or []))
        rows, seen = [], {}
        for number, raw in enumerate(reader, start=1):
            row = {c: (raw.get(name) or "").strip() for c, name in names.items()}
            row["id"] = row.get("id") or str(number)
            check_row(path, number, row, seen)
            rows.append({c: row[c] for c in COLUMNS})
    if not rows:
        raise ExamFileError(f"{path}: no questions")
    return rows


def check_row(path: Path, number: int, row: dict, seen: dict[str, int]) -> None:
    where = f"{path}, row {number}"
    for column in ("question", *LETTERS):
        if not row[column]:
            raise ExamFileError(f"{where}, column {column!r}: empty")
    if row["answer"] not in LETTERS:
        raise ExamFileError(f"{where}, column 'answer': {row['answer']!r} is not one of "
                            f"{', '.join(LETTERS)}")
    if row["id"] in seen:
        raise ExamFileError(f"{where}, column 'id': {row['id']!r} repeats row {seen[row['id']]}")
    seen[row["id"]] = number


def read_split(paths: list[str]) -> list[dict]:
    """Several files of one split, ids prefixed by the file's stem when there are several."""
    rows = []
    for path in paths:
        prefix = f"{Path(path).stem}/" if len(paths) > 1 else ""
        rows += [{**r, "id": prefix + r["id"]} for r in read_exam(path)]
    return rows


def task_name(benchmark: str) -> str:
    """The lm-eval task name of a local benchmark (kept apart from lm-eval's own names)."""
    return f"lora_zh_{benchmark}"


def task_config(benchmark: str, task_dir: str, has_dev: bool) -> dict:
    """lm-eval's C-Eval task, pointed at the normalized files (paths relative to the
    workflow's directory, where jobs run)."""
    data_files = {"test": f"{task_dir}/test.jsonl"}
    config = {
        "task": task_name(benchmark),
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": data_files},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": PROMPT,
        "doc_to_choice": list(LETTERS),
        "doc_to_target": "{{['A', 'B', 'C', 'D'].index(answer)}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }
    if has_dev:
        data_files["dev"] = f"{task_dir}/dev.jsonl"
        # the first n dev questions, as C-Eval's and CMMLU's papers take their shots
        config.update(fewshot_split="dev", fewshot_config={"sampler": "first_n"})
    return config


def write_task(benchmark: str, test: list[str], dev: list[str], out_dir: Path) -> dict:
    test_rows, dev_rows = read_split(test), read_split(dev) if dev else []
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "test.jsonl", test_rows)
    write_jsonl(out_dir / "dev.jsonl", dev_rows)
    config = task_config(benchmark, out_dir.as_posix(), bool(dev_rows))
    (out_dir / "task.yaml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False),
                                       encoding="utf-8")
    return {"questions": len(test_rows), "dev_questions": len(dev_rows)}


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser(__doc__)
    parser.add_argument("--name", required=True, help="the benchmark's name in `benchmarks:`")
    parser.add_argument("--test", nargs="+", required=True, help="the exam's CSV files")
    parser.add_argument("--dev", nargs="*", default=[],
                        help="CSV files the few-shot examples are taken from (optional)")
    parser.add_argument("--out-dir", required=True, type=Path,
                        help="where task.yaml, test.jsonl and dev.jsonl go")
    args = parser.parse_args(argv)
    try:
        print(write_task(args.name, args.test, args.dev, args.out_dir))
    except ExamFileError as err:
        raise SystemExit(f"benchmark {args.name}: {err}") from None


if __name__ == "__main__":
    main()

"""Benchmarks through lm-evaluation-harness and the general-text loss (forgetting).

Local exam files are checked row by row; an exam scored by the workflow gives exactly what
lm-eval's own `simple_evaluate` gives when it loads the same model and adapter itself; the
accuracy follows the answer key; the general text of the scratch model is held out from its
pretraining; and the smoke report shows both tables with paired intervals for every adapter.
"""
from __future__ import annotations

import json
import math
import shutil

import pandas as pd
import pytest
import yaml

from workflow_runner import REPO, SMOKE_CONFIG
from workflow_scripts.common.config import ConfigError, resolve_experiments, validate
from workflow_scripts.common.io_utils import read_jsonl, write_jsonl
from workflow_scripts.evaluation.exam_files import ExamFileError, main as exam_main, read_exam

HEADER = "id,question,A,B,C,D,answer\n"
GOOD = "q1,一加一等于几？,1,2,3,4,B\n"


def write(tmp_path, text: str, name: str = "exam.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text, where", [
    ("id,question,A,B,C,answer\n" + "q1,x,1,2,3,A\n", "missing column 'D'"),
    (HEADER + GOOD + "q2,二加二？,1,2,3,4,E\n", "row 2, column 'answer': 'E' is not one of A, B, C, D"),
    (HEADER + GOOD + GOOD.replace("q1", "q3") + "q4, ,1,2,3,4,A\n", "row 3, column 'question': empty"),
    (HEADER + "q1,x,1,,3,4,A\n", "row 1, column 'B': empty"),
    (HEADER + GOOD + GOOD, "row 2, column 'id': 'q1' repeats row 1"),
    (HEADER, "no questions"),
])
def test_bad_exam_files_are_refused_naming_file_row_and_column(tmp_path, text, where):
    path = write(tmp_path, text)
    with pytest.raises(ExamFileError) as err:
        read_exam(path)
    assert str(err.value).startswith(str(path)) and where in str(err.value)
    with pytest.raises(SystemExit) as exit_:  # the job says which benchmark, file and row
        exam_main(["--name", "mine", "--test", str(path), "--out-dir", str(tmp_path / "out")])
    assert f"benchmark mine: {path}" in str(exit_.value) and where in str(exit_.value)


def test_cmmlu_columns_and_the_shipped_exams_read(tmp_path):
    path = write(tmp_path, ",Question,A,B,C,D,Answer\n0,问题？,甲,乙,丙,丁,C\n")
    assert read_exam(path) == [{"id": "1", "question": "问题？", "A": "甲", "B": "乙",
                                "C": "丙", "D": "丁", "answer": "C"}]
    exam = read_exam(REPO / "data" / "exams" / "zh_general.csv")
    assert 40 <= len(exam) <= 80
    # balanced answer letters: always answering one letter scores exactly chance
    assert {letter: sum(r["answer"] == letter for r in exam) for letter in "ABCD"} == \
        {letter: len(exam) // 4 for letter in "ABCD"}


def smoke_config() -> dict:
    return yaml.safe_load(SMOKE_CONFIG.read_text(encoding="utf-8"))


def test_config_refuses_unknown_benchmarks_and_shots_without_dev():
    config = smoke_config()
    config["experiments"]["lccc-qlora"]["evaluation"] = {"benchmarks": ["nope"]}
    with pytest.raises(ConfigError, match=r"experiments\.lccc-qlora\.evaluation\.benchmarks: "
                                          r"unknown benchmark 'nope'"):
        resolve_experiments(validate(config))
    config = smoke_config()
    config["benchmarks"]["exam-small"]["files"] = ["tests/data/exam_small.csv"]
    with pytest.raises(ConfigError, match=r"benchmarks\.exam-small\.shots: 1 shots need a dev split"):
        resolve_experiments(validate(config))
    config = smoke_config()
    config["benchmarks"]["exam-small"]["format"] = "mmlu"
    with pytest.raises(ConfigError, match="benchmarks.exam-small"):
        validate(config)


# On the smoke run ---------------------------------------------------------------------------

def base_dir(smoke_run, experiment: str):
    config = json.loads((smoke_run.workdir / "results/metrics/config.json").read_text())
    return smoke_run.workdir / config["experiments"][experiment]["base_eval"]


def lm_eval_accuracy(smoke_run, model_args: str, task_dir) -> dict[str, float]:
    """Per-question acc from lm-eval loading the model itself (its own `hf` model)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    task = yaml.safe_load((task_dir / "task.yaml").read_text(encoding="utf-8"))
    task["dataset_kwargs"]["data_files"] = {
        split: str(smoke_run.workdir / path)
        for split, path in task["dataset_kwargs"]["data_files"].items()}
    (task_dir / "task.yaml").write_text(yaml.safe_dump(task, allow_unicode=True), encoding="utf-8")
    result = lm_eval.simple_evaluate(
        model="hf", model_args=f"{model_args},dtype=float32,device=cpu", tasks=[task["task"]],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        num_fewshot=1, log_samples=True, bootstrap_iters=0, batch_size=4)
    return {s["doc"]["id"]: s["acc"] for s in result["samples"][task["task"]]}


@pytest.mark.slow
def test_our_exam_accuracy_equals_lm_evals_own_and_follows_the_key(smoke_run, tmp_path):
    work = smoke_run.workdir
    task_dir = tmp_path / "task"
    shutil.copytree(work / "results/benchmark_tasks/exam-small", task_dir)
    model, adapter = work / "results/models/tiny", work / "results/adapters/rank-r2"
    for ours, args in ((base_dir(smoke_run, "rank-r2"), f"pretrained={model}"),
                       (work / "results/eval/rank-r2", f"pretrained={model},peft={adapter}")):
        rows = list(read_jsonl(ours / "benchmarks.jsonl"))
        assert len(rows) == 6 and {r["benchmark"] for r in rows} == {"exam-small"}
        assert {r["id"]: r["acc"] for r in rows} == lm_eval_accuracy(smoke_run, args, task_dir)

    # The same model against answer keys made from its own choices: all right, then all wrong.
    from workflow_scripts.evaluation.benchmarks import score_benchmarks
    from workflow_scripts.models.loading import load_model, load_tokenizer

    tiny, tokenizer = load_model(str(model)), load_tokenizer(str(model))
    base_rows = {r["id"]: r for r in read_jsonl(base_dir(smoke_run, "rank-r2") / "benchmarks.jsonl")}
    questions = list(read_jsonl(task_dir / "test.jsonl"))
    for shift, expected in ((0, 1.0), (1, 0.0)):
        keyed = tmp_path / f"key{shift}"  # a new file each time: datasets caches by path
        keyed.mkdir()
        for q in questions:
            q["answer"] = "ABCD"[(base_rows[q["id"]]["predicted"] + shift) % 4]
        write_jsonl(keyed / "test.jsonl", questions)
        task = yaml.safe_load((task_dir / "task.yaml").read_text(encoding="utf-8"))
        task["dataset_kwargs"]["data_files"]["test"] = str(keyed / "test.jsonl")
        (keyed / "task.yaml").write_text(yaml.safe_dump(task, allow_unicode=True), encoding="utf-8")
        rows = score_benchmarks(tiny, tokenizer, {"exam-small": {"task_dir": str(keyed),
                                                                 "shots": 1}}, 4, 1024, 7)
        assert [r["predicted"] for r in rows] == [base_rows[r["id"]]["predicted"] for r in rows]
        assert sum(r["acc"] for r in rows) / len(rows) == expected


def test_general_text_is_held_out_and_scored_like_the_test_loss(smoke_run):
    import torch

    from workflow_scripts.models.build_base_model import plain_text
    from workflow_scripts.models.loading import load_model, load_tokenizer

    work = smoke_run.workdir
    rows = list(read_jsonl(base_dir(smoke_run, "rank-r2") / "general_text.jsonl"))
    assert {r["text"] for r in rows} == {"lccc", "tools_sharegpt"}  # the pretraining datasets
    for dataset in ("lccc", "tools_sharegpt"):
        ids = {r["id"] for r in rows if r["text"] == dataset}
        valid = {str(r["id"]): r for r in read_jsonl(work / f"results/data/{dataset}/valid.jsonl")}
        train = {str(r["id"]) for r in read_jsonl(work / f"results/data/{dataset}/train.jsonl")}
        assert ids and ids <= set(valid) and not ids & train
    # one record by hand: mean next-token cross-entropy over the plain text
    model, tokenizer = load_model(str(work / "results/models/tiny")), load_tokenizer(
        str(work / "results/models/tiny"))
    row = next(r for r in rows if r["text"] == "lccc")
    valid = {str(r["id"]): r for r in read_jsonl(work / "results/data/lccc/valid.jsonl")}
    ids = tokenizer(plain_text(valid[row["id"]]["messages"]))["input_ids"][:512]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum")
    assert row["n_tokens"] == len(ids) - 1
    assert math.isclose(row["loss_sum"], float(expected), rel_tol=1e-4)


def test_smoke_report_shows_forgetting_and_benchmarks_for_every_adapter(smoke_run):
    metrics = smoke_run.workdir / "results/metrics"
    experiments = set(pd.read_csv(metrics / "experiments.tsv", sep="\t")["experiment"])
    bench = pd.read_csv(metrics / "benchmarks.tsv", sep="\t")
    assert list(bench.columns) == ["experiment", "benchmark", "n", "accuracy", "accuracy_low",
                                   "accuracy_high", "base_accuracy", "difference",
                                   "difference_low", "difference_high", "verdict",
                                   "p_value", "p_holm"]
    assert set(bench["experiment"]) == experiments and (bench["n"] == 6).all()
    general = pd.read_csv(metrics / "general_text.tsv", sep="\t")
    assert set(general["experiment"]) == experiments
    assert set(general["text"]) == {"lccc", "tools_sharegpt"}
    for table in (bench, general):
        assert table[["difference_low", "difference_high"]].notna().all().all()
        assert (table["difference_low"] <= table["difference"]).all()
        assert (table["difference"] <= table["difference_high"]).all()
    report = (smoke_run.workdir / "results/report/training_report.md").read_text(encoding="utf-8")
    for heading in ("What fine-tuning cost: loss on the base model's general text",
                    "Benchmarks (multiple choice through lm-eval"):
        section = report.split(heading, 1)[1].split("###", 1)[0]
        assert all(f"| {name} |" in section for name in experiments)


def test_a_configured_general_text_reads_txt_and_jsonl_and_names_a_bad_line(tmp_path):
    from workflow_scripts.evaluation.general_spec import general_job
    from workflow_scripts.evaluation.general_text import GeneralTextError, part_texts

    (tmp_path / "wiki.txt").write_text("第一段。\n\n第二段。\n", encoding="utf-8")
    (tmp_path / "chat.jsonl").write_text(
        '{"id": "a", "text": "你好"}\n'
        '{"messages": [{"role": "user", "content": "问"}, {"role": "assistant", "content": "答"}]}\n',
        encoding="utf-8")
    config = {"base_models": {"real": {"source": "path", "path": "/m", "general_text": {
        "files": [str(tmp_path / "wiki.txt"), str(tmp_path / "chat.jsonl")], "max_records": 2}}},
        "benchmarks": {}}
    job = general_job(config, {"base_model": "real", "evaluation": {}})
    assert list(job["texts"]) == ["wiki", "chat"] and job["max_records"] == 2
    assert part_texts(job["texts"]["wiki"], 2) == [("1", "第一段。"), ("3", "第二段。")]
    assert part_texts(job["texts"]["chat"], 2) == [("a", "你好"), ("2", "问\n答")]
    (tmp_path / "chat.jsonl").write_text('{"id": "a", "text": "你好"}\n{"body": 1}\n', encoding="utf-8")
    with pytest.raises(GeneralTextError, match=r"chat\.jsonl, line 2: expected a JSON object"):
        part_texts(job["texts"]["chat"], 5)
    # a hub or path model without general_text and without benchmarks scores nothing extra
    del config["base_models"]["real"]["general_text"]
    assert general_job(config, {"base_model": "real", "evaluation": {}}) is None

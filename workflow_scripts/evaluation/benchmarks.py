"""Multiple-choice benchmarks scored by lm-evaluation-harness, one row per question.

A benchmark is an lm-eval task by name (`{task: cmmlu}`, its data from the Hugging Face cache
or the network), or a local exam turned into a task under results/benchmark_tasks/
(evaluation/exam_files.py). The model already loaded for the evaluation, with its adapter
and quantization, is handed to lm-eval's `hf` model (`HFLM`), so a base and an adapter are
scored exactly as their test loss is. lm-eval picks each answer by the log-likelihood of
the answer letters; its per-question `acc` is kept so that collect_metrics compares an
adapter with its base on the same questions.
"""
from __future__ import annotations

import logging


def lm_eval_model(model, tokenizer, batch_size: int, max_length: int):
    """lm-eval's `hf` model around an already-loaded model (a PeftModel included)."""
    from lm_eval.models.huggingface import HFLM

    # HFLM re-ties the input and output embeddings. The model was tied when it was loaded;
    # re-tying fails on a PeftModel whose adapter trains token rows of a tied embedding
    # (peft wraps embed_tokens), so it is skipped here rather than merging the adapter,
    # which would round a QLoRA update into 4-bit weights.
    model.tie_weights = lambda *args, **kwargs: None
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                max_length=max_length)


def task_manager(benchmarks: dict):
    """lm-eval's task index: only the generated local tasks, unless a benchmark names one of
    lm-eval's own tasks (indexing those takes half a minute)."""
    from lm_eval.tasks import TaskManager

    local = [spec["task_dir"] for spec in benchmarks.values() if "task_dir" in spec]
    builtin = any("task" in spec for spec in benchmarks.values())
    return TaskManager(include_path=local or None, include_defaults=builtin)


def task_name(name: str, spec: dict) -> str:
    from workflow_scripts.evaluation.exam_files import task_name as local_task_name

    return spec["task"] if "task" in spec else local_task_name(name)


def question_rows(benchmark: str, samples: dict[str, list[dict]], several: bool) -> list[dict]:
    """{benchmark, id, target, predicted, acc} per question; a group task's (CMMLU's
    subjects) questions are named subtask/id."""
    rows = []
    for subtask, items in sorted(samples.items()):
        for item in items:
            doc = item["doc"]
            qid = str(doc.get("id", item["doc_id"])) if isinstance(doc, dict) else str(item["doc_id"])
            scores = [float(r[0]) for r in item["filtered_resps"]]
            rows.append({"benchmark": benchmark, "id": f"{subtask}/{qid}" if several else qid,
                         "target": item["target"], "predicted": scores.index(max(scores)),
                         "acc": float(item["acc"])})
    return rows


def score_benchmarks(model, tokenizer, benchmarks: dict, batch_size: int, max_length: int,
                     seed: int) -> list[dict]:
    """Every configured benchmark on `model`, one row per question (see question_rows)."""
    if not benchmarks:
        return []
    import lm_eval

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    lm = lm_eval_model(model, tokenizer, batch_size, max_length)
    manager = task_manager(benchmarks)
    rows = []
    for name, spec in benchmarks.items():
        result = lm_eval.simple_evaluate(
            model=lm, tasks=[task_name(name, spec)], task_manager=manager,
            num_fewshot=spec["shots"], log_samples=True, bootstrap_iters=0,
            random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
            fewshot_random_seed=seed)
        samples = result["samples"]
        if not samples:
            raise SystemExit(f"benchmark {name}: lm-eval returned no questions")
        rows += question_rows(name, samples, several=len(samples) > 1)
    return rows


def summary(rows: list[dict]) -> dict:
    """Per benchmark: questions and accuracy (metrics.json's `benchmarks`)."""
    out = {}
    for name in dict.fromkeys(r["benchmark"] for r in rows):
        acc = [r["acc"] for r in rows if r["benchmark"] == name]
        out[name] = {"accuracy": sum(acc) / len(acc), "n": len(acc)}
    return out

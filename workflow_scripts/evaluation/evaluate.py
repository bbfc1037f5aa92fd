"""Evaluate a base model, or a base model plus adapter, on a dataset's test split.

A base model and an adapter are scored by the same code with the same job settings (see
`eval_settings` in rules/common.smk): the same test records and truncation, the same
prompts, decoding and quantization. Loss and perplexity are token-weighted over assistant
tokens (workflow_scripts/training/token_loss.py, the routine training's validation loss
uses too); answers come from evaluation/generation.py, and text metrics compare them with
the reference replies. Per-record losses and
per-sample scores are written so that collect_metrics can give intervals and paired
differences. The same job scores the base model's general text and the configured
benchmarks (general_scores), so those too are like for like. See docs/metrics.md.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from workflow_scripts.common.cli import parser as cli_parser
from workflow_scripts.common.io_utils import evaluation_key, read_jsonl, write_json, write_jsonl
from workflow_scripts.common.resource_usage import peak_memory
from workflow_scripts.common.run_info import write_run_info
from workflow_scripts.evaluation.generation import (Generation, generate, load_for_eval,
                                                    model_context)


def record_losses(model, tokenizer, records: list[dict], max_length: int, batch_size: int):
    """(id, loss sum, token count, truncated) per test record, in file order."""
    from transformers import DataCollatorForSeq2Seq

    from workflow_scripts.training.chat_tokenize import tokenize_records
    from workflow_scripts.training.token_loss import IGNORE_INDEX, record_loss_sums

    features, owners = [], []
    truncated = 0
    for record in records:
        # one feature, or one per assistant turn for templates that rewrite earlier turns
        encoded, stats = tokenize_records(tokenizer, [record], max_length)
        truncated += stats.truncated
        features += encoded  # none when the reply is cut off entirely: nothing to score
        owners += [record["id"]] * len(encoded)
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
    sums = record_loss_sums(model, features, collate, batch_size)
    rows: dict[str, dict] = {}
    for rid, (s, n) in zip(owners, sums):
        row = rows.setdefault(rid, {"id": rid, "loss_sum": 0.0, "n_tokens": 0})
        row["loss_sum"] += s
        row["n_tokens"] += n
    return list(rows.values()), truncated


def loss_metrics(rows: list[dict], truncated: int, n_records: int) -> dict:
    from workflow_scripts.training.token_loss import mean_loss, perplexity

    loss = mean_loss((r["loss_sum"], r["n_tokens"]) for r in rows)
    return {"loss": loss, "perplexity": perplexity(loss),
            "n_loss_tokens": sum(r["n_tokens"] for r in rows), "n_records": n_records,
            "n_scored_records": len(rows), "n_truncated_records": truncated}


def prompt_text(messages: list[dict]) -> str:
    """What a reader needs to see of the prompt: earlier turns, then the last user message."""
    turns = [m for m in messages if m["role"] != "system"]
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in turns)


def sample_rows(sample: list[dict], generations: list[Generation]) -> list[dict]:
    """predictions.jsonl: each generated sample with its per-sample scores."""
    from workflow_scripts.evaluation.text_metrics import sample_scores

    rows = []
    for record, gen in zip(sample, generations):
        reference = record["messages"][-1]["content"]
        rows.append({
            "id": record["id"], "prompt": prompt_text(record["messages"][:-1]),
            "reference": reference, "prediction": gen.text, "ended": gen.ended, "stopped": gen.stopped,
            "new_tokens": gen.new_tokens, "prompt_fit": gen.prompt_fit,
            **sample_scores(gen.text, reference),
        })
    return rows


def general_scores(job: dict, model, tokenizer, out_dir: Path, context: int) -> dict:
    """The general text's per-record losses and the benchmarks' per-question results
    (evaluation/general_spec.py), written beside the test split's; their summaries."""
    import time

    from workflow_scripts.evaluation import benchmarks, general_text

    start = time.perf_counter()
    general = job.get("general") or {"texts": {}, "benchmarks": {}}
    batch_size = job["evaluation"]["batch_size"]
    texts = (general_text.score_general_text(model, tokenizer, general, batch_size)
             if general["texts"] else [])
    questions = benchmarks.score_benchmarks(model, tokenizer, general["benchmarks"], batch_size,
                                            context, job["seed"])
    write_jsonl(out_dir / "general_text.jsonl", texts)
    write_jsonl(out_dir / "benchmarks.jsonl", questions)
    # in the log, not metrics.json: a rerun must give identical metrics
    print(f"general text and benchmarks: {time.perf_counter() - start:.1f} s", flush=True)
    return {"general_text": general_text.summary(texts),
            "benchmarks": benchmarks.summary(questions)}


def evaluate(job: dict, model_dir: str, adapter_dir: str | None, test_file: Path, out_dir: Path) -> dict:
    from workflow_scripts.evaluation.text_metrics import compute_text_metrics
    from workflow_scripts.evaluation.tool_eval import evaluate_tool_calls, plain_reply_records

    started = time.perf_counter()
    settings, seed = job["evaluation"], job["seed"]
    trust = job["base_model"].get("trust_remote_code", False)
    model, tokenizer = load_for_eval(model_dir, adapter_dir, trust, job.get("quantization"))
    records = list(read_jsonl(test_file))
    if not records:
        raise SystemExit(f"{test_file}: the test split is empty")
    context = model_context(model, settings["max_length"])
    losses, truncated = record_losses(model, tokenizer, records, context, settings["batch_size"])
    metrics = loss_metrics(losses, truncated, len(records))
    sample = plain_reply_records(records)[: settings["samples"]]
    generations, per_sample = generate(model, tokenizer, [r["messages"][:-1] for r in sample],
                                       settings, seed, context, [r.get("tools") for r in sample])
    tool_metrics, tool_rows = evaluate_tool_calls(
        tokenizer, records, settings, lambda prompts, tools: [g.text for g in generate(
            model, tokenizer, prompts, settings, seed, context, tools)[0]])
    metrics.update(tool_metrics)
    write_jsonl(out_dir / "tool_calls.jsonl", tool_rows)
    rows = sample_rows(sample, generations)
    metrics.update(compute_text_metrics([r["prediction"] for r in rows],
                                        [r["reference"] for r in rows],
                                        dialogue=job.get("dialogue", False), per_sample=rows))
    metrics.update(
        eot_share=sum(g.ended for g in generations) / max(len(generations), 1),
        stopped_share=sum(g.stopped for g in generations) / max(len(generations), 1),
        prompts_shortened=sum(g.prompt_fit != "whole" for g in generations),
        gen_time_per_sample_s=round(per_sample, 4), n_samples=len(sample), context_tokens=context,
        quantization=job.get("quantization"), settings_key=evaluation_key(job),
    )
    # the job's own cost, beside Snakemake's results/benchmarks/ file (docs/benchmarks.md)
    metrics.update({f"eval_{k}": v for k, v in peak_memory().items()},
                   eval_wall_time_s=round(time.perf_counter() - started, 3))
    metrics.update(general_scores(job, model, tokenizer, out_dir, context))
    write_jsonl(out_dir / "record_losses.jsonl", losses)
    write_jsonl(out_dir / "predictions.jsonl", rows)
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def evaluation_shape() -> dict[str, int]:
    """One process; the CUDA devices it used (0: evaluated on CPUs)."""
    import torch

    return {"processes": 1, "devices": 1 if torch.cuda.is_available() else 0}


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser(__doc__)
    parser.add_argument("--config", required=True, help="the job's config slice as JSON")
    parser.add_argument("--model-dir", required=True, help="the base model's directory")
    parser.add_argument("--adapter-dir", default=None,
                        help="the adapter to score on top of the base (default: the base alone)")
    parser.add_argument("--test-file", required=True, type=Path, help="the test split (JSONL)")
    parser.add_argument("--out-dir", required=True, type=Path,
                        help="where metrics.json and the per-item files go")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    job = json.loads(args.config)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    metrics = evaluate(job, args.model_dir, args.adapter_dir, args.test_file, args.out_dir)
    write_run_info(args.out_dir, job, job["seed"], [args.test_file], extra=evaluation_shape())
    print(json.dumps({k: metrics.get(k) for k in ("loss", "perplexity", "bleu4", "rougeL", "eot_share")}))


if __name__ == "__main__":
    main()

"""Evaluate a base model, or a base model plus adapter, on a dataset's test split.

A base model and an adapter are scored by the same code with the same job settings (see
`eval_settings` in rules/common.smk): the same test records and truncation, the same
prompts, decoding and quantization. Loss and perplexity are token-weighted over assistant
tokens (workflow_scripts/token_loss.py, the routine training's validation loss uses too);
text metrics compare generated answers with the reference replies. Per-record losses and
per-sample scores are written so that collect_metrics can give intervals and paired
differences. See docs/metrics.md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from workflow_scripts.io_utils import evaluation_key, read_jsonl, write_json, write_jsonl
from workflow_scripts.run_info import write_run_info


def model_context(model, max_length: int) -> int:
    """Tokens a test record (or prompt + answer) may take: the configured evaluation length,
    capped at the model's context."""
    limits = [max_length, getattr(model.config, "max_position_embeddings", None)]
    return min(limit for limit in limits if limit)


def record_losses(model, tokenizer, records: list[dict], max_length: int, batch_size: int):
    """(id, loss sum, token count, truncated) per test record, in file order."""
    from transformers import DataCollatorForSeq2Seq

    from workflow_scripts.chat_tokenize import tokenize_records
    from workflow_scripts.token_loss import record_loss_sums

    features, owners = [], []
    truncated = 0
    for record in records:
        # one feature, or one per assistant turn for templates that rewrite earlier turns
        encoded, stats = tokenize_records(tokenizer, [record], max_length)
        truncated += stats.truncated
        features += encoded  # none when the reply is cut off entirely: nothing to score
        owners += [record["id"]] * len(encoded)
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    sums = record_loss_sums(model, features, collate, batch_size)
    rows: dict[str, dict] = {}
    for rid, (s, n) in zip(owners, sums):
        row = rows.setdefault(rid, {"id": rid, "loss_sum": 0.0, "n_tokens": 0})
        row["loss_sum"] += s
        row["n_tokens"] += n
    return list(rows.values()), truncated


def loss_metrics(rows: list[dict], truncated: int, n_records: int) -> dict:
    from workflow_scripts.token_loss import mean_loss, perplexity

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


def end_of_turn_ids(tokenizer) -> set[int]:
    """The special tokens the chat template puts right after an assistant reply
    (`<|im_end|>` for ChatML, `<|eot_id|>` for Llama 3, ...)."""
    messages = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "REPLY"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    suffix = rendered[rendered.rindex("REPLY") + len("REPLY"):]
    special = set(tokenizer.all_special_ids) | {
        i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    ids = tokenizer(suffix, add_special_tokens=False)["input_ids"]
    return {i for i in ids[:2] if i in special}


def stop_token_ids(model, tokenizer) -> list[int]:
    """The union of the model's end tokens, the tokenizer's eos and the end-of-turn token."""
    ids = set(end_of_turn_ids(tokenizer))
    for source in (getattr(model, "generation_config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        ids |= set(eos) if isinstance(eos, (list, tuple)) else {eos}
    return sorted(i for i in ids if i is not None)


def generation_config(settings: dict, stop_ids: list[int], pad_id: int):
    """A complete decoding setup: greedy means greedy, sampling uses only what is configured."""
    from transformers import GenerationConfig

    sampling = settings["do_sample"]
    return GenerationConfig(
        max_new_tokens=settings["max_new_tokens"], min_new_tokens=0, do_sample=sampling,
        num_beams=1, temperature=settings["temperature"] if sampling else 1.0,
        top_p=settings["top_p"] if sampling else 1.0,
        top_k=settings.get("top_k", 0) if sampling else 0,
        repetition_penalty=settings.get("repetition_penalty", 1.0), no_repeat_ngram_size=0,
        eos_token_id=stop_ids, pad_token_id=pad_id,
    )


@contextlib.contextmanager
def only_configured_decoding(model):
    """Without the model's own generation_config.json while generating: transformers fills
    every field a GenerationConfig leaves unset from it (a repetition penalty, suppressed
    tokens, ...), which would make "greedy" mean something else for each model."""
    from transformers import GenerationConfig

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = inner.generation_config
    inner.generation_config = GenerationConfig()
    try:
        yield
    finally:
        inner.generation_config = saved


def render_prompt(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
    from workflow_scripts.chat_tokenize import render

    text = render(tokenizer, messages, generation_prompt=True, tools=tools)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def fit_prompt(tokenizer, messages: list[dict], budget: int,
               tools: list[dict] | None = None) -> tuple[list[int], str]:
    """Prompt tokens that fit `budget`: the oldest turns go first (a system message stays),
    then the start of the last user turn; the last user turn is never dropped."""
    ids = render_prompt(tokenizer, messages, tools)
    if len(ids) <= budget:
        return ids, "whole"
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    while len(turns) > 1:
        turns = turns[1:]
        while len(turns) > 1 and turns[0]["role"] != "user":
            turns = turns[1:]
        ids = render_prompt(tokenizer, system + turns, tools)
        if len(ids) <= budget:
            return ids, "dropped_turns"
    last = turns[-1]
    content_ids = tokenizer(last["content"], add_special_tokens=False)["input_ids"]
    overhead = len(render_prompt(tokenizer, [{**last, "content": ""}], tools))
    keep = budget - overhead
    if keep <= 0:
        raise ValueError(f"no room for the prompt: {budget} tokens left for it, the chat "
                         f"template alone takes {overhead}")
    content = tokenizer.decode(content_ids[-keep:])
    ids = render_prompt(tokenizer, [{**last, "content": content}], tools)
    return ids[-budget:], "truncated"


@dataclass
class Generation:
    text: str
    ended: bool  # stopped on the template's end-of-turn token before max_new_tokens
    new_tokens: int
    prompt_fit: str  # whole | dropped_turns | truncated
    stopped: bool = False  # on any stop token (end of turn, or another eos) before the limit


def generate(model, tokenizer, prompts: list[list[dict]], settings: dict, seed: int,
             context: int | None = None, tools: list[list[dict] | None] | None = None
             ) -> tuple[list[Generation], float]:
    """Answers to chat prompts (lists of messages ending with a user turn), generated in
    left-padded batches; also returns the seconds per prompt. `context` defaults to the
    settings' max_length capped at the model's context."""
    import torch
    from transformers import set_seed

    if context is None:
        context = model_context(model, settings.get("max_length", 1024))
    budget = context - settings["max_new_tokens"]
    if budget < 1:
        raise SystemExit(f"evaluation.max_new_tokens ({settings['max_new_tokens']}) leaves no "
                         f"room for a prompt in a context of {context} tokens")
    stop_ids = stop_token_ids(model, tokenizer)
    end_of_turn = end_of_turn_ids(tokenizer) or set(stop_ids)
    config = generation_config(settings, stop_ids, tokenizer.pad_token_id)
    set_seed(seed)
    out, started = [], time.perf_counter()
    for start in range(0, len(prompts), settings["batch_size"]):
        stop = start + settings["batch_size"]
        fitted = [fit_prompt(tokenizer, p, budget, t) for p, t in
                  zip(prompts[start:stop], (tools or [None] * len(prompts))[start:stop])]
        width = max(len(ids) for ids, _ in fitted)
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(ids)) + ids for ids, _ in fitted])
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in fitted])
        with torch.no_grad(), only_configured_decoding(model):
            generated = model.generate(input_ids=input_ids.to(model.device),
                                       attention_mask=mask.to(model.device), generation_config=config)
        for row, (_, fit) in zip(generated[:, width:].tolist(), fitted):
            end = next((i for i, t in enumerate(row) if t in stop_ids), None)
            tokens = row if end is None else row[:end]
            text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
            stopped = end is not None
            out.append(Generation(text, stopped and row[end] in end_of_turn, len(tokens), fit,
                                  stopped))
    return out, (time.perf_counter() - started) / max(len(prompts), 1)


def load_for_eval(model_dir: str, adapter_dir: str | None, trust_remote_code: bool,
                  quantization: str | None):
    from workflow_scripts.model_loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
    model = load_model(model_dir, trust_remote_code=trust_remote_code, quantization=quantization)
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    return model, tokenizer


def sample_rows(sample: list[dict], generations: list[Generation]) -> list[dict]:
    """predictions.jsonl: each generated sample with its per-sample scores."""
    from workflow_scripts.text_metrics import sample_scores

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


def evaluate(job: dict, model_dir: str, adapter_dir: str | None, test_file: Path, out_dir: Path) -> dict:
    from workflow_scripts.text_metrics import compute_text_metrics
    from workflow_scripts.tool_eval import evaluate_tool_calls, plain_reply_records

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
    write_jsonl(out_dir / "record_losses.jsonl", losses)
    write_jsonl(out_dir / "predictions.jsonl", rows)
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="the job's config slice as JSON")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--adapter-dir", default=None)
    parser.add_argument("--test-file", required=True, type=Path)
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    job = json.loads(args.config)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    metrics = evaluate(job, args.model_dir, args.adapter_dir, args.test_file, args.out_dir)
    write_run_info(args.out_dir, job, job["seed"], [args.test_file])
    print(json.dumps({k: metrics.get(k) for k in ("loss", "perplexity", "bleu4", "rougeL", "eot_share")}))


if __name__ == "__main__":
    main()

"""Evaluate a base model, or a base model plus adapter, on a dataset's test split.

Loss and perplexity are over assistant tokens only (the same labels as training); text
metrics compare greedy (or seeded sampled) generations with the reference replies.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from workflow_scripts.io_utils import read_jsonl, write_json, write_jsonl
from workflow_scripts.run_info import write_run_info


def test_loss(model, tokenizer, records: list[dict], max_length: int, batch_size: int) -> dict:
    """Token-weighted mean cross-entropy over assistant tokens, and its perplexity."""
    import torch
    from transformers import DataCollatorForSeq2Seq

    from workflow_scripts.chat_tokenize import tokenize_records

    features, _ = tokenize_records(tokenizer, records, max_length)
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    total, count = 0.0, 0
    model.eval()
    for start in range(0, len(features), batch_size):
        batch = collate(features[start : start + batch_size])
        batch = {k: v.to(model.device) for k, v in batch.items()}
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        total += torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.size(-1)), labels.reshape(-1),
            ignore_index=-100, reduction="sum",
        ).item()
        count += int((labels != -100).sum())
    loss = total / count if count else float("nan")
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "n_loss_tokens": count}


def prompt_text(messages: list[dict]) -> str:
    """What a reader needs to see of the prompt: earlier turns, then the last user message."""
    turns = [m for m in messages if m["role"] != "system"]
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in turns)


def stop_token_ids(tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
        ids.add(end_of_turn)
    return sorted(i for i in ids if i is not None)


def generate(model, tokenizer, prompts: list[list[dict]], settings: dict, seed: int) -> tuple[list[str], float]:
    """Answers to chat prompts (lists of messages ending with a user turn), generated in
    batches with the prompt removed; also returns the seconds per prompt."""
    import torch
    from transformers import set_seed

    set_seed(seed)
    tokenizer.padding_side = "left"
    kwargs = {"max_new_tokens": settings["max_new_tokens"], "do_sample": settings["do_sample"],
              "pad_token_id": tokenizer.pad_token_id, "eos_token_id": stop_token_ids(tokenizer)}
    if settings["do_sample"]:
        kwargs.update(temperature=settings["temperature"], top_p=settings["top_p"])
    answers, started = [], time.perf_counter()
    for start in range(0, len(prompts), settings["batch_size"]):
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                 for p in prompts[start : start + settings["batch_size"]]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        batch = batch.to(model.device)
        with torch.no_grad():
            out = model.generate(**batch, **kwargs)
        new_tokens = out[:, batch["input_ids"].shape[1]:]
        answers += [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    tokenizer.padding_side = "right"
    return answers, (time.perf_counter() - started) / max(len(prompts), 1)


def load_for_eval(model_dir: str, adapter_dir: str | None, trust_remote_code: bool, quantize: bool):
    from workflow_scripts.model_loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
    model = load_model(model_dir, trust_remote_code=trust_remote_code,
                       quantization="4bit" if quantize else None)
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    return model, tokenizer


def evaluate(job: dict, model_dir: str, adapter_dir: str | None, test_file: Path, out_dir: Path) -> dict:
    from workflow_scripts.text_metrics import compute_text_metrics

    settings, seed = job["evaluation"], job["seed"]
    quantize = job.get("method") == "qlora"
    trust = job["base_model"].get("trust_remote_code", False)
    model, tokenizer = load_for_eval(model_dir, adapter_dir, trust, quantize)
    records = list(read_jsonl(test_file))
    if not records:
        raise SystemExit(f"{test_file}: the test split is empty")
    metrics = test_loss(model, tokenizer, records, job["max_length"], settings["batch_size"])
    sample = records[: settings["samples"]]
    answers, per_sample = generate(model, tokenizer, [r["messages"][:-1] for r in sample],
                                   settings, seed)
    references = [r["messages"][-1]["content"] for r in sample]
    metrics.update(compute_text_metrics(answers, references, dialogue=job.get("dialogue", False)))
    metrics.update(gen_time_per_sample_s=round(per_sample, 4), n_samples=len(sample))
    write_jsonl(out_dir / "predictions.jsonl", (
        {"id": r["id"], "prompt": prompt_text(r["messages"][:-1]), "reference": ref, "prediction": ans}
        for r, ref, ans in zip(sample, references, answers)
    ))
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
    print(json.dumps({k: metrics.get(k) for k in ("loss", "perplexity", "bleu4", "rougeL")}))


if __name__ == "__main__":
    main()

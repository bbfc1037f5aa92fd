"""Load a GGUF back with llama.cpp (llama-cpp-python) and check it answers like the model the
evaluation scored.

The reference is the merged model in transformers (fp32 on the CPU), which is the base plus
the adapter. For the first `check.prompts` test prompts of the experiment's evaluation, each
rendered with the evaluation's own chat rendering: llama.cpp must tokenize the prompt text to
the same ids as the tokenizer, and greedy-decode the first `check.tokens` tokens (up to a stop
token). A 16-bit GGUF, and the base GGUF with the LoRA GGUF, must agree on every token; a q8_0
GGUF on at least `check.min_agreement` of them, and its test loss over `check.loss_records`
records (llama.cpp's log-probs, the evaluation's masks) is reported beside transformers'.
A failed check exits naming the prompt and the first differing token.

The job's config (--config, JSON): {"evaluation": the evaluation settings, "check": the
export's check settings, "target": "f16" | "bf16" | "q8_0" | "lora"}.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from workflow_scripts.common.cli import parser as cli_parser
from workflow_scripts.common.io_utils import read_jsonl, write_json

EXACT_TARGETS = ("f16", "bf16", "lora")


def greedy_transformers(model, prompt: list[int], n: int, stops: set[int]) -> list[int]:
    import torch

    ids = torch.tensor([prompt], device=model.device)
    out, past = [], None
    with torch.no_grad():
        for _ in range(n):
            result = model(input_ids=ids, past_key_values=past, use_cache=True)
            past, token = result.past_key_values, int(result.logits[0, -1].argmax())
            out.append(token)
            if token in stops:
                break
            ids = torch.tensor([[token]], device=model.device)
    return out


def greedy_llama(llm, prompt: list[int], n: int, stops: set[int]) -> list[int]:
    import numpy as np

    llm.reset()
    llm.eval(prompt)
    out = []
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        if token in stops:
            break
        llm.eval([token])
    return out


def first_difference(expected: list[int], actual: list[int]) -> int | None:
    for i, (a, b) in enumerate(zip(expected, actual)):
        if a != b:
            return i
    return None if len(expected) == len(actual) else min(len(expected), len(actual))


def agreement(expected: list[int], actual: list[int]) -> tuple[int, int]:
    """Positions compared (the reference's) and how many agree."""
    return len(expected), sum(a == b for a, b in zip(expected, actual))


def llama_loss(llm, features: list[dict]) -> tuple[float, int]:
    """Summed negative log-likelihood of the labelled tokens, and their count."""
    import numpy as np

    total, count = 0.0, 0
    for feature in features:
        ids, labels = feature["input_ids"], feature["labels"]
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
        for t in range(1, len(ids)):
            if labels[t] < 0:
                continue
            row = logits[t - 1]
            top = row.max()
            total += float(top + math.log(np.exp(row - top).sum()) - row[labels[t]])
            count += 1
    return total, count


def describe(tokenizer, token: int | None) -> str:
    return "end of output" if token is None else f"{token} {tokenizer.decode([token])!r}"


def load_llama(gguf: Path, lora: Path | None, context: int, threads: int):
    """llama.cpp on the GGUF (and the LoRA GGUF), keeping every position's logits.

    Weight repacking ("extra buffer types") is off: llama-cpp-python 0.3.36's repacked Q8_0
    kernels crash on this project's AVX512/AMX CPUs (docs/export.md); the plain kernels
    compute the same model."""
    try:
        import llama_cpp.llama_cpp as low_level
        from llama_cpp import Llama
    except ImportError as err:
        raise SystemExit(f"llama-cpp-python is not importable ({err}): the load-back checks "
                         "need it; scripts/setup_export.sh --build builds it (docs/export.md)")
    defaults = low_level.llama_model_default_params

    def without_repacking():
        params = defaults()
        params.use_extra_bufts = False
        return params

    low_level.llama_model_default_params = without_repacking
    try:
        return Llama(model_path=str(gguf), lora_path=str(lora) if lora else None, n_ctx=context,
                     logits_all=True, n_threads=threads, n_threads_batch=threads, verbose=False)
    finally:
        low_level.llama_model_default_params = defaults


def round_like(model, target: str) -> None:
    """Round the reference's weights as a 16-bit GGUF stores them (computing in fp32 still):
    the check then tests the conversion, not the precision the user chose. A q8_0 GGUF is
    compared with the unrounded model, within its agreement threshold."""
    import torch

    dtype = {"f16": torch.float16, "lora": torch.float16, "bf16": torch.bfloat16}.get(target)
    if dtype is not None:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(parameter.to(dtype).to(parameter.dtype))


def prompt_ids(tokenizer, record: dict) -> tuple[str, list[int]]:
    """A test record's prompt as the evaluation renders it: text and token ids."""
    from workflow_scripts.training.chat_tokenize import render

    text = render(tokenizer, record["messages"][:-1], generation_prompt=True,
                  tools=record.get("tools"))
    return text, tokenizer(text, add_special_tokens=False)["input_ids"]


def compare_prompts(llm, model, tokenizer, sample: list[dict], n_tokens: int) -> list[dict]:
    """Per prompt: tokenization equal, the greedy tokens of each side and the first difference."""
    from workflow_scripts.evaluation.generation import stop_token_ids

    stops = set(stop_token_ids(model, tokenizer))
    rows = []
    for record in sample:
        text, ids = prompt_ids(tokenizer, record)
        llama_ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        expected = greedy_transformers(model, ids, n_tokens, stops)
        actual = greedy_llama(llm, ids, n_tokens, stops)
        at = first_difference(expected, actual)
        rows.append({"id": record.get("id"), "prompt": text, "same_prompt_ids": llama_ids == ids,
                     "transformers": expected, "llama_cpp": actual, "first_difference": at,
                     "agree": agreement(expected, actual)[1]})
    return rows


def failure(rows: list[dict], tokenizer, target: str, share: float, needed: float) -> str | None:
    """Why the check fails, naming the prompt and the first differing token; None if it passes."""
    for i, row in enumerate(rows):
        where = f"prompt {i + 1} (record {row['id']}, {row['prompt'][-60:]!r})"
        if not row["same_prompt_ids"]:
            return (f"{where}: llama.cpp tokenizes the prompt text differently from the "
                    "tokenizer (its pre-tokenizer is not the tokenizer's)")
        at = row["first_difference"]
        if at is not None and (target in EXACT_TARGETS or share < needed):
            expected = row["transformers"][at] if at < len(row["transformers"]) else None
            actual = row["llama_cpp"][at] if at < len(row["llama_cpp"]) else None
            return (f"{where}: greedy token {at + 1} differs: transformers "
                    f"{describe(tokenizer, expected)}, llama.cpp {describe(tokenizer, actual)}"
                    f" ({share:.1%} of tokens agree; {target} needs "
                    f"{'all' if target in EXACT_TARGETS else f'{needed:.0%}'})")
    return None


def compare_losses(llm, model, tokenizer, records: list[dict], context: int, batch_size: int) -> dict:
    """The test loss over `records` through transformers and through llama.cpp's log-probs."""
    from workflow_scripts.evaluation.evaluate import record_losses
    from workflow_scripts.training.chat_tokenize import tokenize_records

    rows, _ = record_losses(model, tokenizer, records, context, batch_size)
    reference = sum(r["loss_sum"] for r in rows) / max(sum(r["n_tokens"] for r in rows), 1)
    features = [f for record in records for f in tokenize_records(tokenizer, [record], context)[0]]
    total, count = llama_loss(llm, features)
    return {"loss_transformers": reference, "loss_llama_cpp": total / max(count, 1),
            "loss_tokens": count, "loss_difference": total / max(count, 1) - reference}


def check(job: dict, merged_dir: Path, gguf: Path, lora: Path | None, test_file: Path,
          threads: int) -> dict:
    from workflow_scripts.evaluation.generation import model_context
    from workflow_scripts.evaluation.tool_eval import plain_reply_records
    from workflow_scripts.models.loading import load_model, load_tokenizer

    settings, spec, target = job["evaluation"], job["check"], job["target"]
    import torch

    # fp32 wherever it runs: the reference's own rounding must not decide a greedy tie
    model = load_model(str(merged_dir), quantization=None, dtype=torch.float32)
    round_like(model, target)
    tokenizer = load_tokenizer(str(merged_dir))
    context = model_context(model, settings["max_length"])
    records = list(read_jsonl(test_file))
    llm = load_llama(gguf, lora, context, threads)
    rows = compare_prompts(llm, model, tokenizer, plain_reply_records(records)[: spec["prompts"]],
                           spec["tokens"])
    compared = sum(len(r["transformers"]) for r in rows)
    share = sum(r["agree"] for r in rows) / max(compared, 1)
    why = failure(rows, tokenizer, target, share, spec["min_agreement"])
    result = {"target": target, "file": str(lora or gguf), "size_bytes": (lora or gguf).stat().st_size,
              "prompts": len(rows), "tokens_compared": compared, "agreement": share,
              **compare_losses(llm, model, tokenizer, records[: spec["loss_records"]], context,
                            settings["batch_size"]),
              "verdict": "fail" if why else "pass", "failure": why, "prompts_checked": rows}
    return result


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser(__doc__)
    parser.add_argument("--merged-dir", required=True, type=Path, help="the reference model")
    parser.add_argument("--gguf", required=True, type=Path, help="the GGUF (the base's, with --lora)")
    parser.add_argument("--lora", type=Path, help="a LoRA GGUF applied on --gguf")
    parser.add_argument("--test-file", required=True, type=Path, help="the experiment's test split")
    parser.add_argument("--config", required=True, help="the job's settings as JSON (see above)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True, type=Path, help="the check's result (JSON)")
    args = parser.parse_args(argv)
    result = check(json.loads(args.config), args.merged_dir, args.gguf, args.lora,
                   args.test_file, args.threads)
    if result["verdict"] == "fail":  # no output: the job fails and Snakemake keeps no file
        raise SystemExit(f"{args.lora or args.gguf}: the load-back check failed: {result['failure']}")
    write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "prompts_checked"}))


if __name__ == "__main__":
    main()

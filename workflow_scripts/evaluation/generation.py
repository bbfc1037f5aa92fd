"""Answers from a chat model: decoding settings, stop tokens, prompts fitted to the context,
and batched generation.

One module for every place that generates (evaluation, `compare` and the studio), so that
"greedy with these stop tokens" means the same thing in each of them.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass


def model_context(model, max_length: int) -> int:
    """Tokens a test record (or prompt + answer) may take: the configured evaluation length,
    capped at the model's context."""
    limits = [max_length, getattr(model.config, "max_position_embeddings", None)]
    return min(limit for limit in limits if limit)


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
    # top_k only when sampling: greedy decoding ignores it, and transformers warns about a
    # top_k set beside do_sample=False
    top_k = {"top_k": settings.get("top_k", 0)} if sampling else {}
    return GenerationConfig(
        max_new_tokens=settings["max_new_tokens"], min_new_tokens=0, do_sample=sampling,
        num_beams=1, temperature=settings["temperature"] if sampling else 1.0,
        top_p=settings["top_p"] if sampling else 1.0, **top_k,
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
    from workflow_scripts.training.chat_tokenize import render

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
    from workflow_scripts.models.loading import compute_dtype, load_model, load_tokenizer

    tokenizer = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
    # the dtype training computes in (train_adapter.build_peft_model), not the checkpoint's
    model = load_model(model_dir, trust_remote_code=trust_remote_code, quantization=quantization,
                       dtype=compute_dtype())
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    return model, tokenizer

"""Score a model's function calls on a tool-calling test split.

Every assistant turn of a test record whose reference is a call becomes a sample: the
conversation before that turn (with the record's tools) is the prompt, the model writes
the next assistant turn, and `tool_calls` parses and scores it. The caller (evaluation.evaluate)
does the generation, so base and fine-tuned models share its decoding settings.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

from workflow_scripts.data.formats import tool_names
from workflow_scripts.evaluation.tool_calls import (SCORE_KEYS, ToolCall, call_format,
                                                    parse_tool_calls, reference_calls, score_calls)

# generate_fn(prompts, tools) -> one generated assistant turn (text) per prompt, where
# prompts[i] is a list of messages and tools[i] the function schemas to render with it.
GenerateFn = Callable[[list[list[dict]], list[list[dict]]], list[str]]
METRIC_NAMES = {"tool_valid": "tool_valid_share", "tool_name_correct": "tool_name_accuracy",
                "tool_args_exact": "tool_args_exact"}


class ToolSample(NamedTuple):
    id: str  # "<record id>#<message index>": unique, and the same for base and fine-tuned
    conversation: str  # the record id: a conversation's turns are resampled together
    messages: list[dict]  # the prompt: every message before the reference turn
    tools: list[dict]
    reference: list[ToolCall]


def tool_call_samples(records: list[dict], limit: int | None = None) -> list[ToolSample]:
    """The call turns of `records` in file order, the first `limit` of them."""
    samples = []
    for record in records:
        tools = record.get("tools")
        if not tools:
            continue
        for i, message in enumerate(record["messages"]):
            if message["role"] == "assistant" and message.get("tool_calls"):
                samples.append(ToolSample(f"{record['id']}#{i}", str(record["id"]),
                                          record["messages"][:i], tools,
                                          reference_calls(message)))
    return samples[:limit]


def plain_reply_records(records: list[dict]) -> list[dict]:
    """The records whose last turn is a text reply: the ones text metrics score (a record
    that ends with a call is scored here instead)."""
    return [r for r in records if not r["messages"][-1].get("tool_calls")]


def last_user_text(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def evaluate_tool_calls(tokenizer, records: list[dict], settings: dict,
                        generate_fn: GenerateFn) -> tuple[dict, list[dict]]:
    """(metrics, rows) for the call turns of `records`, at most `settings["samples"]` of them.

    metrics: tool_valid_share, tool_name_accuracy, tool_args_exact (means of the per-sample
    scores, 0-1) and n_tool_samples; empty when the records hold no call. rows: one per
    sample for tool_calls.jsonl: id, conversation (the record id), prompt (the last user message), messages (the whole
    prompt), tools (function names), reference and predicted ([{name, arguments}], predicted
    null when the turn does not parse), prediction (the generated text) and the per-sample
    scores (SCORE_KEYS, 0 or 1) for bootstrap intervals.
    """
    samples = tool_call_samples(records, settings.get("samples"))
    if not samples:
        return {}, []
    fmt = call_format(tokenizer.chat_template)
    texts = generate_fn([s.messages for s in samples], [s.tools for s in samples])
    rows = []
    for sample, text in zip(samples, texts, strict=True):
        predicted = parse_tool_calls(text, fmt)
        rows.append({
            "id": sample.id, "conversation": sample.conversation,
            "prompt": last_user_text(sample.messages),
            "messages": sample.messages, "tools": sorted(tool_names(sample.tools)),
            "reference": [c._asdict() for c in sample.reference],
            "predicted": None if predicted is None else [c._asdict() for c in predicted],
            "prediction": text,
            **score_calls(predicted, sample.reference, tool_names(sample.tools)),
        })
    metrics = {METRIC_NAMES[key]: sum(r[key] for r in rows) / len(rows) for key in SCORE_KEYS}
    return metrics | {"n_tool_samples": len(rows)}, rows

"""Turn chat records into token ids and labels with the tokenizer's own chat template.

Labels are -100 everywhere except the assistant turns. An assistant turn's span is found by
rendering the conversation up to that turn with and without the reply: whatever the template
appends for the reply (its text, the end-of-turn token, the newline after it) is learned,
so the model learns to stop. Character offsets map the spans onto tokens, which works for
any fast tokenizer and any template without per-model special cases.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IGNORE_INDEX = -100


@dataclass
class TokenizeStats:
    """What happened to the records on their way to tokens (reported in train_metrics.json)."""

    kept: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_target: int = 0
    tokens: int = 0
    target_tokens: int = 0
    lengths: list[int] = field(default_factory=list)
    full_lengths: list[int] = field(default_factory=list)  # before truncation, every record
    packed_rows: int | None = None  # rows after packing, when `training.packing` is on

    def as_dict(self) -> dict[str, int]:
        packed = {} if self.packed_rows is None else {"packed_rows": self.packed_rows}
        return packed | {
            "kept": self.kept,
            "truncated": self.truncated,
            "dropped_too_long": self.dropped_too_long,
            "dropped_no_target": self.dropped_no_target,
            "tokens": self.tokens,
            "target_tokens": self.target_tokens,
            "record_tokens": length_summary(self.full_lengths),
        }


def length_summary(lengths: list[int]) -> dict[str, float]:
    """Mean, median, 90th/99th percentile and maximum of record lengths in tokens."""
    if not lengths:
        return {}
    ordered = sorted(lengths)

    def pct(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"mean": round(sum(ordered) / len(ordered), 2), "p50": pct(0.5), "p90": pct(0.9),
            "p99": pct(0.99), "max": ordered[-1]}


def render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )


def assistant_char_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of every assistant reply in it."""
    text = render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(render(tokenizer, messages[:i], generation_prompt=True))
        end = len(render(tokenizer, messages[: i + 1]))
        if not text.startswith(render(tokenizer, messages[: i + 1])):
            raise ValueError("chat template does not render conversations prefix by prefix")
        spans.append((start, end))
    return text, spans


def encode_conversation(tokenizer, messages: list[dict]) -> dict[str, list[int]]:
    """input_ids, attention_mask and labels for one conversation, without truncation."""
    text, spans = assistant_char_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    span_idx = 0
    for token_id, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
        while span_idx < len(spans) and start >= spans[span_idx][1]:
            span_idx += 1
        inside = span_idx < len(spans) and spans[span_idx][0] <= start < spans[span_idx][1]
        labels.append(token_id if inside else IGNORE_INDEX)
    ids = list(enc["input_ids"])
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def tokenize_records(
    tokenizer, records: list[dict[str, Any]], max_length: int, overflow: str = "truncate"
) -> tuple[list[dict[str, list[int]]], TokenizeStats]:
    """Encode every record; too-long ones are truncated or dropped (`overflow`) and counted."""
    if overflow not in ("truncate", "drop"):
        raise ValueError(f"overflow must be 'truncate' or 'drop', not {overflow!r}")
    stats = TokenizeStats()
    features = []
    for record in records:
        feature = encode_conversation(tokenizer, record["messages"])
        stats.full_lengths.append(len(feature["input_ids"]))
        if len(feature["input_ids"]) > max_length:
            if overflow == "drop":
                stats.dropped_too_long += 1
                continue
            feature = {key: value[:max_length] for key, value in feature.items()}
            stats.truncated += 1
        n_target = sum(label != IGNORE_INDEX for label in feature["labels"])
        if n_target == 0:
            stats.dropped_no_target += 1
            continue
        stats.kept += 1
        stats.tokens += len(feature["input_ids"])
        stats.target_tokens += n_target
        stats.lengths.append(len(feature["input_ids"]))
        features.append(feature)
    return features, stats

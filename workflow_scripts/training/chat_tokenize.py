"""Turn chat records into token ids and labels with the tokenizer's own chat template.

Labels are IGNORE_INDEX (-100) everywhere except the assistant turns. An assistant turn's span is found by
rendering the conversation up to that turn with and without the reply: whatever the template
appends for the reply (its text, the end-of-turn token, the newline after it) is learned,
so the model learns to stop. Character offsets map the spans onto tokens, which works for
any fast tokenizer and any template without per-model special cases.

Tool-calling records carry a record-level `tools` list (function schemas) that goes to the
template as `apply_chat_template(..., tools=...)`; function-call turns are assistant turns
and learned, tool results and schemas are not; an assistant turn whose message says
`"loss_weight": 0` is context only. Templates that rewrite earlier turns once
later ones follow (Qwen3 drops earlier reasoning) give one sample per assistant turn.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from workflow_scripts.training.token_loss import IGNORE_INDEX


# TokenizeStats' counts (all but the lengths), as tokenize_dataset sums them over chunks
COUNTS = ("kept", "truncated", "dropped_too_long", "dropped_no_target", "tokens", "target_tokens",
          "turn_samples")


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
    turn_samples: int = 0  # samples from records split turn by turn (see `encode_turns`)

    def as_dict(self) -> dict[str, int]:
        packed = {} if self.packed_rows is None else {"packed_rows": self.packed_rows}
        turns = {"turn_samples": self.turn_samples} if self.turn_samples else {}
        return packed | turns | {
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


def render(tokenizer, messages: list[dict], generation_prompt: bool = False,
           tools: list[dict] | None = None) -> str:
    """The template's text for `messages`; `tools` (function schemas) only when given."""
    extra = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt, **extra
    )


def is_learned(message: dict) -> bool:
    """Whether an assistant message is a target: yes unless it says `loss_weight` 0."""
    return message.get("loss_weight", 1) != 0


class UnstablePrefixError(ValueError):
    """The template renders an earlier turn differently once later turns follow it."""


def _reply(tokenizer, messages: list[dict], i: int, tools: list[dict] | None) -> tuple[str, str]:
    """(prompt, reply): the conversation up to assistant turn `i` with the generation
    prompt, and what the template appends for the reply when it is the newest turn."""
    prompt = render(tokenizer, messages[:i], generation_prompt=True, tools=tools)
    full = render(tokenizer, messages[: i + 1], tools=tools)
    if not full.startswith(prompt):
        raise ValueError(f"chat template: assistant turn {i} does not extend the rendering "
                         "of the turns before it with the generation prompt")
    return prompt, full[len(prompt):]


def assistant_char_spans(tokenizer, messages: list[dict], tools: list[dict] | None = None
                         ) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of every assistant reply in it.

    Raises `UnstablePrefixError` when the whole rendering does not start with the
    rendering of each prefix (a template that rewrites earlier turns).
    """
    text = render(tokenizer, messages, tools=tools)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt, reply = _reply(tokenizer, messages, i, tools)
        if not text.startswith(prompt + reply):
            raise UnstablePrefixError(f"chat template renders turn {i} differently once "
                                      "later turns follow it")
        if is_learned(message):
            spans.append((len(prompt), len(prompt) + len(reply)))
    return text, spans


def span_labels(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]
                ) -> list[int]:
    """Each token's label: its id if it starts inside one of the character `spans`, else ignored."""
    labels = []
    span_idx = 0
    for token_id, (start, end) in zip(ids, offsets):
        while span_idx < len(spans) and start >= spans[span_idx][1]:
            span_idx += 1
        inside = span_idx < len(spans) and spans[span_idx][0] <= start < spans[span_idx][1]
        labels.append(token_id if inside else IGNORE_INDEX)
    return labels


def features_of(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]
                ) -> dict[str, list[int]]:
    """input_ids, attention_mask and labels of one tokenized text."""
    ids = list(ids)
    return {"input_ids": ids, "attention_mask": [1] * len(ids),
            "labels": span_labels(ids, offsets, spans)}


def encode_text(tokenizer, text: str, spans: list[tuple[int, int]]) -> dict[str, list[int]]:
    """Tokenize `text`; tokens that start inside one of the character `spans` are labels."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return features_of(enc["input_ids"], enc["offset_mapping"], spans)


def encode_conversation(tokenizer, messages: list[dict], tools: list[dict] | None = None
                        ) -> dict[str, list[int]]:
    """input_ids, attention_mask and labels for one conversation, without truncation.

    Labels are the assistant replies, function calls included; system prompts, tool
    schemas, user turns and tool results are context only. Raises `UnstablePrefixError`
    for templates that rewrite earlier turns: `encode_turns` handles those.
    """
    return encode_text(tokenizer, *assistant_char_spans(tokenizer, messages, tools))


def encode_turns(tokenizer, messages: list[dict], tools: list[dict] | None = None
                 ) -> list[dict[str, list[int]]]:
    """The features of one conversation: one, or one per assistant turn when the template
    rewrites earlier turns once later ones follow (Qwen3 drops earlier reasoning).

    Turn by turn, each sample is the conversation up to a reply as the template renders it
    at that point (earlier replies in their rewritten form, as context) and the reply as
    the newest turn, the target: exactly what the model sees and must generate when it
    answers that turn. Sample lengths grow with the turns, so tokens grow quadratically.
    """
    try:
        return [encode_conversation(tokenizer, messages, tools)]
    except UnstablePrefixError:
        pass
    features = []
    for i, message in enumerate(messages):
        if message["role"] == "assistant" and is_learned(message):
            prompt, reply = _reply(tokenizer, messages, i, tools)
            features.append(encode_text(tokenizer, prompt + reply,
                                        [(len(prompt), len(prompt) + len(reply))]))
    return features


def _features(tokenizer, records: list[dict[str, Any]]) -> Iterator[list[dict[str, list[int]]]]:
    for record in records:
        yield encode_turns(tokenizer, record["messages"], record.get("tools"))


def tokenize_records(
    tokenizer, records: list[dict[str, Any]], max_length: int, overflow: str = "truncate"
) -> tuple[list[dict[str, list[int]]], TokenizeStats]:
    """Encode every record; too-long ones are truncated or dropped (`overflow`) and counted."""
    check_overflow(overflow)
    return keep_features(_features(tokenizer, records), max_length, overflow)


def check_overflow(overflow: str) -> None:
    if overflow not in ("truncate", "drop"):
        raise ValueError(f"overflow must be 'truncate' or 'drop', not {overflow!r}")


def keep_features(per_record: Iterable[list[dict[str, list[int]]]], max_length: int, overflow: str
                  ) -> tuple[list[dict[str, list[int]]], TokenizeStats]:
    """The samples of each record's features (`encode_turns`), in order, truncated or dropped
    at `max_length` and without those that have no target left, with the counts."""
    stats = TokenizeStats()
    features = []
    for record_features in per_record:
        if len(record_features) > 1:
            stats.turn_samples += len(record_features)
        for feature in record_features:
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

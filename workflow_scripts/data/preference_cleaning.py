"""Cleaning rules for preference records, with the reasons counted in stats.json.

The chat rules (cleaning.py) apply to the prompt and to the answer a model is pushed
towards: the chosen answer, or a KTO completion labelled desirable. A rejected answer or an
undesirable completion is bad on purpose, so only emptiness and length apply to it. New
reasons: `prompt_mismatch` (two conversations whose prompts differ), `empty_answer`,
`identical_answers`, and `duplicate_pair` (the same prompt and answers as a kept record).
"""
from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

from workflow_scripts.data.cleaning import (CONTENT_REASONS, FORMAT_REASONS, TOOL_REASONS,
                                            CleaningRules, Rejection, check_texts,
                                            content_digests, empty_turn, normalize_text)
from workflow_scripts.data.preference_formats import Preference

# Every reason a preference record can be rejected for, in the order the checks run (tool
# calls are not read in preference records, so the tool-calling reasons never arise).
PREFERENCE_REASONS = (
    tuple(r for r in FORMAT_REASONS if r not in TOOL_REASONS) + CONTENT_REASONS
    + ("prompt_mismatch", "empty_prompt", "empty_response", "empty_answer", "identical_answers",
       "too_short_prompt", "too_short_response", "too_long", "repeated_char", "low_cjk_share",
       "duplicate_pair"))


def check_preference(record: Preference, rules: CleaningRules) -> Rejection | None:
    """The first rule `record` fails, as (reason, detail); None when it passes them all.

    `max_chars` bounds the prompt plus the longer answer (what one sequence holds)."""
    empty = empty_turn(record.prompt)  # a user turn (empty_prompt) or an earlier answer
    if empty:
        return empty
    answers = {"chosen": record.chosen, "rejected": record.rejected}
    if record.rejected is None:
        answers = {"completion": record.chosen}
    for name, text in answers.items():
        if not text:
            return "empty_answer", f"{name} is empty"
    if record.rejected is not None and (record.chosen == record.rejected or normalize_text(
            record.chosen) == normalize_text(record.rejected)):
        how = "" if record.chosen == record.rejected else " after NFKC and whitespace collapsing"
        return "identical_answers", f"chosen and rejected are the same{how}"
    total = sum(len(m["content"]) for m in record.prompt) + max(map(len, answers.values()))
    learned = record.label is not False
    messages = record.prompt + [{"role": "assistant", "content": record.chosen}]
    if not learned:  # an undesirable completion: the response rules do not apply
        return check_texts(record.prompt[-1]["content"], "", total, messages,
                           replace(rules, min_response_chars=0))
    return check_texts(record.prompt[-1]["content"], record.chosen, total, messages, rules)


class PreferenceDigests(NamedTuple):
    exact: int  # tells duplicate_pair's exact copies from normalized ones (cleaning.py)
    record: bytes  # prompt and answers (and a KTO label): dedupe and the record id
    prompt: bytes  # the prompt alone: the split, so every pair of one prompt stays together


def preference_digests(record: Preference) -> PreferenceDigests:
    """Digests as `content_digests` computes them for chat records, the answers as messages
    with roles of their own."""
    if record.rejected is None:
        tail = [{"role": "completion", "content": record.chosen},
                {"role": "label", "content": "desirable" if record.label else "undesirable"}]
    else:
        tail = [{"role": "chosen", "content": record.chosen},
                {"role": "rejected", "content": record.rejected}]
    exact, digest = content_digests(record.prompt + tail)
    return PreferenceDigests(exact, digest, content_digests(record.prompt)[1])


def sft_messages(record: Preference) -> list[dict] | None:
    """The record as a chat record that learns its chosen answer (or desirable completion)
    only: earlier assistant turns of the prompt carry `loss_weight` 0, as context. None for
    an undesirable completion."""
    if record.label is False:
        return None
    prompt = [m if m["role"] != "assistant" else {**m, "loss_weight": 0} for m in record.prompt]
    return prompt + [{"role": "assistant", "content": record.chosen}]

"""Preference records (DPO pairs, KTO examples) read from the file formats other tools use.

Every normalizer turns one raw record into a `Preference`: the prompt as chat messages (an
optional system message, then user/assistant turns that alternate and end with a user turn)
and either two answers (`chosen`, `rejected`) or, for KTO, one `completion` (in `chosen`)
with its `label`. A record that does not fit raises `RecordError(reason, detail)` naming the
field, as the chat formats do (formats.py), and is rejected on its own.

- alpaca_pairwise: LLaMA-Factory's Alpaca ranking data (`instruction`, `input`, `system`,
  `history`, `chosen` and `rejected` strings);
- sharegpt_pairwise: LLaMA-Factory's ShareGPT ranking data (`conversations` ending with the
  user's turn, `chosen` and `rejected` message objects {from, value}, `system`);
- openai_pairwise: LLaMA-Factory v1 / OpenAI messages (`chosen_messages`, `rejected_messages`:
  whole conversations that share every message but the last, contents as strings or text
  parts; a record-level `loss_weight`);
- trl_preference: TRL's `prompt`, `chosen`, `rejected` (strings or message lists; without a
  prompt, chosen and rejected are whole conversations and the prompt is what they share);
- swift_preference: ms-swift's `messages` ending with the chosen answer, `rejected_response`;
- kto: unpaired examples, `messages` ending with the completion and a boolean `label` (or
  LLaMA-Factory's `kto_tag`), or TRL's `prompt`, `completion`, `label`.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

from workflow_scripts.data import formats
from workflow_scripts.data.formats import (OPENAI_ROLES, SHAREGPT_ROLES, RecordError, Turns,
                                           _content_text, _field, _loss_weight, _require_object,
                                           _tagged_turns, _type_name, build_conversation,
                                           normalize_alpaca)

# Message lists in preference files use either ShareGPT's or OpenAI's role names.
ROLES = SHAREGPT_ROLES | OPENAI_ROLES
_MESSAGES = {"role_tag": "role", "content_tag": "content", "loss_weight": "loss_weight"}

# Our field names per format, with the file key each one reads by default (`columns`).
PREFERENCE_COLUMNS: dict[str, dict[str, str]] = {
    "alpaca_pairwise": {"instruction": "instruction", "input": "input", "system": "system",
                        "history": "history", "chosen": "chosen", "rejected": "rejected"},
    "sharegpt_pairwise": {"conversations": "conversations", "system": "system",
                          "chosen": "chosen", "rejected": "rejected", "role_tag": "from",
                          "content_tag": "value", "loss_weight": "loss_weight"},
    "openai_pairwise": {"chosen_messages": "chosen_messages",
                        "rejected_messages": "rejected_messages", **_MESSAGES,
                        "weight": "loss_weight"},
    "trl_preference": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected",
                       **_MESSAGES},
    "swift_preference": {"messages": "messages", "rejected_response": "rejected_response",
                         **_MESSAGES},
    "kto": {"messages": "messages", "label": "label", "kto_tag": "kto_tag", "prompt": "prompt",
            "completion": "completion", **_MESSAGES},
}
DERIVED_FORMATS = ("pairs_from",)  # built from another dataset's prepared splits (pairs_from.py)
PREFERENCE_FORMATS = tuple(PREFERENCE_COLUMNS) + DERIVED_FORMATS
DISPLAY_NAMES = formats.DISPLAY_NAMES | {
    "alpaca_pairwise": "Alpaca pairwise", "sharegpt_pairwise": "ShareGPT pairwise",
    "openai_pairwise": "OpenAI pairwise", "trl_preference": "TRL preference",
    "swift_preference": "ms-swift preference", "kto": "KTO", "pairs_from": "pairs_from"}


class Preference(NamedTuple):
    """One normalized preference record; `rejected` is None for a KTO example, whose
    completion is `chosen` and whose `label` says whether it is desirable."""

    prompt: list[dict[str, str]]
    chosen: str
    rejected: str | None = None
    label: bool | None = None
    loss_weight: float | None = None
    has_input: bool = False  # alpaca: a non-empty `input` field


def is_preference_format(fmt: str | None) -> bool:
    return fmt in PREFERENCE_FORMATS


# ---------------------------------------------------------------- shared pieces


def prompt_messages(turns: list[tuple[str, Any]], system: str | None, where: str
                    ) -> list[dict[str, str]]:
    """The prompt's messages from (role, content) turns that must end with the user's."""
    if not turns or turns[-1][0] != "user":
        last = turns[-1][0] if turns else "no turn"
        raise RecordError("bad_turns", f"{where}: the prompt must end with a user turn "
                          f"(the answers come after it), not with {last}")
    return build_conversation(list(turns) + [("assistant", "")], system).messages[:-1]


def _answer_message(item: Any, where: str, keys: dict[str, str]) -> str:
    """The text of one assistant message object ({from, value} or {role, content})."""
    if not isinstance(item, dict):
        raise RecordError("wrong_type", f"{where}: expected a message object or a string, "
                          f"got {_type_name(item)}")
    role_tag, weight_tag = keys["role_tag"], keys["loss_weight"]
    tag = _field(item, role_tag, str, True, f"{where}.{role_tag}")
    if ROLES.get(tag) != "assistant":
        raise RecordError("bad_turns", f"{where}.{role_tag}: an answer is the assistant's, "
                          f"got {tag!r}")
    text = _content_text(item, keys["content_tag"], where, required=True)
    if weight_tag in item and not _loss_weight(item, weight_tag, where):
        raise RecordError("empty_answer", f"{where}.{weight_tag}: 0 leaves the answer out of "
                          "the loss")
    return text.strip()


def _answer(record: dict, key: str, keys: dict[str, str]) -> str:
    """An answer given as a string, one message object, or a list of one assistant message."""
    value = record.get(key)
    if isinstance(value, str):
        return value.strip()
    if value is None:
        _field(record, key, str, True)  # raises missing_field
    if isinstance(value, list):
        if len(value) != 1:
            raise RecordError("bad_turns", f"{key}: expected one assistant message, got "
                              f"{len(value)} messages")
        return _answer_message(value[0], f"{key}[0]", keys)
    return _answer_message(value, key, keys)


def _messages(record: dict, key: str, keys: dict[str, str]) -> Turns:
    return _tagged_turns(_field(record, key, list, True), key, keys, ROLES)


def _split_answer(read: Turns, where: str) -> tuple[list[tuple[str, Any]], str]:
    """A whole conversation as (prompt turns, the final assistant answer)."""
    turns = read.turns
    if not turns or turns[-1][0] != "assistant":
        last = turns[-1][0] if turns else "no turn"
        raise RecordError("bad_turns", f"{where}: must end with the assistant's answer, "
                          f"not with {last}")
    if len(turns) - 1 in read.unweighted:
        raise RecordError("empty_answer", f"{where}[{len(turns) - 1 + bool(read.system)}]: "
                          "loss_weight 0 leaves the answer out of the loss")
    return turns[:-1], turns[-1][1]


def _shared_prompt(record: dict, chosen_key: str, rejected_key: str, keys: dict[str, str]
                   ) -> tuple[list[dict[str, str]], str, str]:
    """(prompt, chosen, rejected) from two whole conversations that must differ only in
    their last message."""
    chosen, rejected = _messages(record, chosen_key, keys), _messages(record, rejected_key, keys)
    chosen_prompt, chosen_answer = _split_answer(chosen, chosen_key)
    rejected_prompt, rejected_answer = _split_answer(rejected, rejected_key)
    if chosen.system != rejected.system:
        raise RecordError("prompt_mismatch", f"{chosen_key} and {rejected_key}: the system "
                          "messages differ")
    if chosen_prompt != rejected_prompt:
        first = next((n for n, (a, b) in enumerate(zip(chosen_prompt, rejected_prompt))
                      if a != b), min(len(chosen_prompt), len(rejected_prompt)))
        offset = 1 if chosen.system else 0
        raise RecordError("prompt_mismatch", f"{chosen_key} and {rejected_key}: the prompts "
                          f"differ from message {first + offset} on ({len(chosen_prompt)} and "
                          f"{len(rejected_prompt)} messages before the answers)")
    return prompt_messages(chosen_prompt, chosen.system, chosen_key), chosen_answer, rejected_answer


def _explicit_prompt(record: dict, key: str, keys: dict[str, str]) -> list[dict[str, str]]:
    """A prompt given as a string (one user turn) or as a message list."""
    value = record.get(key)
    if isinstance(value, str):
        return [{"role": "user", "content": value.strip()}]
    if not isinstance(value, list):
        _field(record, key, list, True)  # missing, null or the wrong type
    read = _tagged_turns(value, key, keys, ROLES)
    return prompt_messages(read.turns, read.system, key)


def _weight(record: dict, key: str) -> float | None:
    """A record-level loss weight: a number >= 0, or None when absent."""
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise RecordError("wrong_type", f"{key}: expected a number >= 0, got {value!r}")
    return float(value)


def _label(record: dict, keys: dict[str, str]) -> bool:
    """KTO's label: `label` or `kto_tag`, a boolean (true: a desirable completion)."""
    given = {key: record[key] for key in (keys["label"], keys["kto_tag"])
             if record.get(key) is not None}
    if not given:
        raise RecordError("missing_field", f"{keys['label']}: missing (or {keys['kto_tag']})")
    for key, value in given.items():
        if not isinstance(value, bool):
            raise RecordError("wrong_type", f"{key}: expected true or false, got {value!r}")
    if len(set(given.values())) > 1:
        raise RecordError("wrong_type", f"{keys['label']} and {keys['kto_tag']} disagree")
    return next(iter(given.values()))


# ---------------------------------------------------------------- normalizers


def normalize_alpaca_pairwise(record: Any, keys: dict[str, str]) -> Preference:
    """instruction (+ "\\n" + input) -> the user turn, after `history`; chosen/rejected strings."""
    record = _require_object(record)
    conversation = normalize_alpaca(record, {**keys, "output": keys["chosen"]})
    rejected = _field(record, keys["rejected"], str, True).strip()
    messages = conversation.messages
    return Preference(messages[:-1], messages[-1]["content"], rejected,
                      has_input=conversation.has_input)


def normalize_sharegpt_pairwise(record: Any, keys: dict[str, str]) -> Preference:
    """conversations ending with the user's turn; chosen/rejected {from: gpt, value}."""
    record = _require_object(record)
    read = _messages(record, keys["conversations"], keys)
    system = (_field(record, keys["system"], str, required=False) or "").strip() or read.system
    prompt = prompt_messages(read.turns, system, keys["conversations"])
    return Preference(prompt, _answer(record, keys["chosen"], keys),
                      _answer(record, keys["rejected"], keys))


def normalize_openai_pairwise(record: Any, keys: dict[str, str]) -> Preference:
    """chosen_messages and rejected_messages: the same conversation up to the last message."""
    record = _require_object(record)
    prompt, chosen, rejected = _shared_prompt(record, keys["chosen_messages"],
                                              keys["rejected_messages"], keys)
    return Preference(prompt, chosen, rejected, loss_weight=_weight(record, keys["weight"]))


def normalize_trl_preference(record: Any, keys: dict[str, str]) -> Preference:
    """An explicit prompt with two answers, or two whole conversations (implicit prompt)."""
    record = _require_object(record)
    chosen_key, rejected_key = keys["chosen"], keys["rejected"]
    if record.get(keys["prompt"]) is None:
        if isinstance(record.get(chosen_key), str) or isinstance(record.get(rejected_key), str):
            raise RecordError("missing_field", f"{keys['prompt']}: missing (with string answers "
                              "the prompt must be given; without one, chosen and rejected are "
                              "whole conversations)")
        prompt, chosen, rejected = _shared_prompt(record, chosen_key, rejected_key, keys)
        return Preference(prompt, chosen, rejected)
    prompt = _explicit_prompt(record, keys["prompt"], keys)
    return Preference(prompt, _answer(record, chosen_key, keys),
                      _answer(record, rejected_key, keys))


def normalize_swift_preference(record: Any, keys: dict[str, str]) -> Preference:
    """messages ending with the chosen answer, plus the rejected answer as a string."""
    record = _require_object(record)
    read = _messages(record, keys["messages"], keys)
    turns, chosen = _split_answer(read, keys["messages"])
    rejected = _field(record, keys["rejected_response"], str, True).strip()
    return Preference(prompt_messages(turns, read.system, keys["messages"]), chosen, rejected)


def normalize_kto(record: Any, keys: dict[str, str]) -> Preference:
    """messages ending with the completion, or TRL's prompt and completion; a label."""
    record = _require_object(record)
    label = _label(record, keys)
    if record.get(keys["completion"]) is not None:
        prompt = _explicit_prompt(record, keys["prompt"], keys)
        return Preference(prompt, _answer(record, keys["completion"], keys), label=label)
    read = _messages(record, keys["messages"], keys)
    turns, completion = _split_answer(read, keys["messages"])
    return Preference(prompt_messages(turns, read.system, keys["messages"]), completion,
                      label=label)


NORMALIZERS: dict[str, Callable[[Any, dict[str, str]], Preference]] = {
    "alpaca_pairwise": normalize_alpaca_pairwise,
    "sharegpt_pairwise": normalize_sharegpt_pairwise,
    "openai_pairwise": normalize_openai_pairwise,
    "trl_preference": normalize_trl_preference,
    "swift_preference": normalize_swift_preference,
    "kto": normalize_kto,
}


def get_normalizer(fmt: str, columns: dict[str, str] | None = None
                   ) -> Callable[[Any], Preference]:
    """The normalizer of a preference format with its column mapping bound; pairs_from's
    derived records are TRL preference records with default keys."""
    if fmt == "pairs_from":
        fmt, columns = "trl_preference", None
    keys = formats.resolve_columns(fmt, columns, PREFERENCE_COLUMNS)
    normalize = NORMALIZERS[fmt]
    return lambda record: normalize(record, keys)


def guess_format(record: Any) -> str | None:
    """The format a raw record looks like, preference formats first; None when none fits."""
    if isinstance(record, dict):
        if "chosen_messages" in record or "rejected_messages" in record:
            return "openai_pairwise"
        if "rejected_response" in record:
            return "swift_preference"
        if "kto_tag" in record or "label" in record:
            return "kto"
        if "chosen" in record and "rejected" in record:
            return ("sharegpt_pairwise" if "conversations" in record else
                    "alpaca_pairwise" if "instruction" in record else "trl_preference")
    return formats.guess_format(record)

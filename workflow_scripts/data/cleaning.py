"""Cleaning rules for normalized chat records, each with a reason code counted in stats.

`check_record` applies the per-record rules in a fixed order (the first that fails names
the reason); `Deduplicator` then drops exact duplicates and duplicates after
normalization (NFKC, which folds full-width to half-width, plus collapsed whitespace).

In tool-calling records the prompt is the last user message and the response the last
assistant turn, whose calls count as its text; tool results count towards `max_chars`.
"""
from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from workflow_scripts.common.io_utils import canonical_json
from workflow_scripts.data.dedupe_index import DigestIndex, Run, digest_halves, first_in_batch

# Every reason a record can be rejected for, in the order the checks run.
TOOL_REASONS = ("bad_tools", "bad_tool_call", "tool_args_not_json", "tool_result_without_call",
                "unknown_function")
FORMAT_REASONS = ("missing_field", "wrong_type", "bad_turns") + TOOL_REASONS
CONTENT_REASONS = ("non_text_content",)  # a well-formed record this workflow cannot train on
QUALITY_REASONS = ("empty_prompt", "empty_response", "too_short_prompt", "too_short_response",
                   "too_long", "repeated_char", "low_cjk_share")
DUPLICATE_REASONS = ("duplicate_exact", "duplicate_normalized")
REASONS = FORMAT_REASONS + CONTENT_REASONS + QUALITY_REASONS + DUPLICATE_REASONS

# CJK unified ideographs: the base block, extension A, compatibility, and extensions B+.
_CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
_SPACE = re.compile(r"\s+")
MIN_REPEATS = 3  # shortest one-character response that counts as degenerate

Rejection = tuple[str, str]  # (reason, detail)


@dataclass(frozen=True)
class CleaningRules:
    """The config's `cleaning` section; `language` comes from the dataset entry."""

    min_prompt_chars: int = 1
    min_response_chars: int = 2
    max_chars: int = 4096  # all messages together
    dedupe: bool = True
    min_cjk_share: float = 0.0  # applied to datasets with language zh only
    language: str = "zh"

    @classmethod
    def from_config(cls, cleaning: dict[str, Any] | None, language: str = "zh") -> CleaningRules:
        known = {f.name for f in fields(cls)} - {"language"}
        unknown = sorted(set(cleaning or {}) - known)
        if unknown:
            raise ValueError(f"cleaning: unknown keys {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        return cls(**(cleaning or {}), language=language)


def cjk_share(text: str) -> float:
    """Share of CJK ideographs among the non-whitespace characters of `text`."""
    visible = len(text) - sum(map(len, _SPACE.findall(text)))
    return len(_CJK.findall(text)) / visible if visible else 0.0


def is_repeated_char(text: str) -> bool:
    """True for a response that only repeats one character ("哈哈哈", "。。。。").

    Two characters are allowed: reduplicated words (谢谢, 嗯嗯, 妈妈) are ordinary Chinese.
    """
    if not text or text[0] != text[-1]:  # settles almost every response at once
        return False
    visible = "".join(text.split())
    return len(visible) >= MIN_REPEATS and visible.count(visible[0]) == len(visible)


def calls_text(calls: list[dict]) -> str:
    """The calls of an assistant turn as one string: names and canonical arguments."""
    return "\n".join(call["function"]["name"] + canonical_json(call["function"]["arguments"])
                     for call in calls)


def message_text(message: dict[str, Any]) -> str:
    """A message's content, and its calls when it has any."""
    calls = message.get("tool_calls")
    if not calls:
        return message["content"]
    return "\n".join(filter(None, [message["content"], calls_text(calls)]))


def digest_view(messages: list[dict[str, Any]], tools: list[dict] | None
                ) -> list[dict[str, str]]:
    """What `content_digests` reads of a tool-calling record: the tool schemas as a first
    message, then each message with its calls as text, so records differing only in their
    calls or tools are not duplicates."""
    view = [{"role": "tools", "content": canonical_json(tools)}] if tools else []
    return view + [{"role": m["role"], "content": message_text(m)} for m in messages]


def empty_turn(messages: list[dict[str, str]]) -> Rejection | None:
    for number, message in enumerate(messages):
        if not message["content"] and not message.get("tool_calls"):
            reason = {"user": "empty_prompt", "assistant": "empty_response"}.get(message["role"])
            if reason:
                return reason, f"message {number} ({message['role']}) is empty"
    return None


def check_record(messages: list[dict[str, Any]], rules: CleaningRules,
                 tool_calling: bool = False) -> Rejection | None:
    """The first rule `messages` fails, as (reason, detail); None when it passes them all.

    The prompt is the last user message, the response the last assistant message; in a
    `tool_calling` record calls count as text (see `message_text`).
    """
    empty = empty_turn(messages)
    if empty:
        return empty
    if tool_calling:
        return check_texts(
            next(m["content"] for m in reversed(messages) if m["role"] == "user"),
            message_text(messages[-1]), sum([len(message_text(m)) for m in messages]),
            messages, rules)
    return check_texts(messages[-2]["content"], messages[-1]["content"],
                       sum([len(m["content"]) for m in messages]), messages, rules)


def check_texts(prompt: str, response: str, total: int, messages: list[dict[str, Any]],
                rules: CleaningRules) -> Rejection | None:
    """The length, repetition and language rules on the last prompt and the response;
    `total` is the length `max_chars` bounds."""
    if len(prompt) < rules.min_prompt_chars:
        return "too_short_prompt", f"prompt has {len(prompt)} < {rules.min_prompt_chars} chars"
    if len(response) < rules.min_response_chars:
        return ("too_short_response",
                f"response has {len(response)} < {rules.min_response_chars} chars")
    if total > rules.max_chars:
        return "too_long", f"{total} > {rules.max_chars} chars in all messages"
    if is_repeated_char(response):
        return "repeated_char", f"response only repeats {response[0]!r}"
    if rules.min_cjk_share > 0 and rules.language == "zh":
        share = cjk_share("".join(m["content"] for m in messages))
        if share < rules.min_cjk_share:
            return "low_cjk_share", f"CJK share {share:.2f} < {rules.min_cjk_share}"
    return None


# Blocks where Chinese text meets compatibility characters: Latin-1, general punctuation to
# CJK compatibility, and the CJK compatibility, small and half/full-width forms.
_COMPAT_BLOCKS = ((0x00A0, 0x0250), (0x2000, 0x3400), (0xFE30, 0xFFF0))


@functools.cache
def _compat_chars() -> tuple[re.Pattern, dict[str, str]]:
    """The characters of `_COMPAT_BLOCKS` that NFKC changes on their own, and their images."""
    table = {}
    for start, stop in _COMPAT_BLOCKS:
        for point in range(start, stop):
            char = chr(point)
            image = unicodedata.normalize("NFKC", char)
            if image != char:
                table[char] = image
    return re.compile("[" + "".join(map(re.escape, sorted(table))) + "]"), table


# The full-width punctuation that most Chinese text holds, with its NFKC images.
_COMMON_COMPAT = tuple((char, unicodedata.normalize("NFKC", char)) for char in "，！？：；（）　")


def nfkc(text: str) -> str:
    """unicodedata's NFKC, several times faster on Chinese text with full-width punctuation.

    Full NFKC is slow once a string holds one character it changes. Mapping the common
    ones one by one first keeps the text compatibility-equivalent, so the final NFKC (run
    only when something is still not normalized) gives exactly the same result.
    """
    if unicodedata.is_normalized("NFKC", text):
        return text
    for char, image in _COMMON_COMPAT:  # str.replace is far cheaper than a regex callback
        if char in text:
            text = text.replace(char, image)
    if unicodedata.is_normalized("NFKC", text):
        return text
    pattern, table = _compat_chars()
    text = pattern.sub(lambda match: table[match.group()], text)
    return text if unicodedata.is_normalized("NFKC", text) else unicodedata.normalize("NFKC", text)


def normalize_text(text: str) -> str:
    """NFKC (full-width to half-width and other compatibility forms), whitespace collapsed."""
    return " ".join(nfkc(text).split())


_NORMALIZED_HASHER = hashlib.blake2b(digest_size=16)


def content_digests(messages: list[dict[str, str]]) -> tuple[int, bytes]:
    """(exact, normalized) digests of the roles and contents of `messages`.

    The normalized one is a 16-byte BLAKE2b: record ids and splits derive from it. The
    exact one only tells the two duplicate reasons apart among records whose normalized
    digests already match, so Python's fast 64-bit string hash is enough.
    """
    # \x00 and \x01 are neither whitespace nor changed by NFKC, so one normalization of
    # the joined text equals joining the normalized parts, once the spaces that collapsing
    # leaves at their edges are dropped.
    exact = "\x00".join([m["role"] + "\x01" + m["content"] for m in messages])
    normalized = normalize_text(exact).replace("\x01 ", "\x01").replace(" \x00", "\x00")
    hasher = _NORMALIZED_HASHER.copy()  # cheaper than a new hasher with its parameters
    hasher.update(normalized.encode())
    return hash(exact), hasher.digest()


class Deduplicator:
    """Remembers kept records by normalized digest; the first occurrence is kept. The
    digests are held compactly (`dedupe_index.DigestIndex`: 32 bytes a record)."""

    def __init__(self) -> None:
        self._index = DigestIndex()

    def check(self, exact: int, normalized: bytes, file: str, index: int) -> Rejection | None:
        """None for a new record (now remembered), else why it is a duplicate of a kept one."""
        return self.check_all([exact], [normalized], file, [index]).get(0)

    def check_all(self, exact: list[int], normalized: list[bytes], file: str,
                  indexes: list[int]) -> dict[int, Rejection]:
        """`check` for records in file order: {position in the lists: why} for duplicates."""
        if not normalized:
            return {}
        hi, lo = digest_halves(normalized)
        exact_hashes = np.array(exact, dtype=np.int64)
        match = self._index.lookup(hi, lo)
        first = first_in_batch(hi, lo)
        positions = np.arange(len(hi))
        new = ~match.found & (first == positions)
        number = self._index.file_number(file)
        self._index.add(Run(hi[new], lo[new], exact_hashes[new],
                            np.full(int(new.sum()), number, np.int32),
                            np.array(indexes, dtype=np.int64)[new]))
        found = {}
        for k in np.flatnonzero(match.found):
            found[int(k)] = self._rejection(exact[k], int(match.exact[k]),
                                            self._index.files[match.file[k]], int(match.index[k]))
        for k in np.flatnonzero(~match.found & (first != positions)):
            found[int(k)] = self._rejection(exact[k], exact[first[k]], file, indexes[first[k]])
        return found

    @staticmethod
    def _rejection(exact: int, first_exact: int, file: str, index: int) -> Rejection:
        reason = "duplicate_exact" if exact == first_exact else "duplicate_normalized"
        return reason, f"same content as {file} record {index}"

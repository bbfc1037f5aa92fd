"""`chat_tokenize.tokenize_records`, exactly, at a fraction of its cost on large corpora.

The reference path renders each conversation 1 + 2 x (assistant turns) times through the chat
template and calls the tokenizer once per record. Here the renders are made once per
conversation *shape* (`template_skeleton`: the template's text around the message texts, and
where each reply starts and ends), each record's text is that skeleton with its texts put back,
and a whole chunk of texts is tokenized in one call to the Rust tokenizer (`encode_batch`, which
`tokenizer(...)` calls underneath). Labels come from the same character spans by the same
rule as the reference path's `span_labels`, then the same truncation, overflow and reject
rules as `keep_features` (for a chunk of fast records both in numpy: `flat_span_labels`,
`keep_arrays`), so the samples and the counts are the same, token for token.

Records go the reference way (`encode_turns`), in their place in the order, when the fast path
cannot show that it gives the same result; `FastChatEncoder.counts` says how many and why:
  - the tokenizer is not a fast (Rust) one, or keeps truncation/padding settings;
  - the template inspects message texts, captures output or reads the clock (see
    template_skeleton), or its skeleton render differs from `apply_chat_template`'s, or the
    skeleton with the first record's own texts put back is not that record's rendering (a
    text written where no placeholder survived, such as a message through `tojson`);
  - the template rewrites earlier turns once later ones follow (Qwen3: one sample per turn),
    or a turn does not extend the rendering before it (the reference path raises the error);
  - a message text is not a string (content parts), a message is not a dict or has no role;
  - the record is the first of its shape (the skeleton is made when the shape comes back).
"""
from __future__ import annotations

from collections import Counter
from itertools import chain
from typing import Any, NamedTuple

import numpy as np

from workflow_scripts.training.chat_tokenize import (COUNTS, TokenizeStats, check_overflow,
                                                      encode_turns, features_of, is_learned,
                                                      keep_features, render)
from workflow_scripts.training.token_loss import IGNORE_INDEX
from workflow_scripts.training.template_skeleton import (ContentInspected, Skeleton, TrackedText,
                                                         boundary, placeholder, split_placeholders,
                                                         template_problem, tracked_template)

MAX_SHAPES = 50_000  # skeletons kept; the cache starts over beyond this (tool-calling data)
FAST = "fast"
FIRST_OF_SHAPE = "the first record of its shape (a skeleton is made at the second)"


class ChunkArrays(NamedTuple):
    """Kept samples back to back: token ids, labels, each sample's length; every sample's
    length before truncation (`TokenizeStats.full_lengths`); the other `TokenizeStats` counts."""

    ids: np.ndarray
    labels: np.ndarray
    lengths: np.ndarray
    full_lengths: np.ndarray
    counts: dict[str, int]


class Fallback(Exception):
    """This record (or every record of its shape) takes the reference path; the message says why."""


def shape_key(record: dict[str, Any]) -> tuple | None:
    """What a skeleton depends on: every message field but a non-empty text, and the tools.
    None when a message is not a dict, has no role, or has a text that is not a string."""
    tools = record.get("tools")
    key: list = [repr(tools) if tools else ""]
    for message in record["messages"]:
        if type(message) is not dict or "role" not in message:
            return None  # the reference path raises its own error for these
        part = []
        for name, value in message.items():
            if name == "content":
                if type(value) is str:
                    value = 1 if value else 0
                elif value is not None:
                    return None
            part.append((name, value if type(value) is str else (repr(value),)))  # "1" != 1
        key.append(tuple(part))
    return tuple(key)


class FastChatEncoder:
    """Features of records as `encode_turns` makes them; one per worker, skeletons cached.

    A skeleton costs about twice the reference path's renders, so by default it is made when a
    shape comes back (`skeleton_at=2`): a record whose shape is new (most tool-calling records,
    whose arguments are part of the shape) costs what it cost before. Tests pass 1."""

    def __init__(self, tokenizer, skeleton_at: int = 2):
        self.tokenizer = tokenizer
        self.skeleton_at = skeleton_at
        self.skeletons: dict[tuple, Skeleton | str] = {}
        self.seen: set[tuple] = set()  # shapes met once, before their skeleton is made
        self.counts: Counter = Counter()
        self.backend, self.problem = _backend(tokenizer)

    def record_features(self, records: list[dict[str, Any]], plans: list | None = None
                        ) -> list[list[dict[str, list[int]]]]:
        """Each record's features, in order: `encode_turns(...)` of it."""
        plans = plans or [self._plan(record) for record in records]
        texts = [plan[0].text(plan[1]) for plan in plans if not isinstance(plan, str)]
        encodings = iter(self._encode(texts)) if texts else iter(())
        out = []
        for record, plan in zip(records, plans):
            self.counts[FAST if not isinstance(plan, str) else plan] += 1
            if isinstance(plan, str):
                out.append(encode_turns(self.tokenizer, record["messages"], record.get("tools")))
                continue
            skeleton, contents = plan
            encoding = next(encodings)
            spans = [(start.offset(contents), end.offset(contents)) for start, end in skeleton.spans]
            out.append([features_of(encoding.ids, encoding.offsets, spans)])
        return out

    def encode_chunk(self, records: list[dict[str, Any]], max_length: int, overflow: str
                     ) -> ChunkArrays:
        """The kept samples of `records` as flat arrays, exactly what `tokenize_records` keeps,
        with its counts. When every record takes the fast path (and its replies come in
        order), labels, truncation and rejects are computed for the whole chunk with numpy;
        otherwise record by record (`record_features`, `keep_features`)."""
        check_overflow(overflow)
        plans = [self._plan(record) for record in records]
        arrays = self._fast_arrays(plans, max_length, overflow) if plans else None
        if arrays is not None:
            return arrays
        features, stats = keep_features(self.record_features(records, plans), max_length,
                                        overflow)
        return ChunkArrays(
            np.fromiter(chain.from_iterable(f["input_ids"] for f in features), np.int32),
            np.fromiter(chain.from_iterable(f["labels"] for f in features), np.int32),
            np.asarray(stats.lengths, np.int64), np.asarray(stats.full_lengths, np.int64),
            {key: getattr(stats, key) for key in COUNTS})

    def _fast_arrays(self, plans: list, max_length: int, overflow: str) -> ChunkArrays | None:
        if any(isinstance(plan, str) for plan in plans):
            return None
        spans = [[(a.offset(contents), b.offset(contents)) for a, b in skeleton.spans]
                 for skeleton, contents in plans]
        if any(s[i][1] > s[i + 1][1] for s in spans for i in range(len(s) - 1)):
            return None
        texts = [skeleton.text(contents) for skeleton, contents in plans]
        encodings = self._encode(texts)
        self.counts[FAST] += len(plans)
        ids = [e.ids for e in encodings]
        lengths = np.fromiter(map(len, ids), np.int64, len(ids))
        n_tokens = int(lengths.sum())
        offsets = chain.from_iterable(chain.from_iterable(e.offsets for e in encodings))
        starts = np.fromiter(offsets, np.int64, 2 * n_tokens)[::2]
        ids_flat = np.fromiter(chain.from_iterable(ids), np.int64, n_tokens)
        labels = flat_span_labels(ids_flat, starts, lengths, spans, max(map(len, texts)) + 1)
        return keep_arrays(ids_flat, labels, lengths, max_length, overflow)

    def _plan(self, record: dict[str, Any]) -> tuple[Skeleton, list[str]] | str:
        """(skeleton, message texts) for the fast path, or why the record falls back."""
        if self.problem:
            return self.problem
        key = shape_key(record)
        if key is None:
            return "a message is not a dict, has no role or its text is not a string"
        skeleton = self.skeletons.get(key)
        if skeleton is None:
            if self.skeleton_at > 1 and key not in self.seen:
                if len(self.seen) >= MAX_SHAPES:
                    self.seen.clear()
                self.seen.add(key)
                return FIRST_OF_SHAPE
            self.seen.discard(key)
            if len(self.skeletons) >= MAX_SHAPES:
                self.skeletons.clear()
            try:
                skeleton = build_skeleton(self.tokenizer, record["messages"], record.get("tools"))
            except Fallback as why:
                skeleton = str(why)
            self.skeletons[key] = skeleton
        if isinstance(skeleton, str):
            return skeleton
        return skeleton, [m.get("content") or "" for m in record["messages"]]

    def _encode(self, texts: list[str]) -> list:
        """`encode_batch` with the backend in the state `tokenizer(...)` puts it in."""
        if not _backend_ready(self.tokenizer, self.backend):
            self.tokenizer("", add_special_tokens=False)  # resets truncation and padding
            if not _backend_ready(self.tokenizer, self.backend):
                raise RuntimeError("the Rust tokenizer keeps truncation or padding settings")
        return self.backend.encode_batch(texts, add_special_tokens=False)


def _backend(tokenizer) -> tuple[Any, str | None]:
    """The Rust tokenizer under `tokenizer`, or why there is none to use."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None, "the tokenizers package is missing"
    backend = getattr(tokenizer, "_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        return None, "not a fast (Rust) tokenizer"
    tokenizer("", add_special_tokens=False)  # puts the backend in the state every call sets
    if not _backend_ready(tokenizer, backend):
        return None, "the Rust tokenizer keeps truncation or padding settings"
    return backend, None


def _backend_ready(tokenizer, backend) -> bool:
    split = bool(getattr(tokenizer, "split_special_tokens", False))
    return (backend.truncation is None and backend.padding is None
            and backend.encode_special_tokens == split)


def build_skeleton(tokenizer, messages: list[dict], tools: list[dict] | None) -> Skeleton:
    """The skeleton of `messages`' shape, made by the reference path's own renders with
    placeholders for the texts. Raises `Fallback` where it cannot stand for them."""
    holes = [dict(m, content=placeholder(i)) if isinstance(m.get("content"), str) and m["content"]
             else m for i, m in enumerate(messages)]
    full = _render_both(tokenizer, holes, False, tools)
    parts = split_placeholders(full)
    if parts is None:
        raise Fallback("the template alters message texts")
    _check_holes(tokenizer, messages, tools, parts)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prompt = _render_both(tokenizer, holes[:i], True, tools)
        turn = _render_both(tokenizer, holes[: i + 1], False, tools)
        if not turn.startswith(prompt):
            raise Fallback("an assistant turn does not extend the rendering before it")
        if not full.startswith(turn):
            raise Fallback("the template rewrites earlier turns (one sample per turn)")
        if split_placeholders(prompt) is None or split_placeholders(turn) is None:
            raise Fallback("the template alters message texts")
        if is_learned(message):
            spans.append((boundary(prompt), boundary(turn)))
    return Skeleton(parts, tuple(spans))


def _check_holes(tokenizer, messages: list[dict], tools: list[dict] | None,
                 parts: tuple[str | int, ...]) -> None:
    """Raises `Fallback` unless the skeleton with this record's own texts put back is the
    record's rendering: a text written where no hole was left (a message through `tojson`
    with ASCII escapes turns the placeholder's delimiters into `\\uXXXX`) would otherwise
    put the placeholder's text in every sample of the shape."""
    try:
        reference = render(tokenizer, messages, False, tools)
    except Exception as err:  # the reference path raises it again for the record
        raise Fallback(f"the template fails on this shape ({type(err).__name__})") from None
    contents = [m.get("content") or "" for m in messages]
    if Skeleton(parts, ()).text(contents) != reference:
        raise Fallback("the template writes a message text where no placeholder survives")


def _render_both(tokenizer, messages: list[dict], generation_prompt: bool,
                 tools: list[dict] | None) -> str:
    """`render(...)` of `messages`, checked against a render in which each text is tracked."""
    try:
        reference = render(tokenizer, messages, generation_prompt, tools)
    except Exception as err:  # the reference path raises it again for the record
        raise Fallback(f"the template fails on this shape ({type(err).__name__})") from None
    tracked = _tracked_render(tokenizer, messages, generation_prompt, tools)
    if tracked != reference:
        raise Fallback("the tracked render differs from apply_chat_template's")
    return reference


def _tracked_render(tokenizer, messages: list[dict], generation_prompt: bool,
                    tools: list[dict] | None) -> str:
    """What `apply_chat_template(..., tokenize=False)` renders, with the placeholders tracked."""
    try:
        from transformers.utils import chat_template_utils as ctu
    except ImportError:
        raise Fallback("transformers' template renderer is not importable") from None
    try:
        source = tokenizer.get_chat_template(None, tools or None)
        compiled = ctu._compile_jinja_template(source)
        problem = template_problem(compiled.environment, source)
        if problem:
            raise Fallback(problem)
        compiled = tracked_template(compiled, source)
        chat = []
        for message in messages:
            plain = ctu._plain_template_data({k: v for k, v in message.items() if v is not None})
            if isinstance(plain.get("content"), str) and plain["content"].startswith("\ue000"):
                plain["content"] = TrackedText(plain["content"])
            chat.append(plain)
        chat = ctu._alias_reasoning_fields(chat)
        context = ctu._plain_template_data(dict(tokenizer.special_tokens_map))
        return compiled.render(messages=chat, tools=ctu._plain_template_data(tools or None),
                               documents=None, add_generation_prompt=generation_prompt, **context)
    except ContentInspected as err:
        raise Fallback(f"the template inspects message texts ({err})") from None
    except Fallback:
        raise
    except Exception as err:
        raise Fallback(f"tracked render failed ({type(err).__name__})") from None


def tokenize_records_fast(tokenizer, records: list[dict[str, Any]], max_length: int,
                          overflow: str = "truncate", encoder: FastChatEncoder | None = None
                          ) -> tuple[list[dict[str, list[int]]], TokenizeStats]:
    """`tokenize_records(tokenizer, records, max_length, overflow)`, the same result."""
    check_overflow(overflow)
    encoder = encoder or FastChatEncoder(tokenizer)
    return keep_features(encoder.record_features(records), max_length, overflow)


def flat_span_labels(ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                     spans: list[list[tuple[int, int]]], stride: int) -> np.ndarray:
    """`chat_tokenize.span_labels` for many texts at once (tokens back to back, `lengths` per
    text, each text's character spans, ends in order, all offsets below `stride`).

    span_labels walks the spans as the tokens come: a token moves the walk past every span
    that ends at or before its start, never back, and is a label if it starts inside the span
    reached. With ends in order, the span reached is the running maximum of the number of
    spans ending at or before each start; numbering every text's positions from text x stride
    makes one running maximum serve all texts (a text's counts start where the last one's end).
    """
    n_spans = np.fromiter(map(len, spans), np.int64, len(spans))
    text_of_span = np.repeat(np.arange(len(spans), dtype=np.int64), n_spans)
    span_bounds = np.fromiter(chain.from_iterable(chain.from_iterable(spans)), np.int64,
                              2 * int(n_spans.sum())).reshape(-1, 2)
    begin = text_of_span * stride + span_bounds[:, 0]
    end = text_of_span * stride + span_bounds[:, 1]
    text_of_token = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    position = text_of_token * stride + starts
    if not len(end):
        return np.full(len(ids), IGNORE_INDEX, np.int64)
    reached = np.maximum.accumulate(np.searchsorted(end, position, side="right"))
    last = np.cumsum(n_spans)  # one past each text's last span
    at = np.minimum(reached, len(end) - 1)
    inside = (reached < last[text_of_token]) & (begin[at] <= position) & (position < end[at])
    return np.where(inside, ids, IGNORE_INDEX)


def keep_arrays(ids: np.ndarray, labels: np.ndarray, lengths: np.ndarray, max_length: int,
                overflow: str) -> ChunkArrays:
    """`chat_tokenize.keep_features` on one sample per record, as arrays: over-long samples
    truncated or dropped, those left without a target dropped, the rest kept, counted."""
    check_overflow(overflow)
    over = lengths > max_length
    fits = ~over if overflow == "drop" else np.ones(len(lengths), bool)
    keep_length = np.minimum(lengths, max_length)
    sample = np.repeat(np.arange(len(lengths)), lengths)
    first = np.cumsum(lengths) - lengths
    within = np.arange(len(ids)) - np.repeat(first, lengths) < np.repeat(keep_length, lengths)
    targets = np.bincount(sample[within & (labels != IGNORE_INDEX)], minlength=len(lengths))
    kept = fits & (targets > 0)
    take = within & np.repeat(kept, lengths)
    counts = {"kept": int(kept.sum()),
              "truncated": 0 if overflow == "drop" else int(over.sum()),
              "dropped_too_long": int(over.sum()) if overflow == "drop" else 0,
              "dropped_no_target": int((fits & (targets == 0)).sum()),
              "tokens": int(keep_length[kept].sum()), "target_tokens": int(targets[kept].sum()),
              "turn_samples": 0}  # the keys of COUNTS
    return ChunkArrays(ids[take].astype(np.int32), labels[take].astype(np.int32),
                       keep_length[kept].astype(np.int64), lengths.astype(np.int64), counts)

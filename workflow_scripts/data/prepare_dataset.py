"""Turn one configured dataset into train/valid/test chat records, rejects and stats.

    python -m workflow_scripts.data.prepare_dataset --name NAME --config JSON --out-dir DIR

JSON is `{"dataset": <datasets.NAME entry>, "cleaning": {...}, "split": {...}, "seed": 42}`;
file paths in it are relative to the current directory. One pass over each file:
normalize -> clean -> dedupe -> split -> write; large files are parsed and cleaned in
spans by several processes, with the same outputs. The outputs are written under temporary
names and renamed at the end, so a failed run leaves no half-written split behind.

Memory does not grow with the corpus beyond the dedupe index (32 bytes a kept record): each
file is read in blocks of BLOCK_BYTES, records are written as their block is done, and the
length statistics are counts per length.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import json.encoder
import math
import multiprocessing
import os
import re
import sys
from array import array
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

from workflow_scripts.common.cli import parser as cli_parser
from workflow_scripts.common.io_utils import write_json
from workflow_scripts.common.run_info import write_run_info
from workflow_scripts.data import formats, preference_formats
from workflow_scripts.data.cleaning import (FORMAT_REASONS, REASONS, CleaningRules, Deduplicator,
                                            check_record, content_digests, digest_view)
from workflow_scripts.data.formats import Conversation, DataError, RecordError
from workflow_scripts.data.pairs_from import PairsReader
from workflow_scripts.data.preference_cleaning import (PREFERENCE_REASONS, check_preference,
                                                       preference_digests, sft_messages)
from workflow_scripts.data.preference_formats import Preference, is_preference_format
from workflow_scripts.data.split import SPLITS, HashSplitter, file_plan, record_id

OUTPUT_FILES = {split: f"{split}.jsonl" for split in SPLITS} | {"rejects": "rejects.jsonl"}
# A preference dataset also writes its records, one per pair (or KTO example), per split.
PAIR_FILES = {f"{split}.pairs": f"{split}.pairs.jsonl" for split in SPLITS}
_encode = json.JSONEncoder(ensure_ascii=False, check_circular=False).encode
_encode_str = json.encoder.encode_basestring  # the C string encoder that keeps non-ASCII
MEASURES = ("prompt_chars", "response_chars", "turns", "has_input", "trimmed")
SPAN_CHARS = 1 << 21  # characters per span of a file: about 7,000 Alpaca records
BLOCK_BYTES = 1 << 26  # bytes of a file read at a time (64 MiB: 32 spans of Chinese text)
TAIL_CHARS = 1 << 20  # characters kept back at a block's end for a record that crosses it


class OutputFiles:
    """The JSON Lines outputs (`names`: key -> file name), written to temporary files until
    `commit`."""

    def __init__(self, out_dir: Path, names: dict[str, str] = OUTPUT_FILES):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.names = names
        self._handles = {key: open(self._tmp(name), "w", encoding="utf-8")
                         for key, name in names.items()}

    def _tmp(self, name: str) -> Path:
        return self.out_dir / f".{name}.tmp"

    def write_lines(self, key: str, lines: list[str]) -> None:
        self._handles[key].write("".join(lines))

    def commit(self, stats: dict) -> None:
        self._close()
        for name in self.names.values():
            os.replace(self._tmp(name), self.out_dir / name)
        write_json(self.out_dir / "stats.json", stats)

    def abort(self) -> None:
        self._close()
        for name in self.names.values():
            self._tmp(name).unlink(missing_ok=True)

    def _close(self) -> None:
        for handle in self._handles.values():
            handle.close()


class Lengths(Counter):
    """Lengths as counts per length: exact summaries in memory that grows with the number
    of distinct lengths only (at most `max_chars`), never with the records."""

    def extend(self, values) -> None:
        self.update(values)

    def number(self) -> int:
        """How many lengths were counted."""
        return sum(self.values())

    def total_length(self) -> int:
        return sum(length * count for length, count in self.items())


def summarize(values: Lengths) -> dict[str, float]:
    """Mean and nearest-rank percentiles of the lengths, as of the sorted list of them."""
    n = values.number()
    if not n:
        return {"mean": 0.0, "p50": 0, "p90": 0, "p99": 0, "max": 0}
    ordered = sorted(values.items())

    def rank(q: float) -> int:
        position, seen = max(0, math.ceil(q * n) - 1), 0
        for length, count in ordered:
            seen += count
            if seen > position:
                return length
        return ordered[-1][0]

    return {"mean": round(values.total_length() / n, 2), "p50": rank(0.5),
            "p90": rank(0.9), "p99": rank(0.99), "max": ordered[-1][0]}


@dataclass
class PreferenceTally:
    """What stats.json says of a preference dataset's kept records, besides the chat
    measures (whose response is the chosen answer or the completion)."""

    unpaired: bool  # KTO examples rather than pairs
    sft_records: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    rejected_chars: Lengths = field(default_factory=Lengths)
    labels: Counter = field(default_factory=Counter)  # KTO: desirable / undesirable
    weighted: int = 0  # pairs with a loss_weight

    def keep(self, facts: list[PairFacts]) -> None:
        self.rejected_chars.extend(f.rejected_chars for f in facts if f.label is None)
        self.labels.update("desirable" if f.label else "undesirable" for f in facts
                           if f.label is not None)
        self.weighted += sum(f.weighted for f in facts)

    def result(self) -> dict[str, Any]:
        out = {"kind": "unpaired" if self.unpaired else "pairs", "sft_records": self.sft_records}
        if self.unpaired:
            return out | {"labels": {k: self.labels[k] for k in ("desirable", "undesirable")}}
        return out | {"rejected_chars": summarize(self.rejected_chars),
                      "with_loss_weight": self.weighted}


class PairFacts(NamedTuple):
    """What the stats keep of one passed preference record."""

    rejected_chars: int  # 0 for a KTO example
    label: bool | None
    weighted: bool


@dataclass
class DatasetStats:
    """Counts gathered while records stream by; `result` is the stats.json content."""

    name: str
    fmt: str
    files: dict[str, str] = field(default_factory=dict)
    per_file: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    splits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    prompt_chars: Lengths = field(default_factory=Lengths)
    response_chars: Lengths = field(default_factory=Lengths)
    turns: Lengths = field(default_factory=Lengths)
    with_input: int = 0
    trimmed_turns: int = 0
    tool_records: int = 0  # records with a `tools` list
    calls: Lengths = field(default_factory=Lengths)  # calls, per record with any
    functions: Counter = field(default_factory=Counter)  # calls per function name
    preference: PreferenceTally | None = None  # set for a preference dataset

    def add_file(self, path: str, sha256: str, raw: int, split: str | None) -> None:
        self.files[path] = sha256
        self.per_file[path] = {"raw": raw, "kept": 0, "rejected": 0, "split": split or "hash"}

    def keep(self, path: str, measures: dict[str, array], kept: list[int] | None,
             calls: dict[int, tuple[str, ...] | None]) -> None:
        """Records kept from one span, by their positions in `measures` (None: all);
        `calls` holds the called function names of the tool-calling ones by position.
        `splits` is counted by the caller."""
        pick = (lambda values: values) if kept is None else (  # noqa: E731
            lambda values: [values[k] for k in kept])
        turns = pick(measures["turns"])
        self.per_file[path]["kept"] += len(turns)
        self.prompt_chars.extend(pick(measures["prompt_chars"]))
        self.response_chars.extend(pick(measures["response_chars"]))
        self.turns.extend(turns)
        self.with_input += sum(pick(measures["has_input"]))
        self.trimmed_turns += sum(pick(measures["trimmed"]))
        kept_positions = set(kept) if calls and kept is not None else None
        for position, names in calls.items():
            if kept_positions is None or position in kept_positions:
                self.tool_records += 1
                if names:
                    self.calls[len(names)] += 1
                    self.functions.update(names)

    def reject(self, path: str, reason: str) -> None:
        self.per_file[path]["rejected"] += 1
        self.rejected[reason] += 1

    @property
    def kept(self) -> int:
        return self.turns.number()

    def result(self, rules: CleaningRules) -> dict[str, Any]:
        kept = max(self.kept, 1)
        return {
            "dataset": self.name, "format": self.fmt,
            "raw": sum(f["raw"] for f in self.per_file.values()),
            "kept": self.kept, "rejected": self.rejected, "splits": self.splits,
            "lengths": {"prompt_chars": summarize(self.prompt_chars),
                        "response_chars": summarize(self.response_chars)},
            "turns": {"mean": summarize(self.turns)["mean"], "max": max(self.turns, default=0)},
            "share_with_input": round(self.with_input / kept, 4),
            "share_with_history": round(sum(c for t, c in self.turns.items() if t > 1) / kept,
                                        4),
            "files": self.files, "per_file": self.per_file,
            "trimmed_turns": self.trimmed_turns, "cleaning": vars(rules),
            "tool_calls": {"records_with_tools": self.tool_records,
                           "records_with_calls": self.calls.number(),
                           "calls": self.calls.total_length(),
                           "calls_per_record": summarize(self.calls),
                           "functions": dict(sorted(self.functions.items()))},
        } | ({} if self.preference is None else {"preference": self.preference.result()})


@dataclass
class FileJob:
    """What processing one file's spans needs; forked workers inherit it."""

    text: str
    layout: str
    path: str
    split: str | None  # a pre-split file's split, or None to split by hash
    normalize: Callable[[Any], Conversation | Preference]  # Preference when `pairs`
    rules: CleaningRules
    splitter: HashSplitter
    pairs: bool = False  # a preference dataset's file
    # `text` is one block of the file: whether it starts and ends the file, and how array
    # spans are cut (`formats.array_cut` of the file's start; None: one span per block)
    first: bool = True
    last: bool = True
    cut: re.Pattern | None = None


@dataclass
class SpanResult:
    """One span's records, minus the parts that need the whole file (dedupe, indexes).

    Records that pass the per-record rules are kept column by column (cheap to send back
    from a worker); output lines lack the index, which the parent puts in.
    """

    start: int
    end: int = 0
    error: bool = False  # the span does not parse from its start
    count: int = 0
    # i (index in the span), reason, raw record, reject line after the index, detail
    rejects: list[tuple[int, str, Any, str, str]] = field(default_factory=list)
    passed: array = field(default_factory=lambda: array("L"))  # i of each passed record
    exact: list[int] = field(default_factory=list)
    digests: list[bytes] = field(default_factory=list)
    by_split: dict[str, list[int]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    lines: list[str] = field(default_factory=list)  # output line up to the index
    places: array = field(default_factory=lambda: array("q"))  # start, end of each text
    measures: dict[str, array] = field(
        default_factory=lambda: {key: array("L") for key in MEASURES})
    calls: dict[int, tuple[str, ...]] = field(default_factory=dict)  # tool records' calls
    # preference records: the chat view's line (None for an undesirable completion) and
    # digests, and what the stats keep, by position in `passed`
    sft_lines: list[str | None] = field(default_factory=list)
    sft_digests: list[tuple[int, bytes]] = field(default_factory=list)
    pair_facts: list[PairFacts] = field(default_factory=list)

    def adder(self) -> Callable[[int, Conversation, int, bytes, str, str, tuple[int, int]],
                                None]:
        """add(i, conversation, exact, digest, split, line, place) for a passed record; the
        appends are bound once, as it runs for every record."""
        passed, count = self.passed.append, self.passed.__len__
        exact_digests, digests, lines = self.exact.append, self.digests.append, self.lines.append
        places, splits = self.places.extend, {s: p.append for s, p in self.by_split.items()}
        prompts, responses, turns, inputs, trimmed = (self.measures[k].append for k in MEASURES)

        def add(i: int, conversation: Conversation, exact: int, digest: bytes, split: str,
                line: str, place: tuple[int, int]) -> None:
            messages = conversation.messages
            splits[split](count())
            passed(i)
            exact_digests(exact)
            digests(digest)
            lines(line)
            places(place)
            prompts(len(messages[0]["content"]) if len(messages) == 2
                    else sum([len(m["content"]) for m in messages[:-1]]))
            responses(len(messages[-1]["content"]))
            turns(len(messages) // 2)  # user/assistant pairs, a system or not
            inputs(conversation.has_input)
            trimmed(conversation.trimmed)
            if conversation.tools is not None:
                self.calls[count() - 1] = called_functions(messages)
        return add

    def reject(self, i: int, reason: str, detail: str, raw: Any) -> None:
        self.rejects.append((i, reason, raw, reject_tail(reason, detail, raw), detail))


_job: FileJob | None = None


def _set_job(job: FileJob | None) -> None:
    global _job
    _job = job


def process_span(bounds: tuple[int, int]) -> SpanResult:
    """Parse, normalize, check and hash the records of one span of `_job`'s text."""
    job, (start, stop) = _job, bounds
    try:
        span = formats.parse_span(job.text, job.layout, start, stop, job.first, job.last)
    except formats.SpanError:
        return SpanResult(start, error=True)
    result = SpanResult(start, span.end, count=len(span.records))
    (_add_pairs if job.pairs else _add_records)(job, span, result)
    return result


def _add_records(job: FileJob, span: formats.Span, result: SpanResult) -> None:
    """Normalize, check and hash a span's chat records into `result`."""
    add, reject, places = result.adder(), result.reject, span.places
    normalize, rules, split, splitter = job.normalize, job.rules, job.split, job.splitter
    source = _encode(job.path)
    for i, raw in enumerate(span.records):
        try:
            conversation = normalize(raw)
        except RecordError as err:
            reject(i, err.reason, err.detail, raw)
            continue
        messages, tools = conversation.messages, conversation.tools
        rejection = check_record(messages, rules, tools is not None)
        if rejection is not None:
            reject(i, *rejection, raw)
            continue
        if tools is None:
            exact, digest = content_digests(messages)
            line = (weighted_kept_line if conversation.weighted else kept_line)(
                record_id(digest), messages, source)
        else:
            exact, digest = content_digests(digest_view(messages, tools))
            line = tool_kept_line(record_id(digest), messages, tools, source)
        add(i, conversation, exact, digest, split or splitter(digest), line, places[i])


def _add_pairs(job: FileJob, span: formats.Span, result: SpanResult) -> None:
    """`_add_records` for preference records: split by the prompt's digest, so every pair of
    one prompt lands in the same split; each passed record also gets its chat view."""
    add, reject, places = result.adder(), result.reject, span.places
    source = _encode(job.path)
    for i, raw in enumerate(span.records):
        try:
            record = job.normalize(raw)
        except RecordError as err:
            reject(i, err.reason, err.detail, raw)
            continue
        rejection = check_preference(record, job.rules)
        if rejection is not None:
            reject(i, *rejection, raw)
            continue
        digests = preference_digests(record)
        view = sft_messages(record)
        measured = view or record.prompt + [{"role": "assistant", "content": record.chosen}]
        add(i, Conversation(measured, record.has_input), digests.exact, digests.record,
            job.split or job.splitter(digests.prompt), preference_line(
                record_id(digests.record), record, source), places[i])
        sft_exact, sft_digest = content_digests(view) if view else (0, b"")
        result.sft_digests.append((sft_exact, sft_digest))
        weighted = view and any("loss_weight" in m for m in view)
        result.sft_lines.append(view and (weighted_kept_line if weighted else kept_line)(
            record_id(sft_digest), view, source))
        result.pair_facts.append(PairFacts(len(record.rejected or ""), record.label,
                                           record.loss_weight is not None))


def preference_line(record_id: str, record: Preference, source: str) -> str:
    """A kept preference record's line in {split}.pairs.jsonl, up to its index."""
    row = {"id": record_id, "messages": record.prompt}
    if record.rejected is None:
        row |= {"completion": record.chosen, "label": record.label}
    else:
        row |= {"chosen": record.chosen, "rejected": record.rejected}
        if record.loss_weight is not None:
            row["loss_weight"] = record.loss_weight
    return _encode(row)[:-1] + f', "source": {{"file": {source}, "index": '


def reject_tail(reason: str, detail: str, raw: Any) -> str:
    """A rejects line after its file and index: the encoder writes a dict's items in
    order, so the line is the encoded row whatever the index."""
    return ", " + _encode({"reason": reason, "detail": detail, "record": raw})[1:] + "\n"


def kept_line(record_id: str, messages: list[dict], source: str) -> str:
    """A kept record's output line up to its index: what `_encode` gives, twice as fast,
    since roles and ids need no escaping and only the contents go through the encoder."""
    turns = "}, ".join([_TURN_STARTS[m["role"]] + _encode_str(m["content"]) for m in messages])
    return (f'{{"id": "{record_id}", "messages": [{turns}}}], '
            f'"source": {{"file": {source}, "index": ')


def weighted_kept_line(record_id: str, messages: list[dict], source: str) -> str:
    """`kept_line` for a record whose messages carry a `loss_weight`."""
    return (f'{{"id": "{record_id}", "messages": {_encode(messages)}, '
            f'"source": {{"file": {source}, "index": ')


def tool_kept_line(record_id: str, messages: list[dict], tools: list[dict], source: str) -> str:
    """`kept_line` for a tool-calling record, which also has a record-level `tools` list."""
    return (f'{{"id": "{record_id}", "messages": {_encode(messages)}, '
            f'"tools": {_encode(tools)}, "source": {{"file": {source}, "index": ')


def called_functions(messages: list[dict]) -> tuple[str, ...]:
    """The names of the functions a record's assistant turns call, in order."""
    return tuple(call["function"]["name"] for m in messages for call in m.get("tool_calls", ()))


_TURN_STARTS = {role: f'{{"role": "{role}", "content": ' for role in ("system", "user", "assistant")}


def run_spans(job: FileJob, workers: int, limit: int | None = None) -> Iterator[SpanResult]:
    """The block's span results in file order, each starting where the one before ended,
    for the records that start before `limit` (default: the block's end).

    A span whose guessed start fell inside a record is redone here from the true start;
    a span that does not parse from a true start raises `SpanError`.
    """
    limit = len(job.text) if limit is None else limit
    starts = ([0] if job.layout == "array" and job.cut is None
              else formats.span_starts(job.text, job.layout, SPAN_CHARS, 0, limit, job.cut))
    bounds = list(zip(starts, starts[1:] + [limit]))
    expected = 0
    for (_, stop), result in zip(bounds, _map_spans(job, bounds, workers)):
        if result.start != expected:
            if expected >= stop:
                continue  # the span before overran this whole span
            result = process_span((expected, stop))
        if result.error:
            raise formats.SpanError(f"{job.path}: no valid records at {expected}")
        expected = result.end
        yield result


def _map_spans(job: FileJob, bounds: list[tuple[int, int]], workers: int
               ) -> Iterator[SpanResult]:
    _set_job(job)  # the parent redoes misguessed spans itself
    try:
        if workers < 2 or len(bounds) < 2:
            yield from map(process_span, bounds)
        else:
            yield from _pool_map(job, bounds, workers)
    finally:
        _set_job(None)


def _pool_map(job: FileJob, bounds: list[tuple[int, int]], workers: int
              ) -> Iterator[SpanResult]:
    # fork: the workers share the decoded text instead of receiving pickled records
    with multiprocessing.get_context("fork").Pool(workers, _set_job, (job,)) as pool:
        pending: deque = deque()
        for span in bounds:  # a bounded window keeps results from piling up in memory
            pending.append(pool.apply_async(process_span, (span,)))
            if len(pending) > 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


@dataclass
class Pipeline:
    """Per file: spans (normalize, clean, hash) -> dedupe in file order -> write."""

    rules: CleaningRules
    dedupe: Deduplicator | None
    out: OutputFiles
    stats: DatasetStats
    chat_dedupe: Deduplicator | None = None  # a preference dataset's chat views

    def process_file(self, spans: Iterator[tuple[FileJob, SpanResult]]) -> int:
        """Write every record of one file's spans (from `file_spans`); returns the number
        of records."""
        format_errors, first_error, index, job = 0, None, 0, None
        for job, result in spans:
            for i, reason, raw, _, detail in result.rejects:
                if reason in FORMAT_REASONS:
                    format_errors += 1
                    if first_error is None:
                        first_error = (index + i, raw, detail)
            self._merge(job, index, result)
            index += result.count
        if format_errors * 2 > index:
            self._refuse_format(job.path, first_error, format_errors, index)
        return index

    def _merge(self, job: FileJob, base: int, result: SpanResult) -> None:
        """Dedupe the passed records in file order, then write and count everything."""
        passed, lines = result.passed, result.lines
        duplicates = {} if self.dedupe is None else self.dedupe.check_all(
            result.exact, result.digests, job.path, [base + i for i in passed])
        if job.pairs:
            duplicates = {k: ("duplicate_pair", detail.replace("same content", "same prompt and "
                                                               "answers")) for k, (_, detail)
                          in duplicates.items()}
        for split, positions in result.by_split.items():
            rows = [f"{lines[k]}{base + passed[k]}}}}}\n" for k in positions
                    if k not in duplicates]
            self.out.write_lines(f"{split}.pairs" if job.pairs else split, rows)
            self.stats.splits[split] += len(rows)
        kept = [k for k in range(len(passed)) if k not in duplicates]
        self.stats.keep(job.path, result.measures, kept if duplicates else None, result.calls)
        if job.pairs:
            self._write_chat_views(job, base, result, kept)
        rejects = [(i, reason, tail) for i, reason, _, tail, _ in result.rejects]
        for k, (reason, detail) in duplicates.items():
            raw = json.loads(job.text[result.places[2 * k]:result.places[2 * k + 1]])
            rejects.append((passed[k], reason, reject_tail(reason, detail, raw)))
        rejects.sort()  # by index, unique
        source = _encode(job.path)
        self.out.write_lines("rejects", [f'{{"file": {source}, "index": {base + i}{tail}'
                                         for i, _, tail in rejects])
        for _, reason, _ in rejects:
            self.stats.reject(job.path, reason)

    def _write_chat_views(self, job: FileJob, base: int, result: SpanResult,
                          kept: list[int]) -> None:
        """A preference dataset's {split}.jsonl: the chat views of its kept records, each
        distinct prompt and answer once (several pairs may share them)."""
        views = [k for k in kept if result.sft_lines[k] is not None]
        again = {} if self.chat_dedupe is None else self.chat_dedupe.check_all(
            [result.sft_digests[k][0] for k in views], [result.sft_digests[k][1] for k in views],
            job.path, [base + result.passed[k] for k in views])
        split_of = {k: split for split, positions in result.by_split.items() for k in positions}
        rows: dict[str, list[str]] = {split: [] for split in SPLITS}
        for n, k in enumerate(views):
            if n not in again:
                rows[split_of[k]].append(f"{result.sft_lines[k]}{base + result.passed[k]}}}}}\n")
        for split, lines in rows.items():
            self.out.write_lines(split, lines)
            self.stats.preference.sft_records[split] += len(lines)
        self.stats.preference.keep([result.pair_facts[k] for k in kept])

    def _refuse_format(self, path: str, first: tuple[int, Any, str], errors: int,
                       total: int) -> None:
        """Most records failed to parse: when they look like another format, or none
        parsed at all, the declared format is wrong and the whole file is refused. `first`
        is the first bad record: (index, raw record, which field failed and why)."""
        declared = self.stats.fmt
        index, raw, detail = first
        guess = preference_formats.guess_format(raw)
        if guess in (None, declared) and errors < total:
            return  # a messy file of the right format: its bad records are in rejects
        names = preference_formats.DISPLAY_NAMES
        looks = (f"this looks like {names[guess]}, not {names[declared]}"
                 if guess and guess != declared
                 else f"records do not match format {declared!r}")
        raise DataError(f"{path}: {errors} of {total} records are not valid {declared} records: "
                        f"{looks}; first bad record (index {index}): {detail} "
                        f"({formats.describe_keys(raw)})")


def read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None


def default_workers() -> int:
    """Processes for parsing and cleaning: the CPUs this process may run on, at most 4
    (beyond that the parent's in-order dedupe and writing is the bottleneck)."""
    return min(len(os.sched_getaffinity(0)), 4)


def prepare(name: str, spec: dict, cleaning: dict, split: dict, seed: int,
            out_dir: Path, workers: int | None = None) -> dict:
    """Prepare one dataset into `out_dir`; returns the stats also written to stats.json.

    `workers` processes (default: `default_workers()`) share the parsing and cleaning of
    large files; the outputs are byte-identical for any number of them.
    """
    fmt = spec.get("format")
    rules = CleaningRules.from_config(cleaning, spec.get("language", "zh"))
    plan = file_plan(spec.get("files"))
    pairs = is_preference_format(fmt)
    splitter = HashSplitter(split.get("valid", 0.05), split.get("test", 0.05), seed)
    if pairs:
        normalize = preference_formats.get_normalizer(fmt, spec.get("columns"))
        stats = DatasetStats(name, fmt, rejected=dict.fromkeys(PREFERENCE_REASONS, 0),
                             preference=PreferenceTally(unpaired=fmt == "kto"))
    else:
        normalize = formats.get_normalizer(fmt, spec.get("columns"))
        stats = DatasetStats(name, fmt)
    pipeline = Pipeline(rules, Deduplicator() if rules.dedupe else None,
                        OutputFiles(out_dir, OUTPUT_FILES | PAIR_FILES if pairs else OUTPUT_FILES),
                        stats, Deduplicator() if pairs and rules.dedupe else None)
    try:
        for path, fixed_split in plan:
            stats.add_file(path, "", 0, fixed_split)
            job = FileJob("", "", path, fixed_split, normalize, rules, splitter, pairs)
            # pairs_from reads the source's prepared split as pairs (pairs_from.py)
            reader = PairsReader(path, seed, spec.get("answers", {}).get(fixed_split)) \
                if fmt == "pairs_from" else None
            stats.files[path], stats.per_file[path]["raw"] = process_stream(
                pipeline, job, workers or default_workers(), reader)
        if stats.kept == 0:
            raise DataError(f"dataset {name}: no usable records ({_reasons(stats.rejected)})")
        result = stats.result(rules)
        result["warnings"] = data_warnings(result)
        pipeline.out.commit(result)
    except BaseException:
        pipeline.out.abort()
        raise
    return result


class TextReader:
    """A file's text, read a block at a time: UTF-8 decoded as it comes (a leading BOM
    dropped) and hashed (SHA-256 of the bytes)."""

    def __init__(self, path: str):
        self.path = path
        try:
            self._file = open(path, "rb")
        except OSError as err:
            raise DataError(f"{path}: cannot read ({err.strerror})") from None
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.sha256 = hashlib.sha256()
        self.eof = False

    def read(self, size: int) -> str:
        data = self._file.read(size)
        self.eof = len(data) < size  # a regular file gives less only at its end
        self.sha256.update(data)
        try:
            return self._decoder.decode(data, final=self.eof)
        except UnicodeDecodeError:
            refuse_unreadable(self.path)  # names the byte and line
            raise

    def close(self) -> None:
        self._file.close()


def file_spans(reader: TextReader, job: FileJob, workers: int
               ) -> Iterator[tuple[FileJob, SpanResult]]:
    """(block, span result) for every span of the file, in file order.

    A block is the text read so far from the first record not yet processed; the records
    that start before its last TAIL_CHARS characters are processed (all of them at the end
    of the file) and the rest carried into the next block. A span that fails before the end
    of the file may hold a record longer than the tail: more is read and it is tried again.
    """
    text, tail = job.text, TAIL_CHARS
    while True:
        if not reader.eof:
            text += reader.read(BLOCK_BYTES)
        block = replace(job, text=text, last=reader.eof)
        limit = len(text) if block.last else len(text) - tail
        done = 0
        try:
            if limit > 0:
                for result in run_spans(block, workers, limit):
                    yield block, result
                    done = result.end
        except formats.SpanError:
            if block.last:
                raise
            tail *= 2
        else:
            if block.last:
                return
            tail = TAIL_CHARS
        text = text[done:]
        job = replace(job, first=job.first and done == 0)


def process_stream(pipeline: Pipeline, job: FileJob, workers: int,
                   reader: TextReader | PairsReader | None = None) -> tuple[str, int]:
    """Process one file (`job` without its text), read by `reader` (default: a TextReader
    of the file); returns its SHA-256 and its number of records. A prepared split that
    pairs_from reads may be empty."""
    reader = reader or TextReader(job.path)
    if isinstance(reader, PairsReader) and not len(reader):
        reader.close()
        return reader.sha256.hexdigest(), 0
    try:
        text = reader.read(BLOCK_BYTES)
        layout = formats.text_layout(text, job.path)
        if layout == "array" and formats.is_array_lines(text):
            layout = "lines"  # JSON Lines of arrays (LCCC dialogues)
        cut = formats.array_cut(text) if layout == "array" else None
        job = replace(job, text=text, layout=layout, cut=cut)
        try:
            count = pipeline.process_file(file_spans(reader, job, workers))
        except formats.SpanError:
            refuse_unreadable(job.path)
            raise
    finally:
        reader.close()
    if count == 0:
        raise DataError(f"{job.path}: contains no records")
    return reader.sha256.hexdigest(), count


def refuse_unreadable(path: str) -> None:
    """Raise the `DataError` that says where a file that does not read record by record is
    broken, from the whole-file parser (only ever run on a broken file)."""
    formats.parse_text(formats.decode_utf8(read_file(path), path), path)
    raise DataError(f"{path}: cannot be read record by record")


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counts.items() if n) or "none"


REJECTED_SHARE_WARNING = 0.2  # a larger rejected share is reported as a warning


def data_warnings(stats: dict) -> list[str]:
    """What a user should look at before training on the splits: an empty or one-record
    split, a large share of rejected records."""
    warnings = []
    for split, count in stats["splits"].items():
        if count < 2:
            warnings.append(f"the {split} split is empty" if count == 0 else
                            f"the {split} split has only one record")
    rejected = stats["raw"] - stats["kept"]
    if rejected > REJECTED_SHARE_WARNING * stats["raw"]:
        warnings.append(f"{rejected} of {stats['raw']} records "
                        f"({rejected / stats['raw']:.0%}) were rejected "
                        f"({_reasons(stats['rejected'])}); each one is in rejects.jsonl")
    return warnings


def summary_line(stats: dict) -> str:
    splits = ", ".join(f"{k} {v}" for k, v in stats["splits"].items())
    return (f"{stats['dataset']}: raw {stats['raw']}, kept {stats['kept']} ({splits}), "
            f"rejected {stats['raw'] - stats['kept']} ({_reasons(stats['rejected'])})")


def main(argv: list[str] | None = None) -> int:
    parser = cli_parser(__doc__)
    parser.add_argument("--name", required=True, help="the dataset's name in datasets")
    parser.add_argument("--config", required=True, help="JSON: dataset, cleaning, split, seed")
    parser.add_argument("--out-dir", required=True, type=Path,
                        help="where the splits, rejects.jsonl and stats.json go")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes for large files (default: usable CPUs, at most 4)")
    args = parser.parse_args(argv)
    try:
        config = json.loads(args.config)
        if not isinstance(config, dict) or not isinstance(config.get("dataset"), dict):
            raise ValueError('--config needs a "dataset" object (the datasets.NAME entry)')
        stats = prepare(args.name, config["dataset"], config.get("cleaning", {}),
                        config.get("split", {}), config.get("seed", 42), args.out_dir,
                        args.workers)
        write_run_info(args.out_dir, config, config.get("seed", 42), sorted(stats["files"]))
    except json.JSONDecodeError as err:
        print(f"prepare_dataset: error: --config is not valid JSON: {err}", file=sys.stderr)
        return 2
    except (DataError, ValueError, KeyError, TypeError) as err:
        print(f"prepare_dataset: error: {err}", file=sys.stderr)
        return 1
    print(summary_line(stats), file=sys.stderr)
    for warning in stats["warnings"]:  # the rule shows these lines on the terminal too
        print(f"prepare_dataset: warning: {args.name}: {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

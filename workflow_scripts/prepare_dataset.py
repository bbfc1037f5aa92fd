"""Turn one configured dataset into train/valid/test chat records, rejects and stats.

    python -m workflow_scripts.prepare_dataset --name NAME --config JSON --out-dir DIR

JSON is `{"dataset": <datasets.NAME entry>, "cleaning": {...}, "split": {...}, "seed": 42}`;
file paths in it are relative to the current directory. One pass over each file:
normalize -> clean -> dedupe -> split -> write. The outputs are written under temporary
names and renamed at the end, so a failed run leaves no half-written split behind.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import json.encoder
import math
import os
import sys
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from workflow_scripts import data_formats as formats
from workflow_scripts.data_cleaning import (REASONS, CleaningRules, Deduplicator, Rejection,
                                            check_record, content_digests)
from workflow_scripts.data_formats import Conversation, DataError, RecordError
from workflow_scripts.data_split import SPLITS, HashSplitter, file_plan, record_id
from workflow_scripts.io_utils import write_json

OUTPUT_FILES = {split: f"{split}.jsonl" for split in SPLITS} | {"rejects": "rejects.jsonl"}
_encode = json.JSONEncoder(ensure_ascii=False, check_circular=False).encode
_encode_path = functools.lru_cache(maxsize=256)(_encode)
_encode_str = json.encoder.encode_basestring  # the C string encoder that keeps non-ASCII


class OutputFiles:
    """The four JSON Lines outputs, written to temporary files until `commit`."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._handles = {key: open(self._tmp(name), "w", encoding="utf-8")
                         for key, name in OUTPUT_FILES.items()}

    def _tmp(self, name: str) -> Path:
        return self.out_dir / f".{name}.tmp"

    def write(self, key: str, row: dict) -> None:
        self._handles[key].write(_encode(row) + "\n")

    def write_kept(self, split: str, record_id: str, messages: list[dict], source: str,
                   index: int) -> None:
        """What write() gives for a kept record, twice as fast: roles and ids need no
        escaping, so only the contents go through the JSON string encoder."""
        turns = ", ".join([f'{{"role": "{m["role"]}", "content": {_encode_str(m["content"])}}}'
                           for m in messages])
        self._handles[split].write(f'{{"id": "{record_id}", "messages": [{turns}], '
                                   f'"source": {{"file": {source}, "index": {index}}}}}\n')

    def commit(self, stats: dict) -> None:
        self._close()
        for name in OUTPUT_FILES.values():
            os.replace(self._tmp(name), self.out_dir / name)
        write_json(self.out_dir / "stats.json", stats)

    def abort(self) -> None:
        self._close()
        for name in OUTPUT_FILES.values():
            self._tmp(name).unlink(missing_ok=True)

    def _close(self) -> None:
        for handle in self._handles.values():
            handle.close()


def summarize(values: array) -> dict[str, float]:
    """Mean and nearest-rank percentiles of a list of lengths."""
    ordered = sorted(values)
    if not ordered:
        return {"mean": 0.0, "p50": 0, "p90": 0, "p99": 0, "max": 0}
    rank = lambda q: ordered[max(0, math.ceil(q * len(ordered)) - 1)]  # noqa: E731
    return {"mean": round(sum(ordered) / len(ordered), 2), "p50": rank(0.5),
            "p90": rank(0.9), "p99": rank(0.99), "max": ordered[-1]}


@dataclass
class DatasetStats:
    """Counts gathered while records stream by; `result` is the stats.json content."""

    name: str
    fmt: str
    files: dict[str, str] = field(default_factory=dict)
    per_file: dict[str, dict[str, Any]] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    splits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    prompt_chars: array = field(default_factory=lambda: array("L"))
    response_chars: array = field(default_factory=lambda: array("L"))
    turns: array = field(default_factory=lambda: array("L"))
    with_input: int = 0
    trimmed_turns: int = 0

    def add_file(self, path: str, sha256: str, raw: int, split: str | None) -> None:
        self.files[path] = sha256
        self.per_file[path] = {"raw": raw, "kept": 0, "rejected": 0, "split": split or "hash"}

    def keep(self, path: str, conversation: Conversation, split: str) -> None:
        messages = conversation.messages
        self.per_file[path]["kept"] += 1
        self.splits[split] += 1
        self.prompt_chars.append(sum([len(m["content"]) for m in messages[:-1]]))
        self.response_chars.append(len(messages[-1]["content"]))
        self.turns.append(len(messages) // 2)  # user/assistant pairs, a system or not
        self.with_input += conversation.has_input
        self.trimmed_turns += conversation.trimmed

    def reject(self, path: str, reason: str) -> None:
        self.per_file[path]["rejected"] += 1
        self.rejected[reason] += 1

    @property
    def kept(self) -> int:
        return len(self.turns)

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
            "share_with_history": round(sum(t > 1 for t in self.turns) / kept, 4),
            "files": self.files, "per_file": self.per_file,
            "trimmed_turns": self.trimmed_turns, "cleaning": vars(rules),
        }


@dataclass
class Pipeline:
    """The per-record path: normalize -> clean -> dedupe -> split -> write."""

    normalize: Callable[[Any], Conversation]
    rules: CleaningRules
    splitter: HashSplitter
    dedupe: Deduplicator | None
    out: OutputFiles
    stats: DatasetStats

    def process_file(self, path: str, records: list[Any], split: str | None) -> None:
        format_errors, first_error = 0, None
        for index, raw in enumerate(records):
            records[index] = None  # lets a processed record be freed early
            try:
                conversation = self.normalize(raw)
            except RecordError as err:
                format_errors += 1
                first_error = raw if first_error is None else first_error
                self._reject(path, index, raw, (err.reason, err.detail))
                continue
            self._process_record(path, index, raw, conversation, split)
        if format_errors * 2 > len(records):
            self._refuse_format(path, first_error, format_errors, len(records))

    def _process_record(self, path: str, index: int, raw: Any, conversation: Conversation,
                        split: str | None) -> None:
        rejection = check_record(conversation.messages, self.rules)
        if rejection is None:
            exact, normalized = content_digests(conversation.messages)
            if self.dedupe is not None:
                rejection = self.dedupe.check(exact, normalized, path, index)
        if rejection is not None:
            self._reject(path, index, raw, rejection)
            return
        split = split or self.splitter(normalized)
        self.out.write_kept(split, record_id(normalized), conversation.messages,
                            _encode_path(path), index)
        self.stats.keep(path, conversation, split)

    def _reject(self, path: str, index: int, raw: Any, rejection: Rejection) -> None:
        reason, detail = rejection
        self.out.write("rejects", {"file": path, "index": index, "reason": reason,
                                   "detail": detail, "record": raw})
        self.stats.reject(path, reason)

    def _refuse_format(self, path: str, raw: Any, errors: int, total: int) -> None:
        """Most records failed to parse: when they look like another format, or none
        parsed at all, the declared format is wrong and the whole file is refused."""
        declared = self.stats.fmt
        guess = formats.guess_format(raw)
        if guess in (None, declared) and errors < total:
            return  # a messy file of the right format: its bad records are in rejects
        looks = (f"this looks like {formats.DISPLAY_NAMES[guess]}, not "
                 f"{formats.DISPLAY_NAMES[declared]}" if guess and guess != declared
                 else f"records do not match format {declared!r}")
        raise DataError(f"{path}: {errors} of {total} records are not valid {declared} records: "
                        f"{looks} (first bad record: {formats.describe_keys(raw)})")


def read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None


def prepare(name: str, spec: dict, cleaning: dict, split: dict, seed: int,
            out_dir: Path) -> dict:
    """Prepare one dataset into `out_dir`; returns the stats also written to stats.json."""
    fmt = spec.get("format")
    rules = CleaningRules.from_config(cleaning, spec.get("language", "zh"))
    stats = DatasetStats(name, fmt)
    plan = file_plan(spec.get("files"))
    pipeline = Pipeline(formats.get_normalizer(fmt, spec.get("columns")), rules,
                        HashSplitter(split.get("valid", 0.05), split.get("test", 0.05), seed),
                        Deduplicator() if rules.dedupe else None, OutputFiles(out_dir), stats)
    try:
        for path, fixed_split in plan:
            data = read_file(path)
            records = formats.parse_records(data, path)
            stats.add_file(path, hashlib.sha256(data).hexdigest(), len(records), fixed_split)
            del data
            pipeline.process_file(path, records, fixed_split)
        if stats.kept == 0:
            raise DataError(f"dataset {name}: no usable records ({_reasons(stats.rejected)})")
        result = stats.result(rules)
        pipeline.out.commit(result)
    except BaseException:
        pipeline.out.abort()
        raise
    return result


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counts.items() if n) or "none"


def summary_line(stats: dict) -> str:
    splits = ", ".join(f"{k} {v}" for k, v in stats["splits"].items())
    return (f"{stats['dataset']}: raw {stats['raw']}, kept {stats['kept']} ({splits}), "
            f"rejected {stats['raw'] - stats['kept']} ({_reasons(stats['rejected'])})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--config", required=True, help="JSON: dataset, cleaning, split, seed")
    parser.add_argument("--out-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        config = json.loads(args.config)
        if not isinstance(config, dict) or not isinstance(config.get("dataset"), dict):
            raise ValueError('--config needs a "dataset" object (the datasets.NAME entry)')
        stats = prepare(args.name, config["dataset"], config.get("cleaning", {}),
                        config.get("split", {}), config.get("seed", 42), args.out_dir)
    except json.JSONDecodeError as err:
        print(f"prepare_dataset: error: --config is not valid JSON: {err}", file=sys.stderr)
        return 2
    except (DataError, ValueError, KeyError, TypeError) as err:
        print(f"prepare_dataset: error: {err}", file=sys.stderr)
        return 1
    print(summary_line(stats), file=sys.stderr)
    for split in SPLITS:
        if not stats["splits"][split]:
            print(f"prepare_dataset: warning: {args.name}: the {split} split is empty",
                  file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

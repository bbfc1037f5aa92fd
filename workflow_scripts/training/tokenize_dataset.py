"""Tokenize a prepared dataset once for every experiment that trains on it with the same tokens.

Reads `train.jsonl` and `valid.jsonl`, encodes every record exactly as
`chat_tokenize.tokenize_records` does (the tokenizer's own chat template, labels on assistant
turns, `overflow` truncating or dropping what is longer than `max_length`) but through
`fast_tokenize` (template renders once per conversation shape, the Rust tokenizer's batched
encoding; records it cannot vouch for go the reference way, counted), packs the training
samples when `packing` is on, and writes memory-mappable Arrow files that `train_adapter` opens without copying:

    train.arrow     the rows training iterates over (packed or not), with a `length` column
    valid.arrow     the validation samples, never packed (token-weighted validation loss)
    stats.json      tokenization counts per split (train_metrics.json's `tokenization`)
    manifest.json   settings, tokenizer content hash, SHA-256 of inputs and outputs: the
                    identity training's checkpoint key is made of

The JSONL is streamed in chunks that worker processes (`--threads`) tokenize in order; the
main process appends their token ids to flat files and keeps only per-sample lengths, so
memory grows with the number of samples (a few bytes each), not with the corpus. The rows are
the exact features today's in-process path made: tests/test_tokenize_dataset.py checks them
against `tokenize_records` and `packing.pack_features`. See docs/training.md.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from workflow_scripts.common.cli import parser as cli_parser
from workflow_scripts.common.io_utils import canonical_json, file_sha256, read_json, write_json
from workflow_scripts.training.chat_tokenize import COUNTS

# What of an experiment's `training` block changes the tokens.
TOKEN_SETTINGS = ("max_length", "overflow", "packing")
SPLITS = ("train", "valid")
CHUNK_RECORDS = 2000  # records a worker tokenizes per task
ROWS_PER_BATCH = 8192  # rows per Arrow record batch written
FORMAT_VERSION = 1


def token_settings(training: dict) -> dict:
    """The training settings that decide the tokens, with the schema's defaults."""
    return {"max_length": training["max_length"], "overflow": training.get("overflow", "truncate"),
            "packing": bool(training.get("packing", False))}


@dataclass
class SplitTokens:
    """One split's samples as flat token files plus per-sample lengths and counts."""

    ids_path: Path
    labels_path: Path
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    full_lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    paths: Counter = field(default_factory=Counter)  # records by encoder path (fast_tokenize)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token ids, labels (memory-mapped) and each sample's start offset."""
        offsets = np.zeros(len(self.lengths) + 1, np.int64)
        np.cumsum(self.lengths, out=offsets[1:])
        n = int(offsets[-1])
        if n == 0:
            return np.zeros(0, np.int32), np.zeros(0, np.int32), offsets
        return (np.memmap(self.ids_path, np.int32, "r", shape=(n,)),
                np.memmap(self.labels_path, np.int32, "r", shape=(n,)), offsets)


# ---- workers: each loads the tokenizer once and encodes chunks of JSONL lines -------------

_WORKER: dict[str, Any] = {}


def init_worker(model_dir: str, trust_remote_code: bool, settings: dict) -> None:
    from workflow_scripts.models.loading import load_tokenizer

    _WORKER["tokenizer"] = load_tokenizer(model_dir, trust_remote_code=trust_remote_code)
    _WORKER["settings"] = settings
    _WORKER.pop("encoder", None)  # made for this tokenizer at the first chunk


def parse_lines(path: str, first_line: int, lines: list[str]) -> list[dict]:
    """The records of consecutive lines (blank ones skipped); errors name file and line."""
    records = []
    for number, line in enumerate(lines, first_line):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {number}: not JSON ({err})") from None
        if not isinstance(records[-1], dict) or not isinstance(records[-1].get("messages"), list):
            raise ValueError(f"{path}, line {number}: no `messages` list")
    return records


def tokenize_chunk(task: tuple[str, int, list[str]]) -> tuple[np.ndarray, ...] | tuple:
    """(ids, labels, lengths, full_lengths, counts, paths) of one chunk's kept samples, in order;
    `paths` counts the records that took the fast path and those that fell back, by reason."""
    from workflow_scripts.training.fast_tokenize import FastChatEncoder

    records = parse_lines(*task)
    settings = _WORKER["settings"]
    if "encoder" not in _WORKER:
        _WORKER["encoder"] = FastChatEncoder(_WORKER["tokenizer"])
    encoder = _WORKER["encoder"]
    before = encoder.counts.copy()
    arrays = encoder.encode_chunk(records, settings["max_length"], settings["overflow"])
    return (*arrays, dict(encoder.counts - before))


def line_chunks(path: Path, size: int) -> Iterator[tuple[str, int, list[str]]]:
    """(path, number of the first line, `size` consecutive lines) until the file ends."""
    with open(path, encoding="utf-8") as fh:
        first = 1
        while chunk := list(islice(fh, size)):
            yield str(path), first, chunk
            first += len(chunk)


class Workers:
    """Worker processes, each with the tokenizer loaded, that map chunks in order; with one
    worker the chunks are encoded in this process."""

    def __init__(self, workers: int, init_args: tuple):
        self.workers, self.init_args, self.pool = workers, init_args, None

    def __enter__(self) -> "Workers":
        if self.workers <= 1:
            init_worker(*self.init_args)
        else:
            import multiprocessing

            # spawn: the parent may hold threads (Arrow's, torch's) that fork would copy mid-lock
            self.pool = ProcessPoolExecutor(self.workers, initializer=init_worker,
                                            initargs=self.init_args,
                                            mp_context=multiprocessing.get_context("spawn"))
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def map(self, fn: Callable, tasks: Iterable) -> Iterator:
        """`map(fn, tasks)` in order, with at most 2 x workers tasks in flight (Pool.imap
        would read the whole input ahead)."""
        if self.pool is None:
            yield from map(fn, tasks)
            return
        pending: deque = deque()
        for task in tasks:
            pending.append(self.pool.submit(fn, task))
            if len(pending) >= 2 * self.workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def worker_count(threads: int, data_dir: Path) -> int:
    """`threads`, but no more workers than there are MiB of training data: starting a worker
    (importing transformers, loading the tokenizer) costs seconds."""
    path = data_dir / "train.jsonl"
    mib = path.stat().st_size / 2**20 if path.exists() else 0
    return max(1, min(threads, int(mib)))


def tokenize_split(path: Path, work_dir: Path, split: str, workers: Workers) -> SplitTokens:
    """Encode one JSONL split into flat token files under `work_dir` (none if it is absent)."""
    tokens = SplitTokens(work_dir / f"{split}.ids.bin", work_dir / f"{split}.labels.bin")
    lengths, full_lengths = [], []
    with open(tokens.ids_path, "wb") as ids_out, open(tokens.labels_path, "wb") as labels_out:
        if not path.exists():
            return tokens
        for ids, labels, lens, full, counts, paths in workers.map(tokenize_chunk,
                                                                  line_chunks(path, CHUNK_RECORDS)):
            tokens.paths.update(paths)
            ids_out.write(ids.tobytes())
            labels_out.write(labels.tobytes())
            lengths.append(lens)
            full_lengths.append(full)
            for key in COUNTS:
                tokens.counts[key] += counts[key]
    if lengths:
        tokens.lengths, tokens.full_lengths = np.concatenate(lengths), np.concatenate(full_lengths)
    return tokens


# ---- rows: packed or not, assembled with numpy from the flat token files -----------------


def sample_rows(tokens: SplitTokens) -> Iterator[dict[str, np.ndarray]]:
    """Batches of unpacked rows: each sample as it is (input_ids, attention_mask, labels)."""
    ids, labels, offsets = tokens.arrays()
    for start in range(0, len(tokens.lengths), ROWS_PER_BATCH):
        stop = min(start + ROWS_PER_BATCH, len(tokens.lengths))
        lo, hi = offsets[start], offsets[stop]
        row_offsets = offsets[start:stop + 1] - lo
        yield {"offsets": row_offsets, "input_ids": np.asarray(ids[lo:hi]),
               "attention_mask": np.ones(hi - lo, np.int8), "labels": np.asarray(labels[lo:hi])}


def packed_rows(tokens: SplitTokens, bins: list[list[int]]) -> Iterator[dict[str, np.ndarray]]:
    """Batches of packed rows, exactly `packing.pack_features`: each bin's samples concatenated
    in bin order, each sample's first label ignored, position ids restarting per sample."""
    from workflow_scripts.training.token_loss import IGNORE_INDEX

    ids, labels, offsets = tokens.arrays()
    for start in range(0, len(bins), ROWS_PER_BATCH):
        chunk = bins[start:start + ROWS_PER_BATCH]
        members = np.fromiter(chain.from_iterable(chunk), np.int64)
        sizes = tokens.lengths[members]
        starts_out = np.cumsum(sizes) - sizes  # each sample's first position in the batch
        within = np.arange(int(sizes.sum()), dtype=np.int64) - np.repeat(starts_out, sizes)
        gather = np.repeat(offsets[members], sizes) + within
        row_labels = np.asarray(labels[gather])
        row_labels[starts_out] = IGNORE_INDEX
        per_row = np.fromiter((len(b) for b in chunk), np.int64)
        first_member = np.cumsum(per_row) - per_row
        row_sizes = np.add.reduceat(sizes, first_member) if len(sizes) else sizes
        row_offsets = np.concatenate([[0], np.cumsum(row_sizes)])
        yield {"offsets": row_offsets, "input_ids": np.asarray(ids[gather]),
               "labels": row_labels, "position_ids": within.astype(np.int32)}


def write_rows(path: Path, batches: Iterable[dict[str, np.ndarray]], columns: dict[str, Any]) -> int:
    """An Arrow stream file (what `datasets.Dataset.from_file` memory-maps): list columns from
    flat values and row offsets, and each row's `length`. Returns the number of rows."""
    import pyarrow as pa

    schema = pa.schema([(name, pa.list_(dtype)) for name, dtype in columns.items()]
                       + [("length", pa.int64())])
    rows = 0
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for batch in batches:
            offsets = pa.array(batch["offsets"], pa.int32())  # a batch holds < 2**31 tokens
            arrays = [pa.ListArray.from_arrays(offsets, pa.array(batch[name], dtype))
                      for name, dtype in columns.items()]
            arrays.append(pa.array(np.diff(batch["offsets"]), pa.int64()))
            writer.write_batch(pa.record_batch(arrays, schema=schema))
            rows += len(batch["offsets"]) - 1
    return rows


def sample_columns() -> dict:
    import pyarrow as pa

    return {"input_ids": pa.int32(), "attention_mask": pa.int8(), "labels": pa.int32()}


def packed_columns() -> dict:
    import pyarrow as pa

    return {"input_ids": pa.int32(), "labels": pa.int32(), "position_ids": pa.int32()}


# ---- stats and manifest ---------------------------------------------------------------


def length_summary(lengths: np.ndarray) -> dict[str, float]:
    """`chat_tokenize.length_summary` on an array: the same figures, without a list."""
    if len(lengths) == 0:
        return {}
    ordered = np.sort(lengths)
    n = len(ordered)

    def pct(q: float) -> int:
        return int(ordered[min(n - 1, int(q * n))])

    return {"mean": round(int(ordered.sum()) / n, 2), "p50": pct(0.5), "p90": pct(0.9),
            "p99": pct(0.99), "max": int(ordered[-1])}


def split_stats(tokens: SplitTokens, packed_rows: int | None) -> dict:
    """`TokenizeStats.as_dict()` of the split, keys in the same order."""
    from workflow_scripts.training.chat_tokenize import TokenizeStats

    stats = TokenizeStats(**{k: v for k, v in tokens.counts.items()}, packed_rows=packed_rows)
    out = stats.as_dict()
    out["record_tokens"] = length_summary(tokens.full_lengths)
    return out


def tokenize(data_dir: Path, model_dir: str, settings: dict, out_dir: Path, threads: int = 1,
             timings: dict | None = None, paths: dict | None = None) -> dict:
    """Write train.arrow, valid.arrow, stats.json and manifest.json; returns the manifest.

    `settings` holds TOKEN_SETTINGS and `trust_remote_code`, and whatever else identifies the
    job (the dataset, the tokenizer's identity): all of it goes into the manifest. `timings`
    gets the seconds spent encoding, packing (pack_bins) and writing the Arrow files; `paths`,
    per split, how many records took `fast_tokenize`'s fast path and why the others did not."""
    from workflow_scripts.models.tokenizer_identity import tokenizer_content_hash
    from workflow_scripts.training.packing import pack_bins

    timings = {} if timings is None else timings
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    init_args = (model_dir, settings.get("trust_remote_code", False), settings)
    with Workers(worker_count(threads, data_dir), init_args) as workers:
        encoded = {s: tokenize_split(data_dir / f"{s}.jsonl", out_dir, s, workers) for s in SPLITS}
    timings.update(encode_s=time.perf_counter() - start, pack_s=0.0)
    if paths is not None:
        paths.update({split: dict(tokens.paths) for split, tokens in encoded.items()})
    stats, rows, sources = {}, {}, {}
    for split, tokens in encoded.items():
        source = data_dir / f"{split}.jsonl"
        packed = None
        if split == "train" and not len(tokens.lengths):
            raise SystemExit(f"{source}: no record left to train on after tokenization "
                             f"({split_stats(tokens, None)})")
        if split == "train" and settings["packing"]:
            packing_start = time.perf_counter()
            bins = pack_bins(tokens.lengths.tolist(), settings["max_length"])
            timings["pack_s"] = time.perf_counter() - packing_start
            rows[split] = packed = write_rows(out_dir / "train.arrow", packed_rows(tokens, bins),
                                              packed_columns())
        else:
            rows[split] = write_rows(out_dir / f"{split}.arrow", sample_rows(tokens), sample_columns())
        stats[split] = split_stats(tokens, packed)
        sources[split] = file_sha256(source) if source.exists() else "absent"
        for path in (tokens.ids_path, tokens.labels_path):
            path.unlink()
    write_json(out_dir / "stats.json", stats)
    manifest = {
        "format_version": FORMAT_VERSION,
        "settings": settings,
        "tokenizer_sha256": tokenizer_content_hash(model_dir),
        "sources_sha256": sources,
        "rows": rows,
        "files_sha256": {f"{s}.arrow": file_sha256(out_dir / f"{s}.arrow") for s in SPLITS},
    }
    write_json(out_dir / "manifest.json", manifest)  # last: its presence means complete
    timings["write_s"] = time.perf_counter() - start - timings["encode_s"] - timings["pack_s"]
    return manifest


# ---- reading, for train_adapter ------------------------------------------------------------


class StoredStats:
    """A split's stats.json entry where train_adapter expects a `TokenizeStats`."""

    def __init__(self, stats: dict):
        self.stats = stats

    def as_dict(self) -> dict:
        return dict(self.stats)


def load_tokenized(tokenized_dir: Path):
    """(train Dataset, validation features as dicts, train stats): the Arrow files memory-mapped."""
    from datasets import Dataset

    manifest = read_json(tokenized_dir / "manifest.json")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise SystemExit(f"{tokenized_dir}: tokenized with format {manifest.get('format_version')}, "
                         f"this code reads {FORMAT_VERSION}; rerun tokenize_dataset")
    stats = read_json(tokenized_dir / "stats.json")
    train = Dataset.from_file(str(tokenized_dir / "train.arrow"))
    valid = Dataset.from_file(str(tokenized_dir / "valid.arrow")).remove_columns("length")
    return train, valid.to_list(), StoredStats(stats["train"])


def settings_key(settings: dict) -> str:
    """The tokenized dataset's directory name under results/tokenized/{dataset}/."""
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()[:16]


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser(__doc__)
    parser.add_argument("--config", required=True,
                        help="the settings as JSON: max_length, overflow, packing, "
                        "trust_remote_code, and what identifies the job (dataset, tokenizer)")
    parser.add_argument("--model-dir", required=True, help="a base model directory with the tokenizer")
    parser.add_argument("--data-dir", required=True, type=Path,
                        help="the prepared dataset (train.jsonl, valid.jsonl)")
    parser.add_argument("--out-dir", required=True, type=Path, help="where the Arrow files go")
    parser.add_argument("--threads", type=int, default=1, help="worker processes")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # parallel across processes instead
    timings: dict = {}
    paths: dict = {}
    try:
        manifest = tokenize(args.data_dir, args.model_dir, json.loads(args.config), args.out_dir,
                            args.threads, timings, paths)
    except ValueError as err:
        sys.exit(f"tokenize_dataset: {err}")
    print(json.dumps({"rows": manifest["rows"], "tokenizer_sha256": manifest["tokenizer_sha256"],
                      "seconds": {k: round(v, 2) for k, v in timings.items()},
                      "encoder_paths": paths}, ensure_ascii=False))


if __name__ == "__main__":
    main()

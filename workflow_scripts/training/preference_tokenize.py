"""Tokenize preference data: every answer of a pair behind its prompt, through the chat template.

Reads the data stage's `{split}.pairs.jsonl` (docs/data.md, "Preference data") and writes one
Arrow stream file per split that `datasets.Dataset.from_file` memory-maps:

    pairwise records (chosen/rejected)   chosen_ids, chosen_start, rejected_ids, rejected_start
    unpaired records (KTO)               completion_ids, completion_start, kl_ids, kl_start, label

`<role>_ids` is the prompt and that answer as the template renders the conversation ending
with it; the answer's tokens are those from `<role>_start` on (what the template appends for
the reply: its text and end-of-turn token). The prompt is rendered once, with the generation
prompt, so a template's default system prompt appears once, and the answer's labels never hold
a prompt token. A KTO record's `kl` answer is another record's completion behind this
record's prompt (the previous record's, the first taking the last's): the mismatched pairs
TRL's KTO estimates its KL term from, fixed here so the reference job can score them once.

Truncation keeps the answers: a pair longer than `max_length` loses prompt tokens from the
left (keeping at least half of `max_length` for the prompt when it is that long), and only
then answer tokens from the right. stats.json counts both.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from workflow_scripts.common.cli import parser as cli_parser
from workflow_scripts.common.io_utils import write_json
from workflow_scripts.training.chat_tokenize import render

SPLITS = ("train", "valid", "test")
PAIR_ROLES = ("chosen", "rejected")
KTO_ROLES = ("completion", "kl")
FORMAT_VERSION = 1
BATCH_RECORDS = 1024  # records per Arrow record batch: memory stays flat for any corpus size


def roles_of(kind: str) -> tuple[str, str]:
    """The two answers each row carries: ("chosen", "rejected") or ("completion", "kl")."""
    return KTO_ROLES if kind == "kto" else PAIR_ROLES


@dataclass
class PairStats:
    """What happened to one split's records on their way to tokens."""

    records: int = 0
    prompt_cut: int = 0   # records whose prompt lost tokens to max_length
    answer_cut: int = 0   # records whose answer(s) lost tokens too
    tokens: int = 0
    answer_tokens: dict[str, int] = field(default_factory=dict)
    longest: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"records": self.records, "prompt_cut": self.prompt_cut,
                "answer_cut": self.answer_cut, "tokens": self.tokens,
                "answer_tokens": dict(self.answer_tokens), "longest_before_cut": self.longest}


def encode_answer(tokenizer, prompt_text: str, messages: list[dict], answer: str,
                  where: str) -> tuple[list[int], int]:
    """(ids of the conversation ending with `answer`, index of the answer's first token)."""
    full = render(tokenizer, messages + [{"role": "assistant", "content": answer}])
    if not full.startswith(prompt_text):
        raise ValueError(f"{where}: the chat template's rendering with the answer does not "
                         "start with its rendering of the prompt (generation prompt)")
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    start = next((i for i, (begin, _) in enumerate(offsets) if begin >= len(prompt_text)), len(ids))
    return ids, start


def fit(encoded: list[tuple[list[int], int]], max_length: int) -> tuple[list[tuple[list[int], int]],
                                                                         bool, bool]:
    """Cut every sequence of one record to `max_length`, answers kept first (module doc)."""
    longest_answer = max(len(ids) - start for ids, start in encoded)
    longest = max(len(ids) for ids, _ in encoded)
    if longest <= max_length:
        return encoded, False, False
    out, answer_cut = [], False
    for ids, start in encoded:
        keep_prompt = min(start, max(max_length - longest_answer, max_length // 2))
        answer = ids[start:][: max_length - keep_prompt]
        answer_cut |= len(answer) < len(ids) - start
        out.append((ids[start - keep_prompt:start] + answer, keep_prompt))
    return out, True, answer_cut


def record_answers(record: dict, kind: str, kl_answer: str | None) -> list[str]:
    if kind == "kto":
        return [record["completion"], kl_answer if kl_answer is not None else record["completion"]]
    return [record["chosen"], record["rejected"]]


def encode_record(tokenizer, record: dict, kind: str, max_length: int, kl_answer: str | None,
                  where: str, stats: PairStats) -> dict[str, Any]:
    """One Arrow row: each answer's ids and start, the record's id (and KTO label)."""
    messages = record["messages"]
    prompt_text = render(tokenizer, messages, generation_prompt=True)
    encoded = [encode_answer(tokenizer, prompt_text, messages, answer, where)
               for answer in record_answers(record, kind, kl_answer)]
    stats.longest = max(stats.longest, *(len(ids) for ids, _ in encoded))
    encoded, prompt_cut, answer_cut = fit(encoded, max_length)
    stats.records += 1
    stats.prompt_cut += prompt_cut
    stats.answer_cut += answer_cut
    row: dict[str, Any] = {"id": str(record["id"])}
    for role, (ids, start) in zip(roles_of(kind), encoded):
        if start >= len(ids):
            raise ValueError(f"{where}: the {role} answer has no token after max_length "
                             f"{max_length}; raise training.max_length")
        row[f"{role}_ids"], row[f"{role}_start"] = ids, start
        stats.tokens += len(ids)
        stats.answer_tokens[role] = stats.answer_tokens.get(role, 0) + len(ids) - start
    if kind == "kto":
        row["label"] = bool(record["label"])
    else:
        row["loss_weight"] = float(record.get("loss_weight", 1.0))
    row["length"] = max(len(row[f"{r}_ids"]) for r in roles_of(kind))
    return row


def read_records(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) of a JSONL file, streamed."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, json.loads(line)


def kind_of(path: Path) -> str:
    """"kto" when the first record is unpaired, else "pairwise" ("pairwise" for an empty file)."""
    for _, record in read_records(path):
        return "kto" if "completion" in record else "pairwise"
    return "pairwise"


def last_completion(path: Path) -> str | None:
    last = None
    for _, record in read_records(path):
        last = record.get("completion")
    return last


def split_rows(tokenizer, path: Path, kind: str, max_length: int, stats: PairStats
               ) -> Iterator[dict[str, Any]]:
    previous = last_completion(path) if kind == "kto" else None
    for number, record in read_records(path):
        where = f"{path}, record {number}"
        yield encode_record(tokenizer, record, kind, max_length, previous, where, stats)
        previous = record.get("completion")


def arrow_schema(kind: str):
    import pyarrow as pa

    fields = [("id", pa.string())]
    for role in roles_of(kind):
        fields += [(f"{role}_ids", pa.list_(pa.int32())), (f"{role}_start", pa.int32())]
    fields.append(("label", pa.bool_()) if kind == "kto" else ("loss_weight", pa.float32()))
    return pa.schema(fields + [("length", pa.int64())])


def write_split(rows: Iterable[dict[str, Any]], path: Path, kind: str) -> int:
    """An Arrow stream file of `rows`, written BATCH_RECORDS at a time; the row count."""
    import pyarrow as pa

    schema = arrow_schema(kind)
    count, batch = 0, []
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for row in rows:
            batch.append(row)
            if len(batch) == BATCH_RECORDS:
                writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=schema))
                count, batch = count + len(batch), []
        if batch or not count:
            writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=schema))
            count += len(batch)
    return count


def tokenize_pairs(data_dir: Path, model_dir: str, settings: dict, out_dir: Path) -> dict:
    """Write {split}.arrow, stats.json and manifest.json (last); returns the manifest."""
    from workflow_scripts.common.io_utils import file_sha256
    from workflow_scripts.models.loading import load_tokenizer
    from workflow_scripts.models.tokenizer_identity import tokenizer_content_hash

    tokenizer = load_tokenizer(model_dir, trust_remote_code=settings.get("trust_remote_code", False))
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = kind_of(data_dir / "train.pairs.jsonl")
    stats, rows = {}, {}
    for split in SPLITS:
        source = data_dir / f"{split}.pairs.jsonl"
        split_stats = PairStats()
        rows[split] = write_split(split_rows(tokenizer, source, kind, settings["max_length"],
                                             split_stats), out_dir / f"{split}.arrow", kind)
        stats[split] = split_stats.as_dict()
    write_json(out_dir / "stats.json", {"kind": kind, **stats})
    manifest = {"format_version": FORMAT_VERSION, "kind": kind, "settings": settings,
                "tokenizer_sha256": tokenizer_content_hash(model_dir), "rows": rows,
                "sources_sha256": {f"{s}.pairs.jsonl": file_sha256(data_dir / f"{s}.pairs.jsonl")
                                   for s in SPLITS},
                "files_sha256": {f"{s}.arrow": file_sha256(out_dir / f"{s}.arrow") for s in SPLITS}}
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def load_split(tokenized_dir: Path, split: str):
    """(a split's Dataset, memory-mapped; the data's kind: "pairwise" or "kto")."""
    from datasets import Dataset

    from workflow_scripts.common.io_utils import read_json

    manifest = read_json(tokenized_dir / "manifest.json")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise SystemExit(f"{tokenized_dir}: tokenized with format {manifest.get('format_version')}, "
                         f"this code reads {FORMAT_VERSION}; rerun tokenize_preference")
    return Dataset.from_file(str(tokenized_dir / f"{split}.arrow")), manifest["kind"]


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser(__doc__)
    parser.add_argument("--config", required=True, help="the settings as JSON: max_length, "
                        "trust_remote_code, and what identifies the job (dataset, tokenizer)")
    parser.add_argument("--model-dir", required=True, help="a model directory with the tokenizer")
    parser.add_argument("--data-dir", required=True, type=Path,
                        help="the prepared dataset ({train,valid,test}.pairs.jsonl)")
    parser.add_argument("--out-dir", required=True, type=Path, help="where the Arrow files go")
    args = parser.parse_args(argv)
    try:
        manifest = tokenize_pairs(args.data_dir, args.model_dir, json.loads(args.config), args.out_dir)
    except (ValueError, KeyError) as err:
        sys.exit(f"tokenize_preference: {err}")
    print(json.dumps({"kind": manifest["kind"], "rows": manifest["rows"]}))


if __name__ == "__main__":
    main()

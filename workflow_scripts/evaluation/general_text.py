"""Token-weighted loss on a base model's general text: what fine-tuning cost (forgetting).

Each part of the general text (evaluation/general_spec.py) is read record by record, up to
`max_records` per part (the first ones, in file order), each record cut to `max_length`
tokens; every token after the first is predicted, with no chat template. The sums come
from training/token_loss.py's `record_loss_sums`, the routine behind every reported loss, and
are written per record so that collect_metrics pairs an adapter with its base record by record.
"""
from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path


class GeneralTextError(ValueError):
    """A general-text record that cannot be read; the message names the file and line."""


def file_texts(path: str) -> Iterator[tuple[str, str]]:
    """(id, text) of a configured file: a `.txt` file's non-empty lines, or a `.jsonl`
    file's records with `text` (or `messages`, joined as plain text)."""
    from workflow_scripts.models.build_base_model import plain_text

    suffix = Path(path).suffix
    if suffix not in (".txt", ".jsonl"):
        raise GeneralTextError(f"{path}: a general text is a .txt or .jsonl file")
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            if suffix == ".txt":
                yield str(number), line.rstrip("\n")
                continue
            try:
                record = json.loads(line)
                text = record["text"] if "text" in record else plain_text(record["messages"])
            except (ValueError, KeyError, TypeError) as err:
                raise GeneralTextError(f"{path}, line {number}: expected a JSON object with "
                                       f"'text' or 'messages' ({err})") from None
            if not isinstance(text, str):
                raise GeneralTextError(f"{path}, line {number}, field 'text': not a string")
            yield str(record.get("id", number)), text


def conversation_texts(path: str) -> Iterator[tuple[str, str]]:
    """(id, plain text) of a prepared split, as the scratch model was pretrained on it."""
    from workflow_scripts.common.io_utils import read_jsonl
    from workflow_scripts.models.build_base_model import plain_text

    for record in read_jsonl(path):
        yield str(record["id"]), plain_text(record["messages"])


def part_texts(part: dict, max_records: int) -> list[tuple[str, str]]:
    read = conversation_texts if part["kind"] == "conversations" else file_texts
    records = itertools.chain.from_iterable(read(path) for path in part["files"])
    return list(itertools.islice(records, max_records))


def features(tokenizer, texts: list[tuple[str, str]], max_length: int) -> tuple[list, list[str]]:
    """Token ids of each text (the tokenizer's own special tokens, no template), cut to
    `max_length`; a text of fewer than two tokens has nothing to predict and is left out."""
    encoded = tokenizer([t for _, t in texts], truncation=True, max_length=max_length)
    out, ids = [], []
    for (rid, _), input_ids in zip(texts, encoded["input_ids"]):
        if len(input_ids) >= 2:
            out.append({"input_ids": input_ids, "attention_mask": [1] * len(input_ids),
                        "labels": list(input_ids)})
            ids.append(rid)
    return out, ids


def score_general_text(model, tokenizer, job: dict, batch_size: int) -> list[dict]:
    """One row per scored record: {text (the part), id, loss_sum, n_tokens}."""
    from transformers import DataCollatorForSeq2Seq

    from workflow_scripts.training.token_loss import IGNORE_INDEX, record_loss_sums

    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
    rows = []
    for name, part in job["texts"].items():
        texts = part_texts(part, job["max_records"])
        feats, ids = features(tokenizer, texts, job["max_length"])
        # longest first within the part: fewer pad tokens per batch, same sums
        order = sorted(range(len(feats)), key=lambda i: -len(feats[i]["input_ids"]))
        sums = record_loss_sums(model, [feats[i] for i in order], collate, batch_size)
        by_index = dict(zip(order, sums))
        rows += [{"text": name, "id": ids[i], "loss_sum": by_index[i][0],
                  "n_tokens": by_index[i][1]} for i in range(len(feats))]
    return rows


def summary(rows: list[dict]) -> dict:
    """Per part: records, tokens and the token-weighted loss (metrics.json's `general_text`)."""
    from workflow_scripts.training.token_loss import mean_loss

    out = {}
    for name in dict.fromkeys(r["text"] for r in rows):
        part = [r for r in rows if r["text"] == name]
        out[name] = {"loss": mean_loss((r["loss_sum"], r["n_tokens"]) for r in part),
                     "n_records": len(part), "n_tokens": sum(r["n_tokens"] for r in part)}
    return out

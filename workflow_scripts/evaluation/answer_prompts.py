"""A model's own answers to every prompt of a prepared dataset's splits.

Preference pairs built offline (`format: pairs_from` with `rejected: model_answer`) take the
human reply as chosen and these answers as rejected: "a human reply over the SFT model's own
greedy reply", the first round of self-play preference tuning. Prompts are every message
before a record's last (an assistant turn), answered with evaluation/generation.py's batched
decoding under the experiment's evaluation settings (greedy unless configured otherwise).
Records are read and answered a chunk at a time, so memory stays flat for any corpus.

Writes `{split}.jsonl`: one {"id", "answer", "ended"} per record, in the split's order.
"""
from __future__ import annotations

import json
from itertools import islice
from pathlib import Path
from typing import Iterator

from workflow_scripts.common.cli import parser as cli_parser
from workflow_scripts.common.io_utils import read_jsonl, write_jsonl
from workflow_scripts.evaluation.generation import generate, load_for_eval, model_context

SPLITS = ("train", "valid", "test")
CHUNK_RECORDS = 512  # records read and answered at a time


def chunks(path: Path, size: int) -> Iterator[list[dict]]:
    records = read_jsonl(path)
    while chunk := list(islice(records, size)):
        yield chunk


def answer_split(model, tokenizer, path: Path, settings: dict, seed: int,
                 context: int) -> Iterator[dict]:
    for chunk in chunks(path, CHUNK_RECORDS):
        prompts = [record["messages"][:-1] for record in chunk]
        generations, _ = generate(model, tokenizer, prompts, settings, seed, context)
        for record, generation in zip(chunk, generations):
            yield {"id": record["id"], "answer": generation.text, "ended": generation.ended}


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser(__doc__)
    parser.add_argument("--config", required=True, help="the job as JSON: evaluation settings "
                        "(max_new_tokens, batch_size, max_length, decoding), seed, quantization")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--adapter-dir", default=None, help="the adapter (none: the base)")
    parser.add_argument("--data-dir", required=True, type=Path,
                        help="the prepared dataset ({train,valid,test}.jsonl)")
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    job = json.loads(args.config)
    model, tokenizer = load_for_eval(args.model_dir, args.adapter_dir,
                                     job.get("trust_remote_code", False), job.get("quantization"))
    settings = job["evaluation"]
    context = model_context(model, settings["max_length"])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in SPLITS:
        rows = answer_split(model, tokenizer, args.data_dir / f"{split}.jsonl", settings,
                            job["seed"], context)
        counts[split] = write_jsonl(args.out_dir / f"{split}.jsonl", rows)
    print(json.dumps({"answers": counts}))


if __name__ == "__main__":
    main()

"""The reference model's answer log-probs of every preference row, computed once per
(reference, tokenized preference set) and read by every preference experiment with that
reference: a beta or loss sweep scores the reference once, and no training step holds a
second model or runs a reference forward pass.

The reference is a base model (4-bit when the experiments train QLoRA on it) or a base model
with an SFT adapter: the adapter an experiment continues from, frozen. Writes per split
`{split}.parquet` (id, <role>_logp, <role>_tokens, rows in the tokenized file's order) and
manifest.json last. See docs/training.md, "Preference tuning".
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from workflow_scripts.common.cli import parser as cli_parser
from workflow_scripts.common.io_utils import file_sha256, write_json
from workflow_scripts.training.preference_tokenize import SPLITS, load_split, roles_of

WRITE_ROWS = 4096  # rows per Parquet row group


def load_reference(model_dir: str, adapter_dir: str | None, quantization: str | None,
                   trust_remote_code: bool):
    """The frozen reference: the base model, with the adapter applied when given."""
    from workflow_scripts.models.loading import compute_dtype, load_model

    model = load_model(model_dir, trust_remote_code=trust_remote_code, quantization=quantization,
                       dtype=compute_dtype())
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=False)
    model.requires_grad_(False)
    return model.eval()


def write_scores(rows, path: Path, roles: tuple[str, str]) -> int:
    """Stream scored rows into a Parquet file; the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields = [("id", pa.string())]
    for role in roles:
        fields += [(f"{role}_logp", pa.float64()), (f"{role}_tokens", pa.int32())]
    schema = pa.schema(fields)
    count, batch = 0, []
    with pq.ParquetWriter(str(path), schema) as writer:
        for row in rows:
            batch.append(row)
            if len(batch) == WRITE_ROWS:
                writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=schema))
                count, batch = count + len(batch), []
        writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=schema))
    return count + len(batch)


def read_scores(path: Path, ids=None) -> dict[str, list]:
    """A reference file's columns; with `ids` (the tokenized rows' ids), checked to be the
    same rows in the same order."""
    import pyarrow.parquet as pq

    table = pq.read_table(str(path)).to_pydict()
    if ids is not None and list(ids) != table["id"]:
        raise SystemExit(f"{path}: its rows are not the tokenized rows (another tokenization?); "
                         "rerun reference_logps")
    return table


def score_splits(model, tokenizer, tokenized_dir: Path, out_dir: Path, batch_size: int) -> dict:
    from workflow_scripts.training.preference_logps import score_rows

    out_dir.mkdir(parents=True, exist_ok=True)
    rows, seconds = {}, {}
    for split in SPLITS:
        dataset, kind = load_split(tokenized_dir, split)
        start = time.perf_counter()
        scored = score_rows(model, dataset, roles_of(kind), tokenizer.pad_token_id, batch_size)
        rows[split] = write_scores(scored, out_dir / f"{split}.parquet", roles_of(kind))
        seconds[split] = round(time.perf_counter() - start, 3)
    return {"rows": rows, "seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser(__doc__)
    parser.add_argument("--config", required=True, help="the job as JSON: quantization, "
                        "batch_size, trust_remote_code, and what identifies the reference")
    parser.add_argument("--model-dir", required=True, help="the base model's directory")
    parser.add_argument("--adapter-dir", default=None, help="the SFT adapter (none: the base)")
    parser.add_argument("--tokenized-dir", required=True, type=Path,
                        help="preference_tokenize's output")
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    job = json.loads(args.config)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(job.get("seed", 0))
    from workflow_scripts.models.loading import load_tokenizer

    trust = job.get("trust_remote_code", False)
    tokenizer = load_tokenizer(args.model_dir, trust_remote_code=trust)
    model = load_reference(args.model_dir, args.adapter_dir, job.get("quantization"), trust)
    done = score_splits(model, tokenizer, args.tokenized_dir, args.out_dir, job["batch_size"])
    write_json(args.out_dir / "manifest.json", {
        "job": job, **done,
        "tokenized_manifest_sha256": file_sha256(args.tokenized_dir / "manifest.json"),
        "files_sha256": {f"{s}.parquet": file_sha256(args.out_dir / f"{s}.parquet") for s in SPLITS},
    })
    print(json.dumps(done))


if __name__ == "__main__":
    main()

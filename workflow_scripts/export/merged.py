"""The `merged` export: the adapter folded into its base as a standalone model directory with
sharded safetensors, the tokenizer and its chat template, and a generation config holding the
evaluation's decoding settings and stop tokens, so that any runtime answers as it was scored.

The job's config (--config, canonical JSON): {"base_model": the base_models entry,
"evaluation": the experiment's evaluation settings, "max_shard_size": e.g. "2GB"}.
"""
from __future__ import annotations

import json
from pathlib import Path

from workflow_scripts.common.cli import parser as cli_parser
from workflow_scripts.common.io_utils import write_json


def export_merged(model_dir: str, adapter_dir: str, out_dir: Path, job: dict) -> dict:
    from workflow_scripts.evaluation.generation import generation_config, stop_token_ids
    from workflow_scripts.training.merge_adapter import merged_model

    trust = job["base_model"].get("trust_remote_code", False)
    model, tokenizer = merged_model(model_dir, adapter_dir, trust)
    stops = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    model.generation_config = generation_config(job["evaluation"], stops, pad)
    model.save_pretrained(out_dir, safe_serialization=True, max_shard_size=job["max_shard_size"])
    tokenizer.save_pretrained(out_dir)
    info = {"base_model_dir": model_dir, "adapter_dir": adapter_dir, "stop_token_ids": stops,
            "chat_template": bool(tokenizer.chat_template),
            "parameters": sum(p.numel() for p in model.parameters()),
            "files": sorted(p.name for p in out_dir.iterdir())}
    write_json(out_dir / "export_info.json", info)
    return info


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser(__doc__)
    parser.add_argument("--model-dir", required=True, help="the base model's directory")
    parser.add_argument("--adapter-dir", required=True, help="the trained adapter")
    parser.add_argument("--out-dir", required=True, type=Path, help="the merged model's directory")
    parser.add_argument("--config", required=True, help="the job's settings as JSON (see above)")
    args = parser.parse_args(argv)
    print(json.dumps(export_merged(args.model_dir, args.adapter_dir, args.out_dir,
                                   json.loads(args.config))))


if __name__ == "__main__":
    main()

"""Merge a trained adapter into its base model and save a standalone model directory.

A QLoRA adapter is merged into the 16-bit (or fp32 on the CPU) base, never into the 4-bit
weights it was trained against: merging into quantized weights would round the update away.
"""
from __future__ import annotations

import json
from pathlib import Path

from workflow_scripts.common.cli import parser as cli_parser
from workflow_scripts.common.io_utils import write_json


def merged_model(model_dir: str, adapter_dir: str, trust_remote_code: bool = False):
    """The base with the adapter folded into its weights, and the base's tokenizer."""
    from peft import PeftModel

    from workflow_scripts.models.loading import load_model, load_tokenizer

    base = load_model(model_dir, trust_remote_code=trust_remote_code, quantization=None)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    return merged, load_tokenizer(model_dir, trust_remote_code=trust_remote_code)


def merge(model_dir: str, adapter_dir: str, out_dir: Path, trust_remote_code: bool = False) -> dict:
    merged, tokenizer = merged_model(model_dir, adapter_dir, trust_remote_code)
    merged.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    info = {"base_model_dir": model_dir, "adapter_dir": adapter_dir,
            "parameters": sum(p.numel() for p in merged.parameters())}
    write_json(out_dir / "merge_info.json", info)
    return info


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser(__doc__)
    parser.add_argument("--model-dir", required=True, help="the base model's directory")
    parser.add_argument("--adapter-dir", required=True, help="the trained adapter")
    parser.add_argument("--out-dir", required=True, type=Path, help="where the merged model goes")
    parser.add_argument("--config", default="{}", help="the base_models entry as JSON")
    args = parser.parse_args(argv)
    trust = json.loads(args.config).get("trust_remote_code", False)
    print(json.dumps(merge(args.model_dir, args.adapter_dir, args.out_dir, trust)))


if __name__ == "__main__":
    main()

"""Check an adapter against vLLM's LoRA loader and write the `vllm serve` line that serves it.

vLLM loads plain LoRA A/B matrices only. Its loader refuses `modules_to_save`, DoRA, full
embedding or output-head weights and PEFT trainable tokens; `--max-lora-rank` takes one of
SUPPORTED_MAX_RANKS (default 16) and an adapter of a higher rank is refused. rsLoRA's
alpha/sqrt(r) scaling is honoured. Each refusal names the rule and what would fix it.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from workflow_scripts.common.cli import parser as cli_parser

SUPPORTED_MAX_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_MAX_LORA_RANK = 16
MERGED_FIX = "or export the `merged` target and serve that model without --enable-lora"


@dataclass(frozen=True)
class Refusal:
    rule: str
    detail: str
    fix: str

    def __str__(self) -> str:
        return f"vLLM rule '{self.rule}': {self.detail}; fix: {self.fix}"


def weight_names(adapter_dir: Path) -> list[str]:
    """The tensor names in the adapter's safetensors file, read from its header only."""
    from safetensors import safe_open

    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as fh:
        return list(fh.keys())


def refusals(adapter_config: dict, names: list[str]) -> list[Refusal]:
    """Every vLLM LoRA-loader rule this adapter breaks (none: vLLM can serve it)."""
    found = []
    if adapter_config.get("peft_type", "LORA") != "LORA":
        found.append(Refusal("LoRA only", f"peft_type is {adapter_config['peft_type']}",
                             "train a LoRA adapter (method: lora or qlora), " + MERGED_FIX))
    if adapter_config.get("use_dora"):
        found.append(Refusal("no DoRA", "use_dora is true (magnitude vectors)",
                             "retrain with method: lora, " + MERGED_FIX))
    if adapter_config.get("trainable_token_indices") or any(
            "trainable_tokens_" in n for n in names):
        found.append(Refusal("no trainable tokens",
                             "the adapter trains embedding rows (lora.trainable_tokens)",
                             "retrain without lora.trainable_tokens, " + MERGED_FIX))
    if adapter_config.get("modules_to_save"):
        found.append(Refusal("no modules_to_save",
                             f"modules_to_save is {adapter_config['modules_to_save']}",
                             "retrain without modules_to_save, " + MERGED_FIX))
    full = sorted({n for n in names if "lora_" not in n and "trainable_tokens_" not in n})
    if full:
        found.append(Refusal("no full embedding or head weights",
                             f"{len(full)} full weights such as {full[0]}",
                             "retrain with LoRA on linear layers only, " + MERGED_FIX))
    if adapter_config.get("bias", "none") != "none" or any(n.endswith("lora_B.bias") for n in names):
        found.append(Refusal("no LoRA bias", f"bias is {adapter_config.get('bias')!r}",
                             "retrain with bias: none, " + MERGED_FIX))
    ranks = [adapter_config["r"], *adapter_config.get("rank_pattern", {}).values()]
    if max(ranks) > SUPPORTED_MAX_RANKS[-1]:
        found.append(Refusal("rank at most --max-lora-rank", f"rank {max(ranks)} > "
                             f"{SUPPORTED_MAX_RANKS[-1]}, vLLM's largest --max-lora-rank",
                             f"retrain with lora.r <= {SUPPORTED_MAX_RANKS[-1]}, " + MERGED_FIX))
    return found


def max_lora_rank(adapter_config: dict) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds the adapter's largest rank."""
    rank = max([adapter_config["r"], *adapter_config.get("rank_pattern", {}).values()])
    return next(n for n in SUPPORTED_MAX_RANKS if n >= rank)


def serve_command(base: str, name: str, adapter_dir: str, rank: int) -> str:
    """The exact `vllm serve` line: the base model with this adapter as model `name`."""
    words = ["vllm", "serve", base, "--enable-lora", "--lora-modules", f"{name}={adapter_dir}",
             "--max-lora-rank", str(rank)]
    return " ".join(shlex.quote(w) for w in words)


def export(adapter_dir: Path, name: str, base: str, out_dir: Path) -> str:
    """Write serve.sh (the `vllm serve` line) and vllm_check.json, or raise SystemExit naming
    every rule the adapter breaks."""
    config_file = adapter_dir / "adapter_config.json"
    adapter_config = json.loads(config_file.read_text(encoding="utf-8"))
    broken = refusals(adapter_config, weight_names(adapter_dir))
    if broken:
        raise SystemExit(f"{config_file}: vLLM cannot serve this adapter:\n  "
                         + "\n  ".join(map(str, broken)))
    rank = max_lora_rank(adapter_config)
    line = serve_command(base, name, str(adapter_dir.resolve()), rank)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "serve.sh").write_text(f"#!/bin/sh\n{line}\n", encoding="utf-8")
    check = {"adapter_dir": str(adapter_dir), "max_lora_rank": rank, "command": line,
             "rslora": bool(adapter_config.get("use_rslora")), "verdict": "pass"}
    (out_dir / "vllm_check.json").write_text(json.dumps(check, indent=1), encoding="utf-8")
    return line


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser(__doc__)
    parser.add_argument("--adapter-dir", required=True, type=Path, help="the trained adapter")
    parser.add_argument("--name", required=True, help="the model name clients ask vLLM for")
    parser.add_argument("--base", required=True,
                        help="the base model vLLM loads: a hub id or a model directory")
    parser.add_argument("--out-dir", required=True, type=Path, help="where serve.sh goes")
    args = parser.parse_args(argv)
    print(export(args.adapter_dir, args.name, args.base, args.out_dir))


if __name__ == "__main__":
    main()

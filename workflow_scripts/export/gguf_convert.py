"""GGUF files for llama.cpp and Ollama, written by llama.cpp's own converters.

`model`: a Hugging Face model directory (the merged export, or a base) through
convert_hf_to_gguf.py at f16, bf16 or q8_0. `lora`: a PEFT adapter through
convert_lora_to_gguf.py, for llama.cpp's `--lora` on the base's GGUF. The converters are the
ones llama-cpp-python's source distribution vendors, copied by scripts/setup_export.sh into
--tools; they run here, in this process, with the workflow's own environment.

llama.cpp recognises a BPE tokenizer's pre-tokenizer by a hash of the ids it gives on a fixed
text, so a tokenizer trained here (the scratch base model's) is unknown to it even when its
pre-tokenization is exactly one llama.cpp implements. Such a tokenizer is named by its
tokenizer.json's normalizer and pre-tokenizer (KNOWN_PRE_TOKENIZERS); any other unknown one
is refused with the reason and the fix. The load-back check proves a declared name right.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import runpy
import shutil
import sys
import tempfile
from pathlib import Path

from workflow_scripts.common.cli import parser as cli_parser

SETUP_HINT = "scripts/setup_export.sh writes them (docs/export.md)"
# Qwen2's tokenizer.json (Qwen2, Qwen2.5, Qwen3): NFC, then this split, then byte-level
# without a prefix space. llama.cpp's `qwen2` pre-tokenizer applies the same regex.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
KNOWN_PRE_TOKENIZERS = {
    "qwen2": {
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]},
    },
}


def ids_settings(tokenizer_json: dict) -> dict:
    """The normalizer and pre-tokenizer settings that decide token ids (`trim_offsets` only
    moves character offsets, so it is left out)."""
    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "trim_offsets"}
        return [strip(v) for v in node] if isinstance(node, list) else node

    return {"normalizer": strip(tokenizer_json.get("normalizer")),
            "pre_tokenizer": strip(tokenizer_json.get("pre_tokenizer"))}


def declared_pre_tokenizer(model_dir: Path) -> str | None:
    """llama.cpp's name for this tokenizer's pre-tokenization, when it is one of ours."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    settings = ids_settings(json.loads(path.read_text(encoding="utf-8")))
    return next((name for name, known in KNOWN_PRE_TOKENIZERS.items() if known == settings), None)


def unknown_tokenizer(model_dir: Path) -> str:
    return (f"{model_dir / 'tokenizer.json'}: llama.cpp's converter does not recognise this "
            "tokenizer's pre-tokenizer (the hash of its ids on llama.cpp's check text is not in "
            "its list), and its normalizer and pre-tokenizer are none of "
            f"{sorted(KNOWN_PRE_TOKENIZERS)} (workflow_scripts/export/gguf_convert.py): llama.cpp "
            "would split text differently from transformers. Fix: a base model whose tokenizer "
            "llama.cpp knows (Qwen2/2.5/3, Llama 3, ...), or, where its pre-tokenization is one "
            "llama.cpp implements, an entry in KNOWN_PRE_TOKENIZERS; the merged and vllm targets "
            "need no GGUF")


def tools_dir(path: Path) -> Path:
    if not (path / "convert_hf_to_gguf.py").is_file():
        raise SystemExit(f"{path}: llama.cpp's converters are not there; {SETUP_HINT}")
    return path


def run_converter(tools: Path, script: str, argv: list[str], model_dir: Path) -> None:
    """Run one of llama.cpp's converter scripts in this process, naming a tokenizer it does
    not know by KNOWN_PRE_TOKENIZERS when it is one of them."""
    sys.path[:0] = [str(tools), str(tools / "gguf-py")]
    from conversion import base  # llama.cpp's own package, from `tools`

    recognise = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return recognise(self, tokenizer)
        except NotImplementedError:
            name = declared_pre_tokenizer(model_dir)
            if name is None:
                raise SystemExit(unknown_tokenizer(model_dir)) from None
            logging.warning("pre-tokenizer declared as %r from %s", name, model_dir / "tokenizer.json")
            return name

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = [script, *argv]
    runpy.run_path(str(tools / script), run_name="__main__")


def lora_refusal(adapter_config: dict, names: list[str]) -> str | None:
    """Why llama.cpp's --lora cannot carry this adapter as trained, if it cannot."""
    if any("trainable_tokens_" in n for n in names) or adapter_config.get("trainable_token_indices"):
        return ("it trains embedding rows (lora.trainable_tokens), which llama.cpp's --lora, "
                "holding LoRA matrices only, cannot carry; fix: use the merged GGUF beside it "
                "(it holds the rows), or retrain without lora.trainable_tokens")
    if adapter_config.get("use_dora"):
        return "it is a DoRA adapter, which llama.cpp's --lora does not apply; fix: the merged GGUF"
    if adapter_config.get("modules_to_save"):
        return "it has modules_to_save (full weights); fix: the merged GGUF"
    if adapter_config.get("use_rslora") and (adapter_config.get("rank_pattern")
                                             or adapter_config.get("alpha_pattern")):
        return "rsLoRA with per-module ranks cannot be written as one alpha; fix: the merged GGUF"
    return None


def llama_cpp_alpha(adapter_config: dict) -> float:
    """The alpha that makes llama.cpp's scale alpha/r equal the adapter's own: rsLoRA scales
    by alpha/sqrt(r), which the converter does not read."""
    alpha = adapter_config["lora_alpha"]
    return alpha * math.sqrt(adapter_config["r"]) if adapter_config.get("use_rslora") else alpha


def convert_lora(tools: Path, adapter_dir: Path, base_dir: Path, outfile: Path) -> None:
    from workflow_scripts.export.vllm_adapter import weight_names

    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    refusal = lora_refusal(adapter_config, weight_names(adapter_dir))
    if refusal:
        raise SystemExit(f"{adapter_dir}: no LoRA GGUF: {refusal}")
    with tempfile.TemporaryDirectory() as tmp:  # the adapter with llama.cpp's alpha
        staged = Path(tmp)
        shutil.copy(adapter_dir / "adapter_model.safetensors", staged)
        adapter_config.update(lora_alpha=llama_cpp_alpha(adapter_config), use_rslora=False)
        (staged / "adapter_config.json").write_text(json.dumps(adapter_config), encoding="utf-8")
        run_converter(tools, "convert_lora_to_gguf.py", [
            "--base", str(base_dir), "--outtype", "f16", "--outfile", str(outfile), str(staged)],
            base_dir)


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser(__doc__)
    parser.add_argument("what", choices=["model", "lora"])
    parser.add_argument("--tools", required=True, type=Path,
                        help="the folder holding convert_hf_to_gguf.py, conversion/ and gguf-py/")
    parser.add_argument("--model-dir", required=True, type=Path,
                        help="the model to convert (model), or the adapter's base (lora)")
    parser.add_argument("--adapter-dir", type=Path, help="the PEFT adapter (lora)")
    parser.add_argument("--outtype", default="f16", choices=["f16", "bf16", "q8_0"])
    parser.add_argument("--outfile", required=True, type=Path)
    args = parser.parse_args(argv)
    tools = tools_dir(args.tools)
    args.outfile.parent.mkdir(parents=True, exist_ok=True)
    if args.what == "lora":
        if args.adapter_dir is None:
            raise argparse.ArgumentTypeError("lora needs --adapter-dir")
        convert_lora(tools, args.adapter_dir, args.model_dir, args.outfile)
    else:
        run_converter(tools, "convert_hf_to_gguf.py", [
            "--outtype", args.outtype, "--outfile", str(args.outfile), str(args.model_dir)],
            args.model_dir)
    if not args.outfile.is_file():
        raise SystemExit(f"{args.outfile}: the converter wrote no file")


if __name__ == "__main__":
    main()

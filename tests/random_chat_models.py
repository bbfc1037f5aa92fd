"""A random Qwen2 base with a ChatML tokenizer and random LoRA adapters (with trainable
chat tokens, as the default config trains them) in a studio working directory: every model
answers something different, so batched and unbatched answers can be compared token by
token. Used by tests/test_studio_batching.py and benchmarks/bench_studio.py."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]


def random_base(path: Path, hidden: int = 64, layers: int = 2, seed: int = 0,
                never_ends: bool = False, context: int = 1024) -> Path:
    """`never_ends`: the special tokens' (tied) embedding rows are zero, so their logit is 0
    while some other token's is positive: greedy decoding runs to its token limit."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from scripted_model import tokenizer_with_tools

    tokenizer = tokenizer_with_tools()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=context, tie_word_embeddings=True,
                         initializer_range=0.3, eos_token_id=im_end,  # 0.3: varied answers
                         pad_token_id=tokenizer.pad_token_id)
    model = Qwen2ForCausalLM(config)
    if never_ends:
        with torch.no_grad():
            model.model.embed_tokens.weight[tokenizer.all_special_ids] = 0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def random_adapter(model_dir: Path, out: Path, seed: int, trainable_tokens: bool = True) -> Path:
    """A LoRA adapter with random (non-zero) matrices and, optionally, perturbed rows for
    the chat tokens."""
    from peft import LoraConfig, get_peft_model

    from workflow_scripts.models.loading import load_model, load_tokenizer

    vocab = load_tokenizer(str(model_dir)).get_vocab()
    torch.manual_seed(seed)
    model = get_peft_model(load_model(str(model_dir)), LoraConfig(
        task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules="all-linear",
        init_lora_weights=False,
        trainable_token_indices=sorted(vocab[t] for t in CHAT_TOKENS) if trainable_tokens else None))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "trainable_tokens_delta" in name:
                parameter.add_(torch.randn_like(parameter))
    model.save_pretrained(out)
    return out


def studio_workdir(root: Path, adapters: int = 3, trainable_tokens: bool = True, **base) -> list[str]:
    """A config.yaml with base model `rand` and experiments a0.. with random adapters."""
    random_base(root / "rand", **base)
    (root / "data.json").write_text(json.dumps([{"instruction": "你好", "output": "你好"}]))
    names = [f"a{i}" for i in range(adapters)]
    for i, name in enumerate(names):
        random_adapter(root / "rand", root / "results" / "adapters" / name, seed=100 + i,
                       trainable_tokens=trainable_tokens)
    config = {"datasets": {"d": {"format": "alpaca", "files": ["data.json"]}},
              "base_models": {"rand": {"source": "path", "path": str(root / "rand")}},
              "experiments": {n: {"base_model": "rand", "dataset": "d"} for n in names}}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return names

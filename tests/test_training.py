"""train_adapter's own code path on tiny random models of four architectures."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from workflow_scripts.common.config import resolve_experiments
from workflow_scripts.common.io_utils import write_jsonl
from workflow_scripts.models.build_base_model import train_tokenizer
from workflow_scripts.training.train_adapter import train

DECODER_LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
EXPECTED_TARGETS = {"gpt2": {"c_attn", "c_proj", "c_fc"}, "llama": DECODER_LINEARS,
                    "qwen2": DECODER_LINEARS, "qwen3": DECODER_LINEARS}
TOPICS = ["天气", "学习", "旅行", "做饭", "运动", "音乐", "电影", "编程"]


def conversations() -> list[list[dict]]:
    """Sixteen short chats of varied length."""
    return [[{"role": "user", "content": f"请介绍一下{topic}。" + "详细地" * (i % 3)},
             {"role": "assistant", "content": f"{topic}很有意思。" * (1 + i % 4)}]
            for i, topic in enumerate(TOPICS * 2)]


def tiny_config(arch: str, vocab: int):
    from transformers import GPT2Config, LlamaConfig, Qwen2Config, Qwen3Config

    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=128)
    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    if arch == "qwen3":
        return Qwen3Config(head_dim=8, **common)
    return {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch](**common)


def save_tiny_model(arch: str, path: Path) -> Path:
    from transformers import AutoModelForCausalLM

    tokenizer = train_tokenizer(conversations(), vocab_size=300)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, len(tokenizer)))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_data(path: Path) -> Path:
    chats = [{"id": str(i), "messages": m} for i, m in enumerate(conversations())]
    path.mkdir(parents=True, exist_ok=True)
    write_jsonl(path / "train.jsonl", chats[:12])
    write_jsonl(path / "valid.jsonl", chats[12:])
    return path


def make_job(model_dir: Path, method: str = "lora", seed: int = 3, **overrides) -> dict:
    """The job slice Snakemake passes, with the schema's defaults filled in."""
    training = {"learning_rate": 1e-2, "max_steps": 1, "batch_size": 4, "max_length": 64,
                "logging_steps": 1, "save_steps": 50, "warmup_ratio": 0.0}
    lora = {"r": 4, "alpha": 8}
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        {"training": training, "lora": lora}[section][key] = value
    config = {"datasets": {"d": {"format": "alpaca", "files": ["x.json"]}},
              "base_models": {"m": {"source": "path", "path": str(model_dir)}},
              "experiments": {"e": {"base_model": "m", "dataset": "d", "method": method,
                                    "lora": lora, "training": training}}}
    experiment = resolve_experiments(config)["e"]
    return {"experiment": experiment, "seed": seed,
            "base_model": {"source": "path", "path": str(model_dir)}}


def run_training(job: dict, model_dir: Path, data_dir: Path, root: Path) -> tuple[dict, Path]:
    out = root / "adapter"
    out.mkdir(parents=True)
    metrics = train(job, str(model_dir), data_dir, out, root / "checkpoints")
    return metrics, out


def adapter_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory) -> Path:
    return save_tiny_model("qwen2", tmp_path_factory.mktemp("qwen2"))


@pytest.mark.parametrize("method", ["lora", "qlora"])
@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2", "qwen3"])
def test_one_step_on_every_architecture(arch, method, data_dir, tmp_path):
    model_dir = save_tiny_model(arch, tmp_path / "model")
    metrics, out = run_training(make_job(model_dir, method), model_dir, data_dir, tmp_path)
    targets = json.loads((out / "adapter_config.json").read_text())["target_modules"]
    assert {name.split(".")[-1] for name in targets} == EXPECTED_TARGETS[arch]
    weights = adapter_weights(out)
    assert not any("lm_head" in name or "wte" in name for name in weights)
    assert metrics["steps"] == 1 and math.isfinite(metrics["final_loss"])
    # B starts at zero: a non-zero B is a LoRA weight the step changed.
    assert any(w.abs().sum() > 0 for name, w in weights.items() if "lora_B" in name)
    assert 0 < metrics["trainable_params"] < metrics["total_params"]

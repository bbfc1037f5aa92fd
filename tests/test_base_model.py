"""Scratch base model build, loading (4-bit, remote code refused) and the LoRA size check."""
import fnmatch
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

from workflow_scripts.common.io_utils import read_jsonl, write_jsonl
from workflow_scripts.models.build_base_model import build
from workflow_scripts.models.chat_templates import CHATML_TEMPLATE
from workflow_scripts.models.loading import (HUB_ALLOW_PATTERNS, M_MMAP_THRESHOLD,
                                             MMAP_THRESHOLD_BYTES, load_model, load_tokenizer,
                                             resolve_model_dir)

SPEC = {
    "source": "scratch",
    "architecture": "qwen2",
    "vocab_size": 500,
    "hidden_size": 32,
    "intermediate_size": 64,
    "layers": 1,
    "heads": 2,
    "kv_heads": 1,
    "max_position_embeddings": 128,
    "pretrain": {"datasets": ["toy"], "steps": 40, "batch_size": 4, "seq_len": 32, "learning_rate": 3e-3},
}
TOPICS = ["天气", "读书", "音乐", "旅行", "做饭", "跑步", "电影", "编程"]


def toy_records() -> list[dict]:
    records = []
    for i, topic in enumerate(TOPICS * 3):
        messages = [
            {"role": "user", "content": f"你喜欢{topic}吗？第{i}次问。"},
            {"role": "assistant", "content": f"我很喜欢{topic}，每周{i % 7 + 1}次，Hello world {i}."},
        ]
        records.append({"id": str(i), "messages": messages, "source": {"file": "toy", "index": i}})
    return records


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    write_jsonl(path, toy_records())
    return str(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, data_file):
    out = tmp_path_factory.mktemp("models") / "toy"
    build("toy", SPEC, seed=7, data_files=[data_file], out_dir=str(out), threads=1)
    return str(out)


def test_directory_loads_with_auto_classes(model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.model_type == "qwen2" and model.config.tie_word_embeddings
    assert model.config.vocab_size == len(tokenizer) <= SPEC["vocab_size"]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    ids = tokenizer("你喜欢音乐吗？", return_tensors="pt")["input_ids"]
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tokenizer))


def test_chat_template_renders_chatml(model_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    messages = [
        {"role": "system", "content": "你是助手。"},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！"},
        {"role": "user", "content": "再见"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\n你是助手。<|im_end|>\n"
        "<|im_start|>user\n你好<|im_end|>\n"
        "<|im_start|>assistant\n你好！<|im_end|>\n"
        "<|im_start|>user\n再见<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    no_prompt = tokenizer.apply_chat_template(messages[1:2], tokenize=False)
    assert no_prompt == "<|im_start|>user\n你好<|im_end|>\n"
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.apply_chat_template(messages[1:2], tokenize=True)["input_ids"].count(im_end) == 1


@pytest.mark.parametrize("text", ["你好，世界！", "Qwen2 模型 v0.5B 于2024年发布。", "零一二 123 abc\n\t  ～「」"])
def test_tokenizer_round_trips(model_dir, text):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_pretraining_loss_decreases(model_dir):
    rows = list(read_jsonl(f"{model_dir}/pretrain_log.jsonl"))
    assert [r["step"] for r in rows] == list(range(1, SPEC["pretrain"]["steps"] + 1))
    first, last = [sum(r["loss"] for r in part) / 5 for part in (rows[:5], rows[-5:])]
    assert last < first - 0.5
    with open(f"{model_dir}/build_info.json", encoding="utf-8") as fh:
        info = json.load(fh)
    assert info["initial_loss"] == rows[0]["loss"] and info["final_loss"] == rows[-1]["loss"]
    assert info["tokens_seen"] == 40 * 4 * 32 and info["parameters"] > 0


def test_pretraining_sees_plain_text_only(model_dir, data_file):
    """The base model learns the language, not the chat format: no template, no role names,
    no special token but the document separator in what it is pretrained on."""
    from workflow_scripts.models.build_base_model import pack_blocks, read_conversations

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    blocks = pack_blocks(tokenizer, read_conversations([data_file]), seq_len=32)
    special = set(tokenizer.all_special_ids) - {tokenizer.pad_token_id}
    assert tokenizer.pad_token == "<|endoftext|>"
    assert not special & set(blocks.flatten().tolist())
    text = tokenizer.decode(blocks.flatten())
    assert "user" not in text and "assistant" not in text and "你喜欢天气吗" in text


def test_same_seed_gives_identical_weights(model_dir, data_file, tmp_path):
    build("toy", SPEC, seed=7, data_files=[data_file], out_dir=str(tmp_path), threads=1)
    first = load_file(f"{model_dir}/model.safetensors")
    second = load_file(tmp_path / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_load_model_in_4bit_on_cpu(model_dir):
    import bitsandbytes as bnb

    model = load_model(model_dir, quantization="4bit", device="cpu")
    assert getattr(model, "is_loaded_in_4bit", False)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    tokenizer = load_tokenizer(model_dir)
    ids = tokenizer("你好", return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(input_ids=ids).logits).all()


def test_4bit_model_quantizes_every_block_linear(model_dir):
    import bitsandbytes as bnb

    model = load_model(model_dir, quantization="4bit", device="cpu")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert all(isinstance(m, bnb.nn.Linear4bit) for n, m in linears.items() if n != "lm_head")
    # Embeddings and norms stay in the CPU compute dtype, fp32.
    others = [p for p in model.parameters() if not isinstance(p, bnb.nn.Params4bit)]
    assert others and all(p.dtype == torch.float32 for p in others)


class FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, option, value):
        self.calls.append(("mallopt", option, value))

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))


def test_load_model_trims_after_loading_and_pins_the_threshold_for_4bit(model_dir, monkeypatch):
    from workflow_scripts.models import loading as model_loading

    libc = FakeLibc()
    monkeypatch.setattr(model_loading, "glibc", lambda: libc)
    load_model(model_dir, device="cpu")
    assert libc.calls == [("malloc_trim", 0)]
    libc.calls.clear()
    load_model(model_dir, device="cpu", quantization="4bit")
    assert libc.calls == [("mallopt", M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), ("malloc_trim", 0)]


def test_remote_code_runs_only_when_trusted(tmp_path):
    marker = tmp_path / "executed"
    (tmp_path / "configuration_custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = {
        "model_type": "custom-untrusted",
        "auto_map": {
            "AutoConfig": "configuration_custom.CustomConfig",
            "AutoModelForCausalLM": "configuration_custom.CustomModel",
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_model(str(tmp_path))
    assert not marker.exists()
    with pytest.raises(AttributeError):  # the module runs, then lacks the classes it names
        load_model(str(tmp_path), trust_remote_code=True)
    assert marker.exists()


def test_tokenizer_fallbacks(model_dir, tmp_path, caplog):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = None
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token == loaded.eos_token == "<|im_end|>"
    assert loaded.chat_template == CHATML_TEMPLATE
    assert "no chat template" in caplog.text


def test_resolve_model_dir_and_hub_patterns():
    assert resolve_model_dir("tiny", {"source": "scratch"}) == "results/models/tiny"
    assert resolve_model_dir("q", {"source": "hub", "id": "Qwen/Qwen2-0.5B", "revision": "abc"}, "m") == "m/q"
    assert resolve_model_dir("p", {"source": "path", "path": "/models/x"}) == "/models/x"
    wanted = ["model.safetensors", "config.json", "tokenizer.json", "merges.txt", "vocab.json"]
    refused = ["pytorch_model.bin", "training_args.bin", "optimizer.pt"]
    matches = lambda name: any(fnmatch.fnmatch(name, p) for p in HUB_ALLOW_PATTERNS)  # noqa: E731
    assert all(map(matches, wanted)) and not any(map(matches, refused))


def test_lora_on_qwen2_05b_has_the_published_trainable_count():
    from peft import LoraConfig, get_peft_model

    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    lora = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=8, target_modules="all-linear"))
    trainable, _ = lora.get_nb_trainable_parameters()
    assert trainable == 4_399_104

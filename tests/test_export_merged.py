"""The merged export: sharded safetensors that load and answer like base + adapter, with the
tokenizer, its chat template, and the evaluation's decoding settings and stop tokens."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from random_chat_models import random_adapter, random_base

REPO = Path(__file__).resolve().parent.parent
EVALUATION = {"max_new_tokens": 24, "do_sample": False, "temperature": 1.0, "top_p": 1.0,
              "top_k": 0, "repetition_penalty": 1.1}


def test_the_merged_export_is_a_complete_model_directory(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workflow_scripts.models.loading import load_model

    base = random_base(tmp_path / "base", hidden=32, layers=1)
    adapter = random_adapter(base, tmp_path / "adapter", seed=5)
    job = {"base_model": {"source": "path"}, "evaluation": EVALUATION, "max_shard_size": "50KB"}
    out = tmp_path / "merged"
    proc = subprocess.run([sys.executable, "-m", "workflow_scripts.export.merged", "--model-dir",
                           str(base), "--adapter-dir", str(adapter), "--out-dir", str(out),
                           "--config", json.dumps(job)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded at max_shard_size

    tokenizer = AutoTokenizer.from_pretrained(out)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True)
    generation = json.loads((out / "generation_config.json").read_text())
    assert im_end in generation["eos_token_id"]
    assert (generation["do_sample"], generation["max_new_tokens"],
            generation["repetition_penalty"]) == (False, 24, 1.1)

    merged = AutoModelForCausalLM.from_pretrained(out)
    with_adapter = PeftModel.from_pretrained(load_model(str(base)), str(adapter))
    ids = torch.tensor([[5, 17, 42, im_end, 3, 250, 7]])  # a trained chat-token row included
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, with_adapter(input_ids=ids).logits,
                              atol=1e-4)
        assert not torch.allclose(merged(input_ids=ids).logits,
                                  load_model(str(base))(input_ids=ids).logits, atol=1e-3)

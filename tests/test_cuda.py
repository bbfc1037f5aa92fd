"""The GPU paths: bf16 training, QLoRA training, evaluation and merge, packing's attention.

Marked `cuda` and skipped on machines without an NVIDIA GPU; benchmarks/gpu_check.sh runs
them where there is one.
"""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from test_packing import PAD, SAMPLES, tiny_model
from test_training import adapter_weights, data_dir, make_job, qwen2_dir, run_training  # noqa: F401

from workflow_scripts.common.io_utils import read_jsonl
from workflow_scripts.training.packing import NUM_TOKENS_KEY, PackedCollator, pack_features

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU"),
]


def changed_lora_b(weights: dict[str, torch.Tensor]) -> bool:
    """B starts at zero: a non-zero B is an update the training made."""
    return any(w.abs().sum() > 0 for name, w in weights.items() if "lora_B" in name)


def test_lora_trains_in_bf16_on_the_gpu(qwen2_dir, data_dir, tmp_path):
    from workflow_scripts.models.loading import compute_dtype

    assert compute_dtype() == torch.bfloat16  # every GPU this check targets has bf16
    metrics, out = run_training(make_job(qwen2_dir, training__max_steps=2), qwen2_dir, data_dir,
                                tmp_path)
    assert metrics["device"] == "cuda" and metrics["steps"] == 2
    assert math.isfinite(metrics["final_loss"]) and math.isfinite(metrics["eval_loss"])
    assert changed_lora_b(adapter_weights(out))


def test_qlora_trains_evaluates_and_merges_on_the_gpu(qwen2_dir, data_dir, tmp_path):
    import bitsandbytes as bnb

    from workflow_scripts.evaluation.evaluate import record_losses
    from workflow_scripts.evaluation.generation import generate, load_for_eval
    from workflow_scripts.models.loading import load_model
    from workflow_scripts.training.merge_adapter import merge

    metrics, out = run_training(make_job(qwen2_dir, "qlora", training__max_steps=2), qwen2_dir,
                                data_dir, tmp_path)
    assert metrics["device"] == "cuda" and changed_lora_b(adapter_weights(out))

    model, tokenizer = load_for_eval(str(qwen2_dir), str(out), False, "4bit")
    assert model.device.type == "cuda"
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    records = list(read_jsonl(data_dir / "valid.jsonl"))
    rows, _ = record_losses(model, tokenizer, records, 64, 4)
    assert rows and all(math.isfinite(r["loss_sum"]) and r["n_tokens"] > 0 for r in rows)
    settings = {"max_new_tokens": 4, "do_sample": False, "batch_size": 2, "max_length": 64,
                "temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}
    answers, _ = generate(model, tokenizer, [r["messages"][:1] for r in records[:2]], settings, 0)
    assert len(answers) == 2

    merged_dir = tmp_path / "merged"
    merge(str(qwen2_dir), str(out), merged_dir)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(merged_dir, use_safetensors=True).to("cuda")
    assert not getattr(merged.config, "quantization_config", None)
    unmerged = PeftModel.from_pretrained(load_model(str(qwen2_dir), dtype=merged.dtype), str(out))
    ids = torch.tensor([[5, 17, 42, 99, 3, 120, 7]], device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, unmerged(input_ids=ids).logits,
                                   atol=2e-3, rtol=2e-3)


ATTENTION = [("sdpa", torch.float32, 1e-4)]
if importlib.util.find_spec("flash_attn") is not None:
    ATTENTION.append(("flash_attention_2", torch.bfloat16, 3e-2))


@pytest.mark.parametrize("attn,dtype,tol", ATTENTION, ids=[a[0] for a in ATTENTION])
def test_packed_rows_attend_within_each_sample_on_the_gpu(attn, dtype, tol):
    model = tiny_model("qwen2", attn).to("cuda", dtype)
    (row,) = pack_features(SAMPLES, 64)
    batch = PackedCollator(PAD, attn)([row])
    batch.pop(NUM_TOKENS_KEY)
    batch = {k: v.to("cuda") for k, v in batch.items()}
    offsets = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
    with torch.no_grad():
        packed = model(**batch).logits[0].float()
        for start, end in zip(offsets, offsets[1:]):
            alone = model(input_ids=torch.tensor([row["input_ids"][start:end]], device="cuda"))
            torch.testing.assert_close(packed[start:end], alone.logits[0].float(), atol=tol, rtol=tol)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two NVIDIA GPUs")
def test_two_gpus_train_through_local_launch_with_nccl(qwen2_dir, data_dir, tmp_path):
    """local_launch's CUDA path: a FileStore with NCCL, one rank per GPU; only rank 0 writes."""
    import json
    import subprocess
    import sys

    from test_distributed import REPO, cli, launcher

    job = make_job(qwen2_dir, training__batch_size=2, training__devices=2, training__max_steps=2)
    proc = subprocess.run([sys.executable, *launcher(2), *cli(job, qwen2_dir, data_dir, tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    metrics = json.loads((tmp_path / "adapter" / "train_metrics.json").read_text())
    assert metrics["device"] == "cuda" and metrics["steps"] == 2
    assert changed_lora_b(adapter_weights(tmp_path / "adapter"))


def test_the_chunked_loss_stays_on_and_exact_in_bf16_on_the_gpu(tmp_path):
    """The probe passes a bf16 model with LoRA and trainable tokens on a tied head (nothing
    rescales its logits: the loss stays chunked), and the chunked loss and gradients equal
    the full-logits ones to bf16 precision, under the Trainer's bf16 autocast."""
    from test_chunked_loss import TOKENS, batch, peft_model, save_tiny_model

    from workflow_scripts.training import token_loss

    model_dir = save_tiny_model("qwen2", tmp_path / "tied", tie_word_embeddings=True)
    model, tokenizer = peft_model(model_dir, "lora", TOKENS)
    assert model.device.type == "cuda"
    inputs = {k: v.to("cuda") for k, v in batch(tokenizer, model, packed=False).items()}
    labels = inputs.pop("labels")
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert token_loss.chunked_loss_applies(model, inputs)
        chunked = token_loss.training_loss(model, inputs, labels)
        full = model(**inputs, labels=labels).loss
    assert chunked.item() == pytest.approx(full.item(), rel=1e-2)
    for a, b in zip(torch.autograd.grad(chunked, trainable), torch.autograd.grad(full, trainable)):
        assert (a.float() - b.float()).norm() <= 5e-2 * b.float().norm() + 1e-6

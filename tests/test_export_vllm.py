"""The vllm export target: real PEFT adapters on a small random Qwen2 checked against vLLM's
LoRA-loader rules; a refusal names the rule and the fix, a plain LoRA gets its serve line."""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from random_chat_models import random_adapter, random_base

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return random_base(tmp_path_factory.mktemp("vllm") / "base", hidden=32, layers=1)


def peft_adapter(base: Path, out: Path, **lora) -> Path:
    from peft import LoraConfig, get_peft_model

    from workflow_scripts.models.loading import load_model

    torch.manual_seed(0)
    model = get_peft_model(load_model(str(base)), LoraConfig(
        task_type="CAUSAL_LM", target_modules="all-linear", **{"r": 4, "lora_alpha": 8} | lora))
    model.save_pretrained(out)
    return out


def run_export(adapter: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "workflow_scripts.export.vllm_adapter", "--adapter-dir",
         str(adapter), "--name", "my-exp", "--base", "results/models/tiny", "--out-dir", str(out)],
        cwd=REPO, capture_output=True, text=True)


def test_a_plain_lora_gets_its_serve_line(base, tmp_path):
    adapter = peft_adapter(base, tmp_path / "plain", r=16, use_rslora=True)
    proc = run_export(adapter, tmp_path / "vllm")
    assert proc.returncode == 0, proc.stderr
    line = (tmp_path / "vllm" / "serve.sh").read_text().splitlines()[-1]
    assert shlex.split(line) == ["vllm", "serve", "results/models/tiny", "--enable-lora",
                                 "--lora-modules", f"my-exp={adapter.resolve()}",
                                 "--max-lora-rank", "16"]


@pytest.mark.parametrize("rank, expected", [(4, 8), (8, 8), (9, 16), (300, 320), (512, 512)])
def test_max_lora_rank_is_the_smallest_supported_value_that_holds_the_rank(rank, expected):
    from workflow_scripts.export.vllm_adapter import max_lora_rank

    assert max_lora_rank({"r": rank}) == expected
    assert max_lora_rank({"r": 4, "rank_pattern": {"q_proj": rank}}) == expected


def test_trainable_tokens_are_refused_naming_the_rule_and_the_fix(base, tmp_path):
    adapter = random_adapter(base, tmp_path / "tokens", seed=1, trainable_tokens=True)
    proc = run_export(adapter, tmp_path / "vllm")
    assert proc.returncode != 0
    assert "vLLM rule 'no trainable tokens'" in proc.stderr
    assert "retrain without lora.trainable_tokens" in proc.stderr
    assert "export the `merged` target" in proc.stderr
    assert str(adapter / "adapter_config.json") in proc.stderr
    assert not (tmp_path / "vllm" / "serve.sh").exists()


def test_dora_is_refused(base, tmp_path):
    proc = run_export(peft_adapter(base, tmp_path / "dora", use_dora=True), tmp_path / "vllm")
    assert proc.returncode != 0
    assert "vLLM rule 'no DoRA'" in proc.stderr and "method: lora" in proc.stderr


def test_modules_to_save_and_full_head_weights_are_refused(base, tmp_path):
    adapter = peft_adapter(base, tmp_path / "head", modules_to_save=["lm_head"])
    proc = run_export(adapter, tmp_path / "vllm")
    assert proc.returncode != 0
    assert "vLLM rule 'no modules_to_save'" in proc.stderr
    assert "vLLM rule 'no full embedding or head weights'" in proc.stderr


def test_bias_and_too_high_a_rank_are_refused():
    from workflow_scripts.export.vllm_adapter import refusals

    rules = [r.rule for r in refusals({"r": 1024, "bias": "lora_only"}, ["x.lora_A.weight"])]
    assert rules == ["no LoRA bias", "rank at most --max-lora-rank"]
    assert refusals({"r": 8}, ["x.lora_A.weight", "x.lora_B.weight"]) == []

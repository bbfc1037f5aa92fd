"""The side-by-side comparison command and the merged model, on the smoke run's outputs."""
import json
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow


def compare(workflow, *args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "workflow_scripts.compare", "--experiment", "rank-r2",
         "--max-new-tokens", "6", *args],
        cwd=workflow.workdir, input=stdin, capture_output=True, text=True, check=True,
        env=workflow.env(),
    )


def test_batch_mode_writes_both_answers_and_the_base_answer_is_the_base_model(smoke_run, tmp_path):
    from workflow_scripts.evaluate_model import generate
    from workflow_scripts.model_loading import load_model, load_tokenizer

    questions = tmp_path / "questions.txt"
    questions.write_text("你好吗？\n介绍一下北京。\n", encoding="utf-8")
    out = tmp_path / "answers.json"
    compare(smoke_run, "--questions", str(questions), "--out", str(out))
    answers = json.loads(out.read_text())["answers"]
    assert [a["question"] for a in answers] == ["你好吗？", "介绍一下北京。"]
    assert all(isinstance(a["base"], str) and isinstance(a["fine_tuned"], str) for a in answers)

    model_dir = str(smoke_run.workdir / "results/models/tiny")
    settings = {"max_new_tokens": 6, "do_sample": False, "batch_size": 8}
    plain, _ = generate(load_model(model_dir), load_tokenizer(model_dir),
                        [[{"role": "user", "content": a["question"]}] for a in answers],
                        settings, seed=42)
    assert [a["base"] for a in answers] == [g.text for g in plain]


def test_interactive_mode_answers_each_line(smoke_run):
    proc = compare(smoke_run, stdin="你好\n今天吃什么？\n")
    assert proc.stdout.count("base:") == 2 and proc.stdout.count("fine-tuned:") == 2


def test_merged_qlora_model_matches_base_plus_adapter(smoke_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from workflow_scripts.model_loading import load_model

    work = smoke_run.workdir
    merged_dir = work / "results/merged/lccc-qlora"
    assert (merged_dir / "model.safetensors").exists()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, use_safetensors=True)
    assert not getattr(merged.config, "quantization_config", None)  # 16/32-bit, not 4-bit
    base = load_model(str(work / "results/models/tiny"))
    with_adapter = PeftModel.from_pretrained(base, str(work / "results/adapters/lccc-qlora"))
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])
    with torch.no_grad():
        expected = with_adapter(input_ids=ids).logits
        actual = merged(input_ids=ids).logits
    assert torch.allclose(expected, actual, atol=1e-4)
    lora_b = [p for n, p in with_adapter.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # the adapter really changes the model

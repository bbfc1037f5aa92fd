"""The side-by-side comparison command and the merged model, on the smoke run's outputs
(and on a scripted model, for function calling)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scripted_model import ASK, CALL_TEXT, WEATHER, tool_caller

REPO = Path(__file__).resolve().parent.parent


def compare(workflow, *args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "workflow_scripts.compare", "--experiment", "rank-r2",
         "--max-new-tokens", "6", *args],
        cwd=workflow.workdir, input=stdin, capture_output=True, text=True, check=True,
        env=workflow.env(),
    )


@pytest.mark.slow
def test_batch_mode_writes_both_answers_and_the_base_answer_is_the_base_model(smoke_run, tmp_path):
    from workflow_scripts.evaluation.generation import generate
    from workflow_scripts.models.loading import load_model, load_tokenizer

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


def zero_lora(model_dir: Path, out: Path) -> Path:
    """A LoRA adapter that changes nothing (B is zero at the start)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    get_peft_model(model, LoraConfig(r=2, target_modules=["c_attn"])).save_pretrained(out)
    return out


def run_compare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workflow_scripts.compare", *args],
                          cwd=REPO, capture_output=True, text=True)


def test_tools_reach_both_prompts_and_calls_are_read_back(tmp_path):
    """The scripted model calls get_weather only after the prompt that shows it the tool."""
    model_dir = tool_caller(tmp_path / "model")
    adapter_dir = zero_lora(model_dir, tmp_path / "adapter")
    (tmp_path / "tools.json").write_text(json.dumps([WEATHER], ensure_ascii=False))
    (tmp_path / "questions.txt").write_text(ASK[0]["content"] + "\n", encoding="utf-8")
    common = ["--model-dir", str(model_dir), "--adapter-dir", str(adapter_dir),
              "--questions", str(tmp_path / "questions.txt"), "--max-new-tokens", "40"]
    shown = run_compare(*common, "--tools", str(tmp_path / "tools.json"))
    assert shown.returncode == 0, shown.stderr[-2000:]
    (row,) = json.loads(shown.stdout)
    call = {"name": "get_weather", "arguments": {"city": "北京"}}
    assert row["base_calls"] == row["fine_tuned_calls"] == [call]
    assert row["base"] == CALL_TEXT

    hidden = run_compare(*common)
    (row,) = json.loads(hidden.stdout)
    assert "base_calls" not in row and "<tool_call>" not in row["base"]


def test_a_bad_tools_file_is_refused_naming_it(tmp_path):
    bad = tmp_path / "tools.json"
    bad.write_text('[{"description": "no name"}]')
    proc = run_compare("--model-dir", "m", "--adapter-dir", "a", "--tools", str(bad))
    assert proc.returncode != 0
    assert f"{bad}: bad_tools: tools[0]: expected an object with a function name" in proc.stderr


@pytest.mark.slow
def test_interactive_mode_answers_each_line(smoke_run):
    proc = compare(smoke_run, stdin="你好\n今天吃什么？\n")
    assert proc.stdout.count("base:") == 2 and proc.stdout.count("fine-tuned:") == 2


@pytest.mark.slow
def test_merged_qlora_model_matches_base_plus_adapter(smoke_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from workflow_scripts.models.loading import load_model

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

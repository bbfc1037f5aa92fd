"""The Ollama Modelfile: ChatML templates (the scratch model's, Qwen2.5's with its default
system prompt) become Ollama's TEMPLATE; any other family is said, not guessed; stop tokens
and the evaluation's decoding settings become PARAMETER lines."""
from __future__ import annotations

import pytest

from workflow_scripts.export.modelfile import modelfile

GREEDY = {"max_new_tokens": 32, "do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
          "repetition_penalty": 1.0}
QWEN_SYSTEM = ("{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are "
               "Qwen, created by Alibaba Cloud.<|im_end|>\\n' }}{%- endif %}")


@pytest.fixture(scope="module")
def tokenizer():
    from scripted_model import tokenizer_with_tools

    return tokenizer_with_tools()


def test_chatml_gets_ollamas_chatml_template_stops_and_greedy_decoding(tokenizer):
    text, why = modelfile("e-q8_0.gguf", tokenizer, GREEDY, ["<|im_end|>", "<|endoftext|>"], 256)
    assert why is None
    assert text == (
        'FROM ./e-q8_0.gguf\n'
        'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n'
        '{{ end }}<|im_start|>assistant\n"""\n'
        'PARAMETER stop "<|im_end|>"\nPARAMETER stop "<|endoftext|>"\n'
        'PARAMETER num_predict 32\nPARAMETER num_ctx 256\nPARAMETER temperature 0\n')


def test_a_default_system_prompt_becomes_ollamas_system(tokenizer):
    original = tokenizer.chat_template
    try:
        tokenizer.chat_template = original.replace(
            "{%- for message in messages %}", QWEN_SYSTEM + "{%- for message in messages %}", 1)
        text, why = modelfile("e.gguf", tokenizer, GREEDY, ["<|im_end|>"], 256)
    finally:
        tokenizer.chat_template = original
    assert why is None
    assert 'SYSTEM "You are Qwen, created by Alibaba Cloud."\n' in text


def test_another_family_is_said_not_guessed(tokenizer):
    original = tokenizer.chat_template
    try:
        tokenizer.chat_template = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
        text, why = modelfile("e.gguf", tokenizer, GREEDY, ["<|im_end|>"], 256)
    finally:
        tokenizer.chat_template = original
    assert why == ("no TEMPLATE: its chat template does not render as ChatML; Ollama's own "
                   "template would not match the evaluation's")
    assert "TEMPLATE" not in text.replace("# no TEMPLATE", "") and f"# {why}\n" in text


def test_sampling_settings_carry_over(tokenizer):
    sampling = GREEDY | {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 20,
                         "repetition_penalty": 1.1}
    text, _ = modelfile("e.gguf", tokenizer, sampling, ["<|im_end|>"], 256)
    assert text.endswith("PARAMETER temperature 0.7\nPARAMETER top_p 0.9\nPARAMETER top_k 20\n"
                         "PARAMETER repeat_penalty 1.1\n")

"""A real model whose answer the test chooses: a GPT-2 built from a config whose weights make
greedy decoding write a chosen token at each position, whatever came before. After one given
tool-calling prompt it writes one `<tool_call>` block and `<|im_end|>`; after any prompt of
another length it writes something else."""
from __future__ import annotations

from pathlib import Path

import torch

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "查询城市天气",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
ASK = [{"role": "user", "content": "北京今天天气怎么样？"}]
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>'
WIDTH = 512  # positions the scripted model knows


def tokenizer_with_tools():
    """A small BPE with the scratch model's ChatML-with-tools template."""
    from workflow_scripts.models.build_base_model import train_tokenizer

    corpus = [[{"role": "user", "content": "北京今天天气怎么样？上海明天下雨吗？查询城市天气"},
               {"role": "assistant", "content": CALL_TEXT + ' "type": "object", "properties"'}]] * 4
    return train_tokenizer(corpus, vocab_size=400)


def scripted_model(path: Path, tokenizer, script: list[int], start: int) -> Path:
    """A GPT-2 that greedily writes script[i] at position start + i.

    Blocks add nothing (their output projections are zero) and token embeddings are zero,
    so the last hidden state is the layer norm of the position embedding, a scaled one-hot;
    the output row of script[i] picks position start + i.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=WIDTH, n_embd=WIDTH, n_layer=1,
                        n_head=1, tie_word_embeddings=False, bos_token_id=im_end,
                        eos_token_id=im_end, pad_token_id=tokenizer.pad_token_id)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.transformer.ln_f.weight.fill_(1.0)
        model.transformer.wpe.weight.copy_(10 * torch.eye(WIDTH))
        for offset, token in enumerate(script):
            model.lm_head.weight[token, start + offset] = 1.0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tool_caller(path: Path, messages: list[dict] = ASK, tools: list[dict] = (WEATHER,)) -> Path:
    """A scripted model that answers `messages` shown `tools` with CALL_TEXT."""
    from workflow_scripts.data.formats import parse_tools
    from workflow_scripts.training.chat_tokenize import render

    tokenizer = tokenizer_with_tools()
    prompt = render(tokenizer, messages, generation_prompt=True, tools=parse_tools(list(tools), "tools"))
    start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    script = tokenizer(CALL_TEXT, add_special_tokens=False)["input_ids"]
    script.append(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    assert start + len(script) < WIDTH
    return scripted_model(path, tokenizer, script, start)

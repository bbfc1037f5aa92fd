"""Evaluation: complete decoding settings, end tokens, prompts fitted to the context,
token-weighted losses, and base models scored under each experiment's own settings."""
from __future__ import annotations

import json
import re
import shlex

import pytest
import torch
import yaml

from workflow_runner import SMOKE_CONFIG, make_workflow
from workflow_scripts.evaluation.evaluate import record_losses
from workflow_scripts.evaluation.generation import (end_of_turn_ids, fit_prompt, generate,
                                                    render_prompt, stop_token_ids)
from workflow_scripts.models.build_base_model import train_tokenizer
from workflow_scripts.training.token_loss import mean_loss

SETTINGS = {"max_new_tokens": 12, "do_sample": False, "temperature": 1.0, "top_p": 1.0,
            "batch_size": 3, "max_length": 128}


def chats() -> list[list[dict]]:
    topics = ["天气", "学习", "旅行", "做饭", "运动", "音乐"]
    return [[{"role": "user", "content": f"请介绍一下{t}。" + "详细地" * (i % 3)},
             {"role": "assistant", "content": f"{t}很有意思。" * (1 + i % 4)}]
            for i, t in enumerate(topics)]


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM, Qwen2Config

    tokenizer = train_tokenizer(chats(), vocab_size=300)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=128, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_config(config).eval()
    return model, tokenizer


def greedy_by_hand(model, ids: list[int], steps: int, stop: list[int]) -> list[int]:
    out = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(torch.tensor([out])).logits[0, -1].argmax())
            out.append(token)
            if token in stop:
                break
    return out[len(ids):]


def test_greedy_ignores_the_models_own_generation_defaults(tiny):
    model, tokenizer = tiny
    prompts = [c[:1] for c in chats()]
    plain, _ = generate(model, tokenizer, prompts, SETTINGS, seed=1)
    model.generation_config.repetition_penalty = 5.0
    model.generation_config.no_repeat_ngram_size = 1
    model.generation_config.suppress_tokens = list(range(0, 200))
    try:
        skewed, _ = generate(model, tokenizer, prompts, SETTINGS, seed=1)
    finally:
        model.generation_config.repetition_penalty = None
        model.generation_config.no_repeat_ngram_size = None
        model.generation_config.suppress_tokens = None
    assert [g.text for g in skewed] == [g.text for g in plain]
    stop = stop_token_ids(model, tokenizer)
    for prompt, gen in zip(prompts, plain):
        expected = greedy_by_hand(model, render_prompt(tokenizer, prompt), SETTINGS["max_new_tokens"], stop)
        ended = expected[-1] in stop
        assert gen.stopped == ended
        assert gen.ended == (ended and expected[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>"))
        body = expected[:-1] if ended else expected
        assert gen.text == tokenizer.decode(body, skip_special_tokens=True).strip()
        assert gen.new_tokens == len(body)


@pytest.mark.parametrize("token, ended", [("<|im_end|>", True), ("<|endoftext|>", False)])
def test_an_answer_ends_on_the_end_of_turn_token_or_only_stops(token, ended):
    """A model that always says `token`: generation stops at once either way, and only the
    template's end-of-turn token counts as ending the turn."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    tokenizer = train_tokenizer(chats(), vocab_size=300)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id])
    model = AutoModelForCausalLM.from_config(config).eval()
    model.model.norm.weight.data.zero_()  # every hidden state is 0, so the bias decides
    model.lm_head = torch.nn.Linear(16, len(tokenizer), bias=True)
    model.lm_head.bias.data.zero_()
    model.lm_head.bias.data[tokenizer.convert_tokens_to_ids(token)] = 1.0
    (gen,), _ = generate(model, tokenizer, [chats()[0][:1]], SETTINGS, seed=1)
    assert (gen.stopped, gen.ended, gen.new_tokens, gen.text) == (True, ended, 0, "")


def test_stop_tokens_are_the_end_of_turn_and_every_eos(tiny):
    model, tokenizer = tiny
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_ids(tokenizer) == {im_end}
    model.generation_config.eos_token_id = [tokenizer.pad_token_id]
    try:
        assert set(stop_token_ids(model, tokenizer)) == {im_end, tokenizer.pad_token_id}
    finally:
        model.generation_config.eos_token_id = tokenizer.eos_token_id


def test_long_prompts_drop_the_oldest_turns_never_the_last_user_turn(tiny):
    _, tokenizer = tiny
    system = {"role": "system", "content": "你是助手。"}
    history = [m for chat in chats() for m in chat]
    last = {"role": "user", "content": "最后的问题是什么？"}
    messages = [system, *history, last]
    whole = render_prompt(tokenizer, messages)
    ids, how = fit_prompt(tokenizer, messages, len(whole))
    assert (ids, how) == (whole, "whole")
    short = len(render_prompt(tokenizer, [system, *history[-2:], last]))
    ids, how = fit_prompt(tokenizer, messages, short)
    assert how == "dropped_turns" and ids == render_prompt(tokenizer, [system, *history[-2:], last])
    ids, how = fit_prompt(tokenizer, [{"role": "user", "content": "很长的问题。" * 40}], 30)
    assert how == "truncated" and len(ids) <= 30
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")


def test_test_loss_is_token_weighted_over_records(tiny):
    model, tokenizer = tiny
    records = [{"id": str(i), "messages": m} for i, m in enumerate(chats())]
    rows, truncated = record_losses(model, tokenizer, records, max_length=128, batch_size=4)
    assert truncated == 0 and [r["id"] for r in rows] == [r["id"] for r in records]
    one_by_one = [record_losses(model, tokenizer, [r], 128, 1)[0][0] for r in records]
    for batched, single in zip(rows, one_by_one):
        assert batched["n_tokens"] == single["n_tokens"]
        assert batched["loss_sum"] == pytest.approx(single["loss_sum"], rel=1e-4)
    total = sum(r["loss_sum"] for r in rows) / sum(r["n_tokens"] for r in rows)
    assert mean_loss((r["loss_sum"], r["n_tokens"]) for r in rows) == pytest.approx(total)


def evaluation_commands(tmp_path, config: dict) -> dict[str, dict]:
    """Out dir -> config JSON of every evaluation a dry run would start."""
    workflow = make_workflow(tmp_path)
    workflow.config.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    proc = workflow.run("-n", "-p", "--forceall")
    jobs = {}
    for line in (proc.stdout + proc.stderr).splitlines():
        if "workflow_scripts.evaluation.evaluate" in line:
            args = shlex.split(line.split(">")[0])
            jobs[args[args.index("--out-dir") + 1]] = json.loads(args[args.index("--config") + 1])
    return jobs


def test_every_experiment_has_a_base_scored_under_its_own_settings(tmp_path):
    config = yaml.safe_load(SMOKE_CONFIG.read_text(encoding="utf-8"))
    config["experiments"] = {"lccc-qlora": config["experiments"]["lccc-qlora"]}
    config["experiments"]["lccc-lora-long"] = {
        "base_model": "tiny", "dataset": "lccc", "evaluation": {"max_new_tokens": 16, "max_length": 96}}
    jobs = evaluation_commands(tmp_path, config)
    adapters = {d: j for d, j in jobs.items() if not d.startswith("results/eval/base/")}
    bases = {d: j for d, j in jobs.items() if d.startswith("results/eval/base/")}
    assert set(adapters) == {"results/eval/lccc-qlora", "results/eval/lccc-lora-long",
                             "results/eval/rank-r2", "results/eval/rank-r4"}
    for out_dir, job in adapters.items():
        twins = [d for d, base in bases.items() if base == job]
        assert len(twins) == 1, f"{out_dir}: no base scored with exactly its settings"
    quantized = [j for j in bases.values() if j["quantization"] == "4bit"]
    assert len(quantized) == 1 and quantized[0] == adapters["results/eval/lccc-qlora"]
    unquantized = {**adapters["results/eval/lccc-qlora"], "quantization": None}
    assert unquantized in bases.values()  # the cost of quantization is shown too
    assert len(bases) == 4  # alpaca full, lccc nf4 and full, lccc long full
    assert all(re.fullmatch(r"results/eval/base/tiny/\w+/(full|nf4)-[0-9a-f]{10}", d) for d in bases)

"""Parsing generated function calls back, per-sample scores, and the tool-call evaluation."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from workflow_scripts.data.formats import get_normalizer
from workflow_scripts.evaluation.tool_calls import (ToolCall, call_format, parse_tool_calls,
                                                    reference_calls, score_calls)
from workflow_scripts.evaluation.tool_eval import (evaluate_tool_calls, plain_reply_records,
                                                   tool_call_samples)
from workflow_scripts.models.build_base_model import train_tokenizer
from workflow_scripts.models.chat_templates import CHATML_TEMPLATE

DATA = Path(__file__).resolve().parent / "data"
WEATHER = ToolCall("get_weather", {"city": "北京", "date": "明天"})
FLIGHTS = ToolCall("search_flights", {"origin": "上海", "destination": "北京"})


def block(name: str, arguments) -> str:
    return ('<tool_call>\n' + json.dumps({"name": name, "arguments": arguments},
                                         ensure_ascii=False) + '\n</tool_call>')


# ---------------------------------------------------------------- parsing


def test_hermes_blocks_parse_in_order_ignoring_text_around_them():
    text = ("<think>\n先查天气。\n</think>\n\n我来查一下。\n" + block("get_weather", WEATHER.arguments)
            + "\n" + block("search_flights", json.dumps(FLIGHTS.arguments, ensure_ascii=False)))
    assert parse_tool_calls(text) == [WEATHER, FLIGHTS]


@pytest.mark.parametrize("text", [
    "明天北京晴。",                                                # no call at all
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北',  # cut off
    "<tool_call>\nget_weather(city='北京')\n</tool_call>",           # not JSON
    '<tool_call>\n{"arguments": {}}\n</tool_call>',                  # no name
    '<tool_call>\n{"name": "f", "arguments": "city=北京"}\n</tool_call>',  # arguments not JSON
    '<tool_call>\n{"name": "f", "arguments": [1]}\n</tool_call>',      # arguments not an object
    block("get_weather", {}) + "\n<tool_call>\n{}\n</tool_call>",     # one good, one bad
])
def test_malformed_or_missing_calls_do_not_parse(text):
    assert parse_tool_calls(text) is None


def test_json_format_reads_an_object_or_a_list():
    one = json.dumps({"name": "get_weather", "arguments": WEATHER.arguments}, ensure_ascii=False)
    assert parse_tool_calls(one, "json") == [WEATHER]
    assert parse_tool_calls(f"[{one}, {one}]", "json") == [WEATHER, WEATHER]
    assert parse_tool_calls("好的", "json") is None
    with pytest.raises(ValueError, match="unknown call format"):
        parse_tool_calls(one, "xml")


def test_call_format_follows_the_template():
    assert call_format(CHATML_TEMPLATE) == "hermes"
    assert call_format((DATA / "templates" / "qwen3_style.jinja").read_text()) == "hermes"
    assert call_format("{{ messages }}") == "json" == call_format(None)


@pytest.mark.parametrize("template", ["scratch", "qwen25_style", "qwen3_style"])
def test_what_the_template_writes_for_a_call_parses_back(template):
    tokenizer = train_tokenizer([[{"role": "user", "content": "你好"}]], vocab_size=300)
    tokenizer.chat_template = CHATML_TEMPLATE if template == "scratch" else (
        DATA / "templates" / f"{template}.jinja").read_text(encoding="utf-8")
    record = json.loads((DATA / "tool_calls_openai.jsonl").read_text().splitlines()[1])
    conv = get_normalizer("openai")(record)
    i = next(i for i, m in enumerate(conv.messages) if m.get("tool_calls"))
    prompt = tokenizer.apply_chat_template(conv.messages[:i], tools=conv.tools, tokenize=False,
                                           add_generation_prompt=True)
    full = tokenizer.apply_chat_template(conv.messages[:i + 1], tools=conv.tools, tokenize=False)
    generated = full[len(prompt):].removesuffix("<|im_end|>\n")
    calls = parse_tool_calls(generated, call_format(tokenizer.chat_template))
    assert calls == reference_calls(conv.messages[i]) and len(calls) == 2


# ---------------------------------------------------------------- scores


FUNCTIONS = {"get_weather", "search_flights"}


@pytest.mark.parametrize("predicted, expected", [
    ([WEATHER, FLIGHTS], (1, 1, 1)),
    ([FLIGHTS, WEATHER], (1, 1, 1)),  # parallel calls in another order
    ([ToolCall("get_weather", {"date": "明天", "city": "北京"}), FLIGHTS], (1, 1, 1)),
    ([ToolCall("get_weather", {"city": "上海", "date": "明天"}), FLIGHTS], (1, 1, 0)),
    ([WEATHER], (1, 0, 0)),  # a call missing
    ([WEATHER, FLIGHTS, WEATHER], (1, 0, 0)),  # one too many
    ([WEATHER, ToolCall("book_hotel", {})], (0, 0, 0)),  # a function not in tools
    (None, (0, 0, 0)),
])
def test_scores(predicted, expected):
    scores = score_calls(predicted, [WEATHER, FLIGHTS], FUNCTIONS)
    assert (scores["tool_valid"], scores["tool_name_correct"], scores["tool_args_exact"]) \
        == tuple(map(float, expected))


def test_valid_call_to_the_wrong_function_counts_as_valid_only():
    scores = score_calls([FLIGHTS], [WEATHER], FUNCTIONS)
    assert scores == {"tool_valid": 1.0, "tool_name_correct": 0.0, "tool_args_exact": 0.0}


# ---------------------------------------------------------------- evaluation


def prepared_records() -> list[dict]:
    normalize = get_normalizer("openai")
    records = []
    for n, line in enumerate((DATA / "tool_calls_openai.jsonl").read_text().splitlines()[:4]):
        conv = normalize(json.loads(line))
        records.append({"id": f"r{n}", "messages": conv.messages, "tools": conv.tools})
    records.append({"id": "plain", "messages": [{"role": "user", "content": "你好"},
                                                {"role": "assistant", "content": "你好！"}]})
    return records


def test_every_call_turn_is_a_sample_with_the_conversation_before_it():
    records = prepared_records()
    samples = tool_call_samples(records)
    # two_cities records have two call turns, trip records two: 2 + 2 + 2 + 2
    assert [s.id for s in samples] == ["r0#1", "r0#3", "r1#1", "r1#6", "r2#1", "r2#3",
                                       "r3#1", "r3#6"]
    assert [s.conversation for s in samples[:3]] == ["r0", "r0", "r1"]  # resampled together
    second = samples[1]
    assert second.messages == records[0]["messages"][:3]
    assert second.reference == reference_calls(records[0]["messages"][3])
    assert len(tool_call_samples(records, limit=3)) == 3


def test_evaluate_tool_calls_scores_each_generated_turn():
    records = prepared_records()
    samples = tool_call_samples(records)
    seen = {}

    def generate(prompts, tools):
        seen.update(prompts=prompts, tools=tools)
        answers = ["\n".join(block(c.name, c.arguments) for c in s.reference) for s in samples]
        answers[0] = "明天北京晴。"  # no call
        answers[1] = block("book_hotel", {"city": "北京"})  # not in tools
        answers[2] = block(samples[2].reference[0].name, {"city": "火星"})  # one of two calls
        answers[4] = block(samples[4].reference[0].name, {"city": "火星", "date": "明天"})
        return answers

    tokenizer = SimpleNamespace(chat_template=CHATML_TEMPLATE)
    metrics, rows = evaluate_tool_calls(tokenizer, records, {"samples": 50}, generate)
    assert seen["prompts"] == [s.messages for s in samples]
    assert seen["tools"] == [s.tools for s in samples]
    # invalid: 0 (no call), 1 (unknown function); wrong names: and 2 (a call missing);
    # wrong arguments: and 4
    assert metrics == {"tool_valid_share": 6 / 8, "tool_name_accuracy": 5 / 8,
                       "tool_args_exact": 4 / 8, "n_tool_samples": 8}
    assert rows[0]["predicted"] is None and rows[0]["tool_valid"] == 0.0
    assert rows[3]["reference"] == rows[3]["predicted"] and rows[3]["tool_args_exact"] == 1.0
    assert rows[0]["prompt"] == records[0]["messages"][0]["content"]
    assert json.loads(json.dumps(rows, ensure_ascii=False)) == rows  # ready for JSON Lines


def test_records_without_calls_give_no_tool_metrics():
    called = []
    records = [r for r in prepared_records() if r["id"] == "plain"]
    metrics, rows = evaluate_tool_calls(SimpleNamespace(chat_template=None), records,
                                        {"samples": 5}, lambda p, t: called.append(p) or [])
    assert (metrics, rows, called) == ({}, [], [])


def test_records_ending_with_a_call_are_left_to_the_tool_metrics():
    records = prepared_records()
    ending = {"id": "call", "messages": records[0]["messages"][:2], "tools": records[0]["tools"]}
    assert plain_reply_records(records + [ending]) == records

"""Assistant-only labels, checked token by token on multi-turn and tool-calling
conversations, with ChatML and with Qwen2.5/Qwen3-style templates."""
import copy
import re
from pathlib import Path

import pytest

from workflow_scripts.models.build_base_model import train_tokenizer
from workflow_scripts.models.chat_templates import CHATML_TEMPLATE
from workflow_scripts.training.chat_tokenize import (IGNORE_INDEX, UnstablePrefixError,
                                                     encode_conversation, tokenize_records)

CONVERSATION = [
    {"role": "system", "content": "你是一个乐于助人的助手。"},
    {"role": "user", "content": "你好，今天天气怎么样？"},
    {"role": "assistant", "content": "今天晴，气温25度。"},
    {"role": "user", "content": "那明天呢？"},
    {"role": "assistant", "content": "明天有小雨，记得带伞。"},
]


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [CONVERSATION] * 4 + [[{"role": "user", "content": "GPT4 和 3.1 版本 abc"}]]
    return train_tokenizer(corpus, vocab_size=400)


def labelled_segments(tokenizer, feature):
    """Decode each maximal run of labelled tokens."""
    segments, current = [], []
    for token, label in zip(feature["input_ids"], feature["labels"]):
        if label == IGNORE_INDEX:
            if current:
                segments.append(current)
            current = []
        else:
            assert label == token
            current.append(token)
    if current:
        segments.append(current)
    return [tokenizer.decode(s) for s in segments]


def test_only_assistant_turns_and_their_end_token_are_labelled(tokenizer):
    feature = encode_conversation(tokenizer, CONVERSATION)
    assert labelled_segments(tokenizer, feature) == [
        "今天晴，气温25度。<|im_end|>\n",
        "明天有小雨，记得带伞。<|im_end|>\n",
    ]


def test_mask_token_by_token(tokenizer):
    feature = encode_conversation(tokenizer, CONVERSATION)
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert tokenizer.decode(feature["input_ids"]) == text
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    end_positions = [i for i, t in enumerate(feature["input_ids"]) if t == im_end]
    # system, user, assistant, user, assistant: only the assistants' end tokens are targets
    assert [feature["labels"][i] != IGNORE_INDEX for i in end_positions] == [
        False, False, True, False, True
    ]
    assert all(
        label == IGNORE_INDEX
        for token, label in zip(feature["input_ids"], feature["labels"])
        if token == im_start
    )
    # the role header "assistant\n" after <|im_start|> is prompt, not target
    first_target = next(i for i, l in enumerate(feature["labels"]) if l != IGNORE_INDEX)
    assert tokenizer.decode(feature["input_ids"][:first_target]).endswith(
        "<|im_start|>assistant\n"
    )


def test_too_long_records_are_truncated_or_dropped_and_counted(tokenizer):
    records = [{"messages": CONVERSATION}, {"messages": CONVERSATION[1:3]}]
    full = len(encode_conversation(tokenizer, CONVERSATION)["input_ids"])
    short = len(encode_conversation(tokenizer, CONVERSATION[1:3])["input_ids"])
    limit = (full + short) // 2
    assert short < limit < full
    kept, stats = tokenize_records(tokenizer, records, limit, "truncate")
    assert stats.truncated == 1 and stats.kept == 2
    assert max(len(f["input_ids"]) for f in kept) == limit
    kept, stats = tokenize_records(tokenizer, records, limit, "drop")
    assert stats.dropped_too_long == 1 and stats.kept == 1


def test_a_record_truncated_before_any_reply_is_dropped(tokenizer):
    prompt_len = len(tokenizer.apply_chat_template(
        CONVERSATION[:2], add_generation_prompt=True, tokenize=True, return_dict=False))
    kept, stats = tokenize_records(tokenizer, [{"messages": CONVERSATION}], prompt_len - 2)
    assert kept == [] and stats.dropped_no_target == 1


def test_token_length_summary_covers_every_record_before_truncation(tokenizer):
    records = [{"messages": CONVERSATION}, {"messages": CONVERSATION[1:3]}]
    full = [len(encode_conversation(tokenizer, r["messages"])["input_ids"]) for r in records]
    _, stats = tokenize_records(tokenizer, records, min(full))
    summary = stats.as_dict()["record_tokens"]
    assert summary["max"] == max(full) and summary["mean"] == sum(full) / 2


# ---------------------------------------------------------------- tools and other templates

TEMPLATES = Path(__file__).resolve().parent / "data" / "templates"
TOOLS = [{"type": "function", "function": {
    "name": name, "description": description,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
    for name, description in (("get_weather", "查询城市天气"), ("get_time", "查询城市时间"))]
TOOL_CONVERSATION = [
    {"role": "system", "content": "你是出行助手。"},
    {"role": "user", "content": "北京和上海现在天气怎么样？"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京"}}},
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "上海"}}},
    ]},
    {"role": "tool", "content": "{\"天气\": \"晴\"}"},
    {"role": "tool", "content": "{\"天气\": \"小雨\"}"},
    {"role": "assistant", "content": "我再查一下北京的时间。", "tool_calls": [
        {"type": "function", "function": {"name": "get_time", "arguments": {"city": "北京"}}}]},
    {"role": "tool", "content": "下午三点"},
    {"role": "assistant", "content": "北京晴，上海小雨；北京现在下午三点。"},
]
CALLS_1 = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>\n'
           '<tool_call>\n{"name": "get_weather", "arguments": {"city": "上海"}}\n</tool_call>')
CALL_2 = '<tool_call>\n{"name": "get_time", "arguments": {"city": "北京"}}\n</tool_call>'
ANSWER = "北京晴，上海小雨；北京现在下午三点。<|im_end|>\n"


def with_template(tokenizer, template: str):
    clone = copy.deepcopy(tokenizer)
    clone.chat_template = template
    return clone


def regions(text: str, pattern: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(pattern, text, flags=re.DOTALL)]


@pytest.mark.parametrize("template", ["scratch", "qwen25_style"])
def test_function_calls_are_learned_and_tool_results_and_schemas_are_not(tokenizer, template):
    source = CHATML_TEMPLATE if template == "scratch" else (
        TEMPLATES / f"{template}.jinja").read_text(encoding="utf-8")
    tok = with_template(tokenizer, source)
    feature = encode_conversation(tok, TOOL_CONVERSATION, TOOLS)
    text = tok.apply_chat_template(TOOL_CONVERSATION, tools=TOOLS, tokenize=False)
    assert tok.decode(feature["input_ids"]) == text
    expected = [CALLS_1 + "<|im_end|>\n", "我再查一下北京的时间。\n" + CALL_2 + "<|im_end|>\n",
                ANSWER]
    assert labelled_segments(tok, feature) == expected
    # token by token: each token is a target exactly when it starts inside a reply
    learned, start = [], 0
    for segment in expected:
        start = text.index(segment, start)
        learned.append((start, start + len(segment)))
    context = regions(text, r"<tool_response>.*?</tool_response>") + regions(
        text, r"<\|im_start\|>system.*?<\|im_end\|>")
    assert len(context) == 4 and "查询城市天气" in text[context[-1][0]:context[-1][1]]
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for token, label, (begin, _) in zip(feature["input_ids"], feature["labels"], offsets):
        assert label == (token if any(a <= begin < b for a, b in learned) else IGNORE_INDEX)
        assert not (label != IGNORE_INDEX and any(a <= begin < b for a, b in context))


def test_tool_template_renders_plain_chat_exactly_as_chatml(tokenizer):
    tools_tok = with_template(tokenizer, CHATML_TEMPLATE)
    for messages in (CONVERSATION, CONVERSATION[1:3], CONVERSATION[1:2]):
        for prompt in (False, True):
            assert (tools_tok.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=prompt)
                    == tokenizer.apply_chat_template(messages, tokenize=False,
                                                     add_generation_prompt=prompt))


THINKING = [
    {"role": "user", "content": "1+1等于几？"},
    {"role": "assistant", "content": "<think>\n一加一。\n</think>\n\n等于2。"},
    {"role": "user", "content": "再加3呢？"},
    {"role": "assistant", "content": "<think>\n二加三。\n</think>\n\n等于5。"},
]


def test_template_that_drops_earlier_reasoning_trains_turn_by_turn(tokenizer):
    tok = with_template(tokenizer, (TEMPLATES / "qwen3_style.jinja").read_text(encoding="utf-8"))
    with pytest.raises(UnstablePrefixError):
        encode_conversation(tok, THINKING)
    features, stats = tokenize_records(tok, [{"messages": THINKING}], max_length=512)
    assert stats.kept == 2 and stats.turn_samples == 2
    first, second = features
    assert labelled_segments(tok, first) == ["<think>\n一加一。\n</think>\n\n等于2。<|im_end|>\n"]
    assert labelled_segments(tok, second) == ["<think>\n二加三。\n</think>\n\n等于5。<|im_end|>\n"]
    # the second sample is the prompt the model answers turn 2 from: turn 1 without reasoning
    prompt = tok.apply_chat_template(THINKING[:3], tokenize=False, add_generation_prompt=True)
    assert "一加一" not in prompt and "等于2。" in prompt
    assert tok.decode(second["input_ids"]) == prompt + "<think>\n二加三。\n</think>\n\n等于5。<|im_end|>\n"


def test_template_that_drops_earlier_reasoning_with_tools(tokenizer):
    tok = with_template(tokenizer, (TEMPLATES / "qwen3_style.jinja").read_text(encoding="utf-8"))
    messages = TOOL_CONVERSATION[:6] + [
        {"role": "tool", "content": "下午三点"},
        {"role": "assistant", "content": "<think>\n汇总。\n</think>\n\n" + ANSWER[:-11]},
        {"role": "user", "content": "谢谢"},
        {"role": "assistant", "content": "不客气。"},
    ]
    features, stats = tokenize_records(tok, [{"messages": messages, "tools": TOOLS}], 2048)
    segments = [labelled_segments(tok, f) for f in features]
    assert stats.turn_samples == 4
    assert segments[2] == ["<think>\n汇总。\n</think>\n\n" + ANSWER]
    assert segments[3] == ["不客气。<|im_end|>\n"]
    assert all("<tool_response>" not in s for seg in segments for s in seg)

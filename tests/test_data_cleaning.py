"""Cleaning rules: each failure names its reason; dedupe sees width and whitespace."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from workflow_scripts.data.cleaning import (REASONS, CleaningRules, Deduplicator, check_record,
                                            cjk_share, content_digests, digest_view,
                                            is_repeated_char, message_text, normalize_text)

RULES = CleaningRules(min_prompt_chars=2, min_response_chars=3, max_chars=40)


def chat(*contents: str, system: str | None = None) -> list[dict]:
    roles = ["user", "assistant"] * len(contents)
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": r, "content": c} for r, c in zip(roles, contents)]


def test_a_good_record_passes():
    assert check_record(chat("今天天气如何", "晴，二十度"), RULES) is None


@pytest.mark.parametrize("messages, reason", [
    (chat("", "回答是这样"), "empty_prompt"),
    (chat("问题问题", ""), "empty_response"),
    (chat("", "回答", "问题", "回答是这样"), "empty_prompt"),  # an empty earlier turn
    (chat("问", "回答是这样"), "too_short_prompt"),
    (chat("问题问题", "是的"), "too_short_response"),
    (chat("问" * 30, "答" * 11), "too_long"),
    (chat("问题问题", "哈哈哈哈哈"), "repeated_char"),
    (chat("问题问题", "。 。 。"), "repeated_char"),
])
def test_each_rule_names_its_reason(messages, reason):
    rejection = check_record(messages, RULES)
    assert rejection is not None and rejection[0] == reason
    assert reason in REASONS


def test_max_chars_counts_system_and_history():
    messages = chat("问题一", "回答一", "问题二", "回答二", system="系" * 29)
    assert check_record(messages, RULES)[0] == "too_long"
    assert check_record(messages[1:], RULES) is None


def test_details_say_what_failed():
    assert check_record(chat("问", "回答是这样"), RULES)[1] == "prompt has 1 < 2 chars"
    assert check_record(chat("问题", ""), RULES)[1] == "message 1 (assistant) is empty"


def test_reduplicated_words_are_not_degenerate():
    assert not is_repeated_char("谢谢") and not is_repeated_char("嗯嗯")
    assert is_repeated_char("嗯嗯嗯") and is_repeated_char("! ! !")
    assert not is_repeated_char("哈哈哈呀") and not is_repeated_char("")


def test_cjk_share_rule_applies_to_chinese_datasets_only():
    messages = chat("What is it?", "It is a cat.")
    zh = CleaningRules(min_cjk_share=0.3)
    assert check_record(messages, zh)[0] == "low_cjk_share"
    assert check_record(messages, CleaningRules(min_cjk_share=0.3, language="other")) is None
    assert check_record(chat("这是什么？", "这是一只猫。"), zh) is None


def test_cjk_share_ignores_whitespace():
    assert cjk_share("中文 ab") == 0.5
    assert cjk_share("   ") == 0.0


def test_unknown_cleaning_key_is_refused():
    with pytest.raises(ValueError, match="unknown keys max_len"):
        CleaningRules.from_config({"max_len": 5})


def test_config_defaults_match_the_schema():
    rules = CleaningRules.from_config({}, "zh")
    assert (rules.min_prompt_chars, rules.min_response_chars, rules.max_chars) == (1, 2, 4096)
    assert rules.dedupe and rules.min_cjk_share == 0.0


def test_normalize_text_folds_width_and_whitespace():
    assert normalize_text("ＡＢＣ　１２３！ ") == "ABC 123!"
    assert normalize_text(" 你好\n\t世界 ") == "你好 世界"


def test_dedupe_tells_exact_from_normalized_duplicates():
    dedupe = Deduplicator()
    first = content_digests(chat("ＧＰＴ是什么", "一种模型"))
    exact = content_digests(chat("ＧＰＴ是什么", "一种模型"))
    folded = content_digests(chat(" GPT是什么", "一种模型\n"))
    other = content_digests(chat("GPT是什么", "一种 模型"))
    assert dedupe.check(*first, "a.json", 0) is None
    assert dedupe.check(*exact, "a.json", 1) == ("duplicate_exact",
                                                  "same content as a.json record 0")
    assert dedupe.check(*folded, "b.json", 5)[0] == "duplicate_normalized"
    assert dedupe.check(*other, "b.json", 6) is None  # inner spaces are kept, only collapsed


def test_roles_are_part_of_the_content():
    as_system = [{"role": "system", "content": "你好"}] + chat("问", "答")
    as_user = chat("你好", "答")
    assert content_digests(as_system)[1] != content_digests(as_user)[1]


# ---------------------------------------------------------------- tool calling


def call_turn(name: str, text: str = "", **arguments) -> dict:
    function = {"name": name, "arguments": arguments}
    return {"role": "assistant", "content": text,
            "tool_calls": [{"type": "function", "function": function}]}


TOOL_CHAT = [{"role": "user", "content": "天气呢"}, call_turn("get_weather", city="北京"),
             {"role": "tool", "content": "晴"}, {"role": "assistant", "content": "北京晴天"}]
LOOSE = CleaningRules(min_prompt_chars=2, min_response_chars=3, max_chars=200)


def test_a_call_without_text_is_not_an_empty_response():
    assert check_record(TOOL_CHAT, LOOSE, tool_calling=True) is None
    assert check_record(TOOL_CHAT[:2], LOOSE, tool_calling=True) is None  # ends with the call


def test_tool_records_take_the_last_user_message_as_prompt_and_count_calls():
    short_prompt = [{"role": "user", "content": "天"}] + TOOL_CHAT[1:]
    assert check_record(short_prompt, LOOSE, tool_calling=True)[0] == "too_short_prompt"
    text = message_text(TOOL_CHAT[1])
    assert text == 'get_weather{"city":"北京"}'
    limit = sum(len(m["content"]) for m in TOOL_CHAT) + len(text)
    assert check_record(TOOL_CHAT, replace(LOOSE, max_chars=limit), tool_calling=True) is None
    assert check_record(TOOL_CHAT, replace(LOOSE, max_chars=limit - 1),
                        tool_calling=True)[0] == "too_long"
    assert message_text(call_turn("f", "我查一下", a=1)) == '我查一下\nf{"a":1}'


def test_records_differing_only_in_calls_or_tools_are_not_duplicates():
    other_call = TOOL_CHAT[:1] + [call_turn("get_weather", city="上海")] + TOOL_CHAT[2:]
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    more_tools = tools + [{"type": "function", "function": {"name": "get_time"}}]
    digests = {content_digests(digest_view(m, t))[1]
               for m, t in ((TOOL_CHAT, tools), (other_call, tools), (TOOL_CHAT, more_tools))}
    assert len(digests) == 3
    assert content_digests(digest_view(TOOL_CHAT, tools)) == content_digests(
        digest_view(json.loads(json.dumps(TOOL_CHAT)), tools))

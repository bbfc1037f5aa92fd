"""Reading raw files and normalizing each format to chat messages."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from workflow_scripts.data.formats import (DataError, RecordError, get_normalizer, guess_format,
                                           load_records, parse_records, resolve_columns,
                                           restore_lccc_text)

RAW = Path(__file__).resolve().parent.parent / "data" / "raw"


def user_assistant(prompt: str, response: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


# ---------------------------------------------------------------- files


def test_json_array_and_json_lines_give_the_same_records(tmp_path):
    rows = [{"instruction": "你好", "output": "你好呀"}, {"instruction": "再见", "output": "拜拜"}]
    array_file, lines_file = tmp_path / "a.json", tmp_path / "a.jsonl"
    array_file.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    lines_file.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n",
                          encoding="utf-8")
    assert load_records(array_file) == rows == load_records(lines_file)


def test_json_lines_of_arrays_are_read_as_json_lines():
    assert parse_records(b'["a b", "c"]\n["d", "e"]\n', "lccc.jsonl") == [["a b", "c"], ["d", "e"]]


def test_byte_order_mark_is_accepted():
    assert parse_records(b'\xef\xbb\xbf[{"a": 1}]', "bom.json") == [{"a": 1}]


BAD_FILES = {
    "empty": (b"", ["bad.json", "empty"]),
    "whitespace only": (b" \n\t\n", ["bad.json", "empty"]),
    "empty array": (b"[]", ["bad.json", "no records"]),
    "empty array in spaces": (b"  [ ]\n", ["bad.json", "no records"]),
    "missing comma": (b'[\n{"a": 1}\n{"a": 2}\n]', ["bad.json", "line 3", "column 1",
                                                    "byte offset 11", "delimiter"]),
    "truncated array": (b'[{"a": 1},\n{"a": ', ["bad.json", "line 2", "byte offset 17"]),
    "trailing comma": (b'[{"a": 1},]', ["bad.json", "line 1", "column 11"]),
    "single quotes": (b"[{'a': 1}]", ["bad.json", "line 1", "column 3", "property name"]),
    "garbage after array": (b'[{"a": 1}] x', ["bad.json", "Extra data", "byte offset 11"]),
    "garbage line after array": (b'[\n{"a": 1}\n]\nx', ["bad.json", "invalid JSON at line 4",
                                                        "Extra data"]),
    "invalid utf-8": (b'[{"a": "\xe4\xbd"}]', ["bad.json", "UTF-8", "byte offset 8"]),
    "latin-1 text": ('[{"a": "café"}]'.encode("latin-1"), ["UTF-8", "byte offset 11",
                                                           "0xe9"]),
    "utf-16": ('[{"a": 1}]'.encode("utf-16"), ["bad.json", "UTF-8", "byte offset 0"]),
    "top-level string": (b'"hello"', ["bad.json", "starts with '\"'"]),
    "top-level number": (b"42", ["bad.json", "starts with '4'"]),
    "pretty object": (b'{\n "data": [\n  {"a": 1}\n ]\n}', ["bad.json", "one JSON object",
                                                          "keys: data"]),
    "bad json line": (b'{"a": 1}\n{"a": 2}\n{"a": 3,,}\n', ["bad.json", "line 3",
                                                           "column 9", "byte offset 26"]),
    "json lines with chinese before error": ('{"a": "中文"}\n{"a" 1}\n'.encode(),
                                             ["line 2", "column 6", "byte offset 21"]),
    "json lines truncated": (b'{"a": 1}\n{"a": ', ["bad.json", "line 2"]),
}


@pytest.mark.parametrize("data, expected", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_unusable_files_name_the_file_and_the_place(data, expected):
    with pytest.raises(DataError) as err:
        parse_records(data, "bad.json")
    for part in expected:
        assert part in str(err.value)


def test_byte_offset_of_bad_line_counts_utf8_bytes():
    data = '{"a": "中文"}\n{"a" 1}\n'.encode()
    with pytest.raises(DataError, match="byte offset 21"):
        parse_records(data, "x.jsonl")
    assert data[21:22] == b"1"


# ---------------------------------------------------------------- alpaca


def test_alpaca_joins_instruction_and_input_and_puts_history_first():
    normalize = get_normalizer("alpaca")
    conv = normalize({"instruction": " 翻译 ", "input": "hello", "output": "你好",
                      "system": "你是翻译。", "history": [["在吗", "在"]]})
    assert conv.messages == [{"role": "system", "content": "你是翻译。"},
                             *user_assistant("在吗", "在"), *user_assistant("翻译\nhello", "你好")]
    assert conv.has_input


def test_alpaca_without_optional_fields():
    conv = get_normalizer("alpaca")({"instruction": "讲个笑话", "input": None, "output": "好的"})
    assert conv.messages == user_assistant("讲个笑话", "好的")
    assert not conv.has_input and conv.trimmed == 0


def test_alpaca_column_mapping():
    normalize = get_normalizer("alpaca", {"instruction": "question", "output": "answer"})
    assert normalize({"question": "问", "answer": "答案"}).messages == user_assistant("问", "答案")


def test_unknown_column_name_is_refused():
    with pytest.raises(DataError, match="columns: prompt not used by format 'alpaca'"):
        resolve_columns("alpaca", {"prompt": "q"})


def test_unknown_format_is_refused():
    with pytest.raises(DataError, match="unknown format 'csv'"):
        resolve_columns("csv", None)


BAD_RECORDS = {
    "alpaca not an object": ("alpaca", ["a", "b"], "wrong_type", "record: expected an object"),
    "alpaca string record": ("alpaca", "text", "wrong_type", "got a string"),
    "alpaca missing instruction": ("alpaca", {"output": "x"}, "missing_field",
                                   "instruction: missing"),
    "alpaca null output": ("alpaca", {"instruction": "x", "output": None}, "missing_field",
                           "output: null"),
    "alpaca numeric instruction": ("alpaca", {"instruction": 3, "output": "x"}, "wrong_type",
                                   "instruction: expected a string, got a number"),
    "alpaca list input": ("alpaca", {"instruction": "x", "input": ["y"], "output": "z"},
                          "wrong_type", "input: expected a string, got an array"),
    "alpaca history not a list": ("alpaca", {"instruction": "x", "output": "y",
                                             "history": "a"}, "wrong_type", "history"),
    "alpaca history triple": ("alpaca", {"instruction": "x", "output": "y",
                                         "history": [["a", "b", "c"]]}, "wrong_type",
                              "history[0]"),
    "sharegpt missing conversations": ("sharegpt", {"messages": []}, "missing_field",
                                       "conversations: missing"),
    "sharegpt item not object": ("sharegpt", {"conversations": ["hi"]}, "wrong_type",
                                 "conversations[0]"),
    "sharegpt missing value": ("sharegpt", {"conversations": [{"from": "human"}]},
                               "missing_field", "value: missing"),
    "sharegpt unknown role": ("sharegpt", {"conversations": [
        {"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]}, "bad_turns",
        "unknown role 'bot'"),
    "sharegpt two users": ("sharegpt", {"conversations": [
        {"from": "human", "value": "a"}, {"from": "human", "value": "b"},
        {"from": "gpt", "value": "c"}]}, "bad_turns", "turn 1: expected assistant"),
    "sharegpt starts with gpt": ("sharegpt", {"conversations": [
        {"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}]}, "bad_turns",
        "turn 0: expected user"),
    "sharegpt user only": ("sharegpt", {"conversations": [{"from": "human", "value": "a"}]},
                           "bad_turns", "no user turn"),
    "openai content parts": ("openai", {"messages": [
        {"role": "user", "content": [{"type": "text"}]}]}, "wrong_type", "content"),
    "openai tool result without call": ("openai", {"messages": [
        {"role": "user", "content": "a"}, {"role": "tool", "content": "b"},
        {"role": "assistant", "content": "c"}]}, "tool_result_without_call", "turn 1"),
    "openai messages is object": ("openai", {"messages": {"role": "user"}}, "wrong_type",
                                  "messages: expected an array"),
    "lccc number utterance": ("lccc", ["你 好", 3], "wrong_type", "record[1]"),
    "lccc single utterance": ("lccc", ["你 好"], "bad_turns", "no user turn"),
    "lccc empty dialogue": ("lccc", [], "bad_turns", "no user turn"),
    "lccc object without dialog": ("lccc", {"text": "a"}, "missing_field", "dialog: missing"),
}


@pytest.mark.parametrize("fmt, record, reason, detail", BAD_RECORDS.values(),
                         ids=BAD_RECORDS.keys())
def test_bad_records_are_rejected_with_reason_and_field(fmt, record, reason, detail):
    with pytest.raises(RecordError) as err:
        get_normalizer(fmt)(record)
    assert err.value.reason == reason
    assert detail in err.value.detail


# ---------------------------------------------------------------- sharegpt, openai


def test_sharegpt_roles_and_system():
    conv = get_normalizer("sharegpt")({"conversations": [
        {"from": "system", "value": "简短回答"}, {"from": "human", "value": "几点了"},
        {"from": "gpt", "value": "三点"}, {"from": "human", "value": "谢谢"}]})
    assert conv.messages == [{"role": "system", "content": "简短回答"},
                             *user_assistant("几点了", "三点")]
    assert conv.trimmed == 1


def test_sharegpt_top_level_system_and_custom_tags():
    normalize = get_normalizer("sharegpt", {"conversations": "turns", "role_tag": "speaker",
                                            "content_tag": "text"})
    conv = normalize({"system": "你是助手", "turns": [{"speaker": "user", "text": "嗨"},
                                                   {"speaker": "assistant", "text": "你好"}]})
    assert conv.messages[0] == {"role": "system", "content": "你是助手"}
    assert conv.messages[1:] == user_assistant("嗨", "你好")


def test_openai_messages():
    conv = get_normalizer("openai")({"messages": [
        {"role": "system", "content": "s"}, {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"}]})
    assert [m["role"] for m in conv.messages] == ["system", "user", "assistant"]


# ---------------------------------------------------------------- lccc


def _raw_utterance(containing: str) -> str:
    for path in sorted(RAW.glob("LCCC-*.json")):
        for dialogue in json.loads(path.read_text(encoding="utf-8")):
            for utterance in dialogue:
                if containing in utterance:
                    return utterance
    raise AssertionError(f"{containing!r} not in the shipped LCCC files")


@pytest.mark.parametrize("spaced, restored", [
    ("3 1 万", "31万"), ("N a n", "Nan"), ("T . T", "T.T"), ("1 4 9 9", "1499"),
    ("6 1 . 8 %", "61.8%"),
])
def test_lccc_restores_real_corpus_text(spaced, restored):
    utterance = _raw_utterance(spaced)
    text = restore_lccc_text(utterance)
    assert restored in text and " " not in text
    assert len(text) * 2 - 1 == len(utterance)  # exactly one separator between characters


def test_lccc_corpus_has_no_double_spaces():
    for path in RAW.glob("LCCC-*.json"):
        assert "  " not in path.read_text(encoding="utf-8")


def test_lccc_alternates_speakers_and_drops_the_unanswered_last_utterance():
    conv = get_normalizer("lccc")(["你 也 喜 欢 木 心 ？", "偶 尔 会 看 到", "你 好"])
    assert conv.messages == user_assistant("你也喜欢木心？", "偶尔会看到")
    assert conv.trimmed == 1


def test_lccc_object_records_use_the_dialog_key():
    conv = get_normalizer("lccc")({"dialog": ["早 上 好", "早"]})
    assert conv.messages == user_assistant("早上好", "早")


@pytest.mark.parametrize("record, fmt", [
    ({"instruction": "a", "output": "b"}, "alpaca"),
    ({"conversations": [{"from": "human", "value": "a"}]}, "sharegpt"),
    ({"messages": [{"role": "user", "content": "a"}]}, "openai"),
    (["a b", "c"], "lccc"),
    ({"text": "a"}, None),
    (7, None),
])
def test_guess_format(record, fmt):
    assert guess_format(record) == fmt


# ---------------------------------------------------------------- tool calling

SCHEMAS = [{"name": "get_weather", "description": "查天气",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
           {"name": "get_time", "parameters": {"type": "object", "properties": {}}}]
WRAPPED = [{"type": "function", "function": s} for s in SCHEMAS]


def calls(*pairs) -> list[dict]:
    return [{"type": "function", "function": {"name": n, "arguments": a}} for n, a in pairs]


def sharegpt_tools(*turns, tools=json.dumps(SCHEMAS, ensure_ascii=False)) -> dict:
    return {"conversations": [{"from": f, "value": v} for f, v in turns], "tools": tools}


def openai_tools(*messages, tools=WRAPPED) -> dict:
    return {"messages": list(messages), "tools": tools}


def test_sharegpt_tool_calls_become_assistant_calls_and_tool_results():
    conv = get_normalizer("sharegpt")(sharegpt_tools(
        ("system", "你是助手"), ("human", "北京天气和时间？"),
        ("function_call", '{"name": "get_weather", "arguments": {"city": "北京"}}'),
        ("observation", "晴"),
        ("function_call", '[{"name": "get_time", "arguments": "{}"}, '
                          '{"name": "get_weather", "arguments": "{\\"city\\": \\"上海\\"}"}]'),
        ("observation", "十点；上海阴"), ("gpt", "北京晴，十点。"), ("human", "谢谢")))
    assert conv.messages == [
        {"role": "system", "content": "你是助手"},
        {"role": "user", "content": "北京天气和时间？"},
        {"role": "assistant", "content": "", "tool_calls": calls(("get_weather", {"city": "北京"}))},
        {"role": "tool", "content": "晴"},
        {"role": "assistant", "content": "",
         "tool_calls": calls(("get_time", {}), ("get_weather", {"city": "上海"}))},
        {"role": "tool", "content": "十点；上海阴"},
        {"role": "assistant", "content": "北京晴，十点。"},
    ]
    assert conv.tools == WRAPPED and conv.trimmed == 1


def test_openai_tool_calls_with_text_ids_and_json_string_arguments():
    conv = get_normalizer("openai")(openai_tools(
        {"role": "user", "content": "北京天气？"},
        {"role": "assistant", "content": "我查一下。", "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "晴"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "c2", "content": "十点"},
        {"role": "assistant", "content": "晴，十点。"}, tools=SCHEMAS))
    assert conv.messages[1] == {"role": "assistant", "content": "我查一下。",
                                "tool_calls": calls(("get_weather", {"city": "北京"}))}
    assert conv.messages[3] == {"role": "assistant", "content": "",
                                "tool_calls": calls(("get_time", {}))}
    assert [m["role"] for m in conv.messages] == ["user", "assistant", "tool", "assistant",
                                                  "tool", "assistant"]
    assert conv.tools == WRAPPED  # bare schemas are wrapped in OpenAI's shape


def test_tools_without_calls_and_a_call_as_the_last_turn_are_kept():
    plain = get_normalizer("sharegpt")(sharegpt_tools(("human", "你好"), ("gpt", "你好呀")))
    assert plain.tools == WRAPPED and plain.messages == user_assistant("你好", "你好呀")
    ending = get_normalizer("openai")(openai_tools(
        {"role": "user", "content": "几点了"},
        {"role": "assistant", "tool_calls": [{"function": {"name": "get_time", "arguments": {}}}]}))
    assert ending.messages[-1]["tool_calls"] == calls(("get_time", {}))


def test_plain_records_stay_plain_with_an_empty_tools_column():
    conv = get_normalizer("sharegpt")(sharegpt_tools(("human", "你好"), ("gpt", "你好呀"),
                                                     tools=""))
    assert conv.tools is None and conv.messages == user_assistant("你好", "你好呀")


def test_tools_column_mapping():
    normalize = get_normalizer("openai", {"tools": "functions"})
    conv = normalize({"messages": [{"role": "user", "content": "几点"},
                                   {"role": "assistant", "content": "十点"}],
                      "functions": SCHEMAS})
    assert conv.tools == WRAPPED


CALL = '{"name": "get_weather", "arguments": {"city": "北京"}}'
BAD_TOOL_RECORDS = {
    "tools not JSON": (sharegpt_tools(("human", "a"), ("gpt", "b"), tools="[{"),
                       "bad_tools", "tools: not valid JSON"),
    "tools an object": (openai_tools({"role": "user", "content": "a"},
                                     {"role": "assistant", "content": "b"}, tools={"a": 1}),
                        "bad_tools", "expected a list of function schemas, got an object"),
    "schema without name": (sharegpt_tools(("human", "a"), ("gpt", "b"),
                                           tools='[{"description": "x"}]'),
                            "bad_tools", "tools[0]: expected an object with a function name"),
    "call not JSON": (sharegpt_tools(("human", "a"), ("function_call", "get_weather(北京)"),
                                     ("observation", "晴"), ("gpt", "b")),
                      "bad_tool_call", "turn 1: not valid JSON"),
    "call without name": (sharegpt_tools(("human", "a"), ("function_call", '{"arguments": {}}'),
                                         ("observation", "晴"), ("gpt", "b")),
                          "bad_tool_call", "turn 1: expected an object with a function name"),
    "empty call list": (sharegpt_tools(("human", "a"), ("function_call", "[]"),
                                       ("observation", "晴"), ("gpt", "b")),
                        "bad_tool_call", "no call"),
    "arguments not JSON": (openai_tools(
        {"role": "user", "content": "a"},
        {"role": "assistant", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": "{'city': '北京'}"}}]},
        {"role": "tool", "content": "晴"}, {"role": "assistant", "content": "b"}),
        "tool_args_not_json", "turn 1[0].arguments: not valid JSON"),
    "arguments an array": (sharegpt_tools(
        ("human", "a"), ("function_call", '{"name": "get_weather", "arguments": [1]}'),
        ("observation", "晴"), ("gpt", "b")),
        "tool_args_not_json", "expected a JSON object, got an array"),
    "result first": (sharegpt_tools(("observation", "晴"), ("human", "a"), ("gpt", "b")),
                     "tool_result_without_call", "turn 0"),
    "result after a reply": (sharegpt_tools(("human", "a"), ("gpt", "b"), ("observation", "晴"),
                                            ("gpt", "c")),
                             "tool_result_without_call", "turn 2"),
    "unknown function": (sharegpt_tools(("human", "a"), ("function_call",
                                                         '{"name": "book", "arguments": {}}'),
                                        ("observation", "晴"), ("gpt", "b")),
                         "unknown_function", "'book', which is not in tools (listed: get_time, "
                                             "get_weather)"),
    "call without tools": (sharegpt_tools(("human", "a"), ("function_call", CALL),
                                          ("observation", "晴"), ("gpt", "b"), tools=None),
                           "unknown_function", "listed: none"),
    "call answered by user": (sharegpt_tools(("human", "a"), ("function_call", CALL),
                                             ("human", "c"), ("gpt", "b")),
                              "bad_turns", "turn 2: expected tool, got user"),
    "ends with a result": (sharegpt_tools(("human", "a"), ("function_call", CALL),
                                          ("observation", "晴")),
                           "bad_turns", "ends with a tool result"),
    "openai tool_calls not a list of calls": (openai_tools(
        {"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": "get_weather"},
        {"role": "tool", "content": "晴"}, {"role": "assistant", "content": "b"}),
        "bad_tool_call", "turn 1: not valid JSON"),
}


@pytest.mark.parametrize("record, reason, detail", BAD_TOOL_RECORDS.values(),
                         ids=BAD_TOOL_RECORDS.keys())
def test_malformed_tool_records_are_rejected_with_the_reason(record, reason, detail):
    fmt = "sharegpt" if "conversations" in record else "openai"
    with pytest.raises(RecordError) as err:
        get_normalizer(fmt)(record)
    assert err.value.reason == reason
    assert detail in err.value.detail

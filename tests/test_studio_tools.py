"""Function calling through the studio's OpenAI API, with the official `openai` client
against a real uvicorn. The model (scripted_model.py) writes a known call after the
tool-calling prompt, so the test knows what it says and checks what the studio makes of it.
"""
from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
import yaml
from scripted_model import ASK, CALL_TEXT, WEATHER, tool_caller

from workflow_scripts.evaluation.tool_calls import ToolCall
from workflow_scripts.studio.app import StudioSettings, create_app
from workflow_scripts.studio.background import BackgroundServer
from workflow_scripts.studio.tool_calling import CallSplitter, template_tools
from workflow_scripts.training.chat_tokenize import render


# ------------------------------------------------------------------ reading calls from text

def split(fmt: str, pieces: list[str]) -> tuple[str, str, list[ToolCall] | None]:
    splitter = CallSplitter(fmt)
    streamed = "".join(splitter.feed(p) for p in pieces)
    rest, calls = splitter.finish()
    return streamed, rest, calls


def test_text_before_a_call_streams_and_the_call_is_held_back():
    text = "我来查一下。" + CALL_TEXT
    streamed, rest, calls = split("hermes", list(text))  # one character at a time
    assert streamed == "我来查一下。" and rest == ""
    assert calls == [ToolCall("get_weather", {"city": "北京"})]


def test_an_answer_that_is_not_a_call_comes_out_whole():
    for text in ("天气晴。", "用 <tool 标签", "<tool_call>\n{not json}\n</tool_call>",
                 "<tool_call>\n{\"name\": \"f\"}"):
        streamed, rest, calls = split("hermes", list(text))
        assert streamed + rest == text and calls is None


def test_json_format_holds_an_answer_that_opens_an_object():
    streamed, rest, calls = split("json", [" ", '{"name": "f", ', '"arguments": {"x": 1}}'])
    assert streamed == "" and calls == [ToolCall("f", {"x": 1})]
    streamed, rest, calls = split("json", ["  晴", "天 {x}"])
    assert streamed + rest == "  晴天 {x}" and calls is None


# ------------------------------------------------------------------ through the API

@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tools-studio")
    tool_caller(root / "toolbot")
    (root / "data.json").write_text(json.dumps([{"instruction": "你好", "output": "你好"}]))
    config = {"datasets": {"d": {"format": "alpaca", "files": ["data.json"]}},
              "base_models": {"toolbot": {"source": "path", "path": str(root / "toolbot")}},
              "experiments": {"e": {"base_model": "toolbot", "dataset": "d", "method": "lora"}}}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


@pytest.fixture(scope="module")
def server(workdir):
    app = create_app(StudioSettings(config=workdir / "config.yaml", workdir=workdir))
    with BackgroundServer(app) as running:
        yield running


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_a_call_comes_back_as_openai_tool_calls(oai):
    reply = oai.chat.completions.create(model="toolbot", messages=ASK, tools=[WEATHER])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "北京"}


def test_a_streamed_call_arrives_whole_in_one_delta(oai):
    chunks = list(oai.chat.completions.create(model="toolbot", messages=ASK, tools=[WEATHER],
                                              stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert text == "" and "<tool_call>" not in text
    assert [(t.index, t.function.name, json.loads(t.function.arguments)) for t in calls] == [
        (0, "get_weather", {"city": "北京"})]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage.completion_tokens > 0


def test_without_tools_the_same_text_stays_text(oai):
    """tool_choice "none" shows the model no tools: a shorter prompt, a text answer."""
    with_tools = oai.chat.completions.create(model="toolbot", messages=ASK, tools=[WEATHER])
    none = oai.chat.completions.create(model="toolbot", messages=ASK, tools=[WEATHER],
                                       tool_choice="none", max_tokens=8)
    assert none.choices[0].message.tool_calls is None
    assert isinstance(none.choices[0].message.content, str)
    assert none.usage.prompt_tokens < with_tools.usage.prompt_tokens


def test_earlier_calls_and_results_go_to_the_template(oai, workdir):
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "晴，25度"}]
    reply = oai.chat.completions.create(model="toolbot", messages=history, tools=[WEATHER],
                                        max_tokens=4)
    from workflow_scripts.models.loading import load_tokenizer
    from workflow_scripts.studio.tool_calling import template_message

    tokenizer = load_tokenizer(str(workdir / "toolbot"))
    messages = [template_message(m, i) for i, m in enumerate(history)]
    prompt = render(tokenizer, messages, generation_prompt=True, tools=template_tools([WEATHER]))
    assert "<tool_response>\n晴，25度\n</tool_response>" in prompt
    assert '"arguments": {"city": "北京"}' in prompt
    assert reply.usage.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("change, status, names", [
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, 400, "tools[0]"),
    ({"tools": "get_weather"}, 422, "tools"),
    ({"tool_choice": "required"}, 422, "tool_choice"),
    ({"messages": ASK + [{"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": "{city"}}]}]},
     400, "messages[1].tool_calls"),
    ({"messages": [{"role": "tool"}]}, 422, "messages.0"),
])
def test_bad_tool_requests_name_what_is_wrong(server, change, status, names):
    import httpx2 as httpx

    body = {"model": "toolbot", "messages": ASK, "tools": [WEATHER]} | change
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert names in error["message"] and error["param"].startswith(names.split("[")[0].split(".")[0])


@pytest.mark.browser
def test_the_chat_page_shows_a_call_and_sends_the_reply_back_as_its_result(server):
    from test_studio_browser import script_errors, start_chromium, wait_for

    browser = start_chromium()
    try:
        browser.get(f"{server.url}/chat")
        wait_for(browser, "document.querySelectorAll('#chat-base option').length === 1")
        browser.find_element("id", "chat-tools").send_keys("[not json")
        browser.find_element("id", "chat-message").send_keys(ASK[0]["content"])
        browser.find_element("id", "chat-send").click()
        wait_for(browser, "!document.querySelector('#chat-tools-error').hidden")
        assert not browser.find_elements("css selector", ".msg.user")  # nothing was sent

        browser.find_element("id", "chat-tools").clear()
        browser.find_element("id", "chat-tools").send_keys(json.dumps([WEATHER], ensure_ascii=False))
        browser.find_element("id", "chat-send").click()
        wait_for(browser, "document.querySelectorAll('.msg.assistant.finished').length === 1")
        calls = [e.text for e in browser.find_elements("css selector", ".tool-call")]
        assert calls == ['get_weather({"city": "北京"})']
        assert "tool_calls" in browser.find_element("css selector", ".msg.assistant .meta").text

        browser.find_element("id", "chat-message").send_keys("晴，25度")
        browser.find_element("id", "chat-send").click()
        wait_for(browser, "document.querySelectorAll('.msg.assistant.finished').length === 2")
        assert browser.find_element("css selector", ".msg.tool").text == "晴，25度"
        assert not browser.find_elements("css selector", ".msg.error")
        assert script_errors(browser) == []
    finally:
        browser.quit()

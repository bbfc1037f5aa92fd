"""OpenAI function calling over the studio's models.

A request's `tools` and its earlier calls and results go to the chat template in the shape
training used (data.formats.parse_tools / parse_calls), so a tool-calling adapter sees the
prompts it was trained on. The answer is read back with tool_calls.parse_tool_calls in the
template's own call format: calls become OpenAI `tool_calls` with `finish_reason:
"tool_calls"`, and an answer whose calls do not parse is returned as plain text.
"""
from __future__ import annotations

import json
import uuid
from typing import Any

from workflow_scripts.data.formats import RecordError, parse_calls, parse_tools
from workflow_scripts.evaluation.tool_calls import ToolCall, parse_tool_calls
from workflow_scripts.studio.errors import BadRequest

HERMES_OPEN = "<tool_call>"


def template_tools(tools: list[dict] | None) -> list[dict] | None:
    """The request's function schemas in the template's shape; None for none (400 if bad)."""
    try:
        parsed = parse_tools(tools, "tools")
    except RecordError as err:
        raise BadRequest(f"invalid tools: {err.detail}", param="tools") from None
    return parsed or None


def template_calls(tool_calls: list[dict], where: str) -> list[dict]:
    """An assistant message's OpenAI `tool_calls` in the template's shape (400 if bad)."""
    try:
        return parse_calls(tool_calls, where)
    except RecordError as err:
        raise BadRequest(f"invalid {err.detail}", param=where) from None


def openai_calls(calls: list[ToolCall]) -> list[dict]:
    """Parsed calls as OpenAI's `tool_calls`: arguments as a JSON string, fresh ids."""
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
            for c in calls]


class CallSplitter:
    """Streams an answer's text until a call may have begun, then holds the rest back.

    `fmt` is the template's call format: "hermes" holds from `<tool_call>` on (text before it
    streams as content); "json" holds an answer whose first visible character opens a JSON
    object or array. `finish` returns what is left to send as content and the calls, if the
    held text parses as calls (else it all goes out as content).
    """

    def __init__(self, fmt: str):
        self.fmt, self.sent, self.held, self.holding = fmt, "", "", False

    def feed(self, text: str) -> str:
        if self.holding:
            self.held += text
            return ""
        pending = self.held + text
        start = self._call_start(pending)
        if start is not None:
            self.holding, self.held = True, pending[start:]
            out = pending[:start]
        else:
            keep = self._possible_start(pending)
            out, self.held = pending[:len(pending) - keep], pending[len(pending) - keep:]
        self.sent += out
        return out

    def finish(self) -> tuple[str, list[ToolCall] | None]:
        held, self.held = self.held, ""
        calls = parse_tool_calls(held, self.fmt) if self.holding else None
        if calls is None:
            return held, None
        return "", calls


    def _call_start(self, text: str) -> int | None:
        if self.fmt == "hermes":
            index = text.find(HERMES_OPEN)
            return index if index >= 0 else None
        stripped = text.lstrip()
        if not self.sent.strip() and stripped[:1] in ("{", "["):
            return 0
        return None

    def _possible_start(self, text: str) -> int:
        """How many trailing characters could still begin a call: held, not sent yet."""
        if self.fmt == "hermes":
            return max((k for k in range(1, len(HERMES_OPEN)) if text.endswith(HERMES_OPEN[:k])),
                       default=0)
        return len(text) if not (self.sent + text).strip() else 0


def split_answer(fmt: str, text: str) -> tuple[str | None, list[ToolCall] | None]:
    """A whole answer's calls and the text before them (None if blank); (text, None) when
    it holds no call that parses."""
    splitter = CallSplitter(fmt)
    before = splitter.feed(text)
    rest, calls = splitter.finish()
    return (before.strip() or None, calls) if calls else (before + rest, None)


def template_message(message: dict[str, Any], index: int) -> dict:
    """One request message as the chat template wants it (`message` is already validated:
    a role, text content, and for an assistant maybe `tool_calls`)."""
    role = "system" if message["role"] == "developer" else message["role"]
    out = {"role": role, "content": message.get("content") or ""}
    if role == "assistant" and message.get("tool_calls"):
        out["tool_calls"] = template_calls(message["tool_calls"], f"messages[{index}].tool_calls")
    return out

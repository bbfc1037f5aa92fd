"""Read function calls back out of a generated assistant turn, and score them.

Two formats, picked from the chat template (`call_format`):

- "hermes": `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` blocks, one per
  call, as Qwen2.5, Qwen3 and the scratch model's template (chat_templates.py) write them;
  text around the blocks (a preamble, <think> reasoning) is ignored;
- "json": the whole turn is one call object or a list of them (templates without a call
  syntax of their own, as LLaMA-Factory's default function format).

A turn that holds no call, an unclosed block, or a block that is not a call object does
not parse (None): it scores zero on every measure.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any, NamedTuple

HERMES_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
SCORE_KEYS = ("tool_valid", "tool_name_correct", "tool_args_exact")


class ToolCall(NamedTuple):
    name: str
    arguments: dict[str, Any]

    def key(self) -> tuple[str, str]:
        """Name and arguments as canonical JSON: equal for arguments in any key order."""
        return self.name, json.dumps(self.arguments, sort_keys=True, ensure_ascii=False)


def call_format(chat_template: str | None) -> str:
    """"hermes" when the template writes <tool_call> blocks, else "json"."""
    return "hermes" if chat_template and "<tool_call>" in chat_template else "json"


def _call(obj: Any) -> ToolCall | None:
    """{"name", "arguments"} (arguments an object or a JSON string of one) as a call."""
    if isinstance(obj, dict) and isinstance(obj.get("function"), dict):
        obj = obj["function"]  # OpenAI's {"type": "function", "function": {...}}
    if not (isinstance(obj, dict) and isinstance(obj.get("name"), str) and obj["name"]):
        return None
    arguments = obj.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    return ToolCall(obj["name"], arguments) if isinstance(arguments, dict) else None


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def parse_tool_calls(text: str, fmt: str = "hermes") -> list[ToolCall] | None:
    """The calls in a generated turn, in order; None when it holds none or any is malformed."""
    if fmt == "hermes":
        if "<tool_call>" not in text:
            return None
        blocks = [m.group(0).endswith("</tool_call>") and _loads(m.group(1).strip())
                  for m in HERMES_BLOCK.finditer(text)]
    elif fmt == "json":
        found = _loads(text.strip())
        blocks = found if isinstance(found, list) else [found]
    else:
        raise ValueError(f"unknown call format {fmt!r}; known: hermes, json")
    calls = [_call(block) for block in blocks]
    return calls if calls and None not in calls else None


def reference_calls(message: dict) -> list[ToolCall]:
    """The calls of a normalized assistant message (data.formats' `tool_calls`)."""
    return [c for c in map(_call, message.get("tool_calls") or ()) if c is not None]


def score_calls(predicted: list[ToolCall] | None, reference: list[ToolCall],
                functions: set[str]) -> dict[str, float]:
    """Per-sample scores, each 0 or 1.

    tool_valid: the turn parses and calls only functions in `functions` (the record's tools);
    tool_name_correct: the same functions as the reference, as many times each (the order of
    parallel calls does not matter); tool_args_exact: the same calls with the same
    arguments as JSON, key order ignored.
    """
    if predicted is None:
        return dict.fromkeys(SCORE_KEYS, 0.0)
    return {
        "tool_valid": float(all(call.name in functions for call in predicted)),
        "tool_name_correct": float(Counter(c.name for c in predicted)
                                   == Counter(c.name for c in reference)),
        "tool_args_exact": float(Counter(c.key() for c in predicted)
                                 == Counter(c.key() for c in reference)),
    }

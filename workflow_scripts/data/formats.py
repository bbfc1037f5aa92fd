"""Read raw dataset files and turn each record into chat messages.

Two layers:

- `load_records` reads a whole file (a JSON array, or JSON Lines) and raises `DataError`
  naming the file and the exact place (line, column, byte offset) when it cannot.
- One normalizer per format turns a raw record into `Conversation` (a list of
  `{"role", "content"}` messages: an optional system message, then user/assistant turns
  that alternate and end with an assistant turn) or raises `RecordError(reason, detail)`;
  such records are rejected one by one, never the whole file.

Tool-calling records (ShareGPT with `function_call`/`observation` turns and a `tools`
column, OpenAI messages with `tool_calls` and `role: tool`) become messages that
`apply_chat_template(messages, tools=...)` renders natively: assistant turns may carry
`tool_calls` ([{"type": "function", "function": {"name", "arguments": {...}}}]), results
are `{"role": "tool", "content"}` turns, and `Conversation.tools` holds the function
schemas in OpenAI's shape ({"type": "function", "function": {"name", ...}}).

ShareGPT and OpenAI contents may be a list of text parts (`{"type": "text", "text": ...}`
as OpenAI writes them, `{"type": "text", "value": ...}` as LLaMA-Factory v1 does), joined
in order; a part of another type (an image, audio) rejects the record. A message's
`loss_weight` of 0 takes an assistant turn out of the loss (it stays as context): the
normalized message then carries `"loss_weight": 0`, which chat_tokenize reads.

Field names can be remapped per dataset with the config's `columns` (our name -> the
file's key), as LLaMA-Factory's dataset_info does.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, NamedTuple

FORMATS = ("alpaca", "sharegpt", "openai", "lccc")

# Our field names per format, with the file key each one reads by default.
DEFAULT_COLUMNS: dict[str, dict[str, str]] = {
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output",
               "system": "system", "history": "history"},
    "sharegpt": {"conversations": "conversations", "system": "system", "tools": "tools",
                 "role_tag": "from", "content_tag": "value", "loss_weight": "loss_weight"},
    "openai": {"messages": "messages", "role_tag": "role", "content_tag": "content",
               "tools": "tools", "loss_weight": "loss_weight"},
    "lccc": {"conversations": "dialog"},
}
DISPLAY_NAMES = {"alpaca": "Alpaca", "sharegpt": "ShareGPT", "openai": "OpenAI messages",
                 "lccc": "LCCC"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "system": "system",
                  "function_call": "function_call", "observation": "tool"}
OPENAI_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "tool": "tool"}
# Roles of the turns list before tool records are built; "function_call" becomes an
# assistant message with `tool_calls`.
TOOL_ROLES = ("function_call", "tool")


class DataError(ValueError):
    """A file that cannot be used at all; the message names the file and the place."""


class RecordError(ValueError):
    """One record that is rejected; `reason` is the code counted in stats.json."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Conversation(NamedTuple):
    messages: list[dict[str, Any]]
    has_input: bool = False  # alpaca: a non-empty `input` field
    trimmed: int = 0  # unanswered trailing user turns that were dropped
    tools: list[dict] | None = None  # function schemas: set for every tool-calling record
    weighted: bool = False  # some assistant message carries "loss_weight": 0


# ---------------------------------------------------------------- reading files


def load_records(path: str | Path) -> list[Any]:
    """All records of a JSON array or JSON Lines file, in file order."""
    data = Path(path).read_bytes()
    return parse_records(data, str(path))


def parse_records(data: bytes, name: str) -> list[Any]:
    """Parse file bytes; `name` is used in error messages only."""
    return parse_text(decode_utf8(data, name), name)


def parse_text(text: str, name: str) -> list[Any]:
    """Parse decoded file text; raises the `DataError` that describes a broken file."""
    if text_layout(text, name) == "array":
        records = _parse_array(text, name)
    else:
        records = _parse_json_lines(text, name)
    if not records:
        raise DataError(f"{name}: contains no records")
    return records


def text_layout(text: str, name: str) -> str:
    """"array" (a JSON array) or "lines" (JSON Lines), by the first visible character."""
    first = text.lstrip()[:1]
    if not first:
        raise DataError(f"{name}: file is empty")
    if first in "[{":
        return "array" if first == "[" else "lines"
    raise DataError(f"{name}: expected a JSON array of records or JSON Lines objects, "
                    f"but the file starts with {first!r}")


def decode_utf8(data: bytes, name: str) -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{name}: not valid UTF-8 at byte offset {err.start} (line {line}): "
                        f"byte 0x{data[err.start]:02x} ({err.reason})") from None


def _byte_offset(text: str, pos: int) -> int:
    return len(text[:pos].encode("utf-8"))


def _parse_array(text: str, name: str) -> list[Any]:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        error = DataError(f"{name}: invalid JSON at line {err.lineno}, column {err.colno} "
                          f"(byte offset {_byte_offset(text, err.pos)}): {err.msg}")
        if err.msg == "Extra data" and text[err.pos - 1:err.pos] == "\n":
            try:  # JSON Lines whose records are arrays (LCCC dialogues)
                return _parse_json_lines(text, name)
            except DataError:
                pass
        raise error from None
    if not isinstance(records, list):
        raise DataError(f"{name}: top level is {_type_name(records)}, expected an array")
    return records


def _parse_json_lines(text: str, name: str) -> list[Any]:
    records = []
    decode = json.JSONDecoder().decode
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(decode(line))
        except json.JSONDecodeError as err:
            if number == 1:
                _refuse_single_object(text, name)
            start = _byte_offset(text, sum(len(x) + 1 for x in text.split("\n")[:number - 1]))
            raise DataError(f"{name}: invalid JSON Lines at line {number}, column {err.colno} "
                            f"(byte offset {start + _byte_offset(line, err.pos)}): "
                            f"{err.msg}") from None
    return records


def _refuse_single_object(text: str, name: str) -> None:
    """A pretty-printed object spanning lines is not JSON Lines: say so plainly."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return
    keys = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, dict) else ""
    raise DataError(f"{name}: top level is one JSON object (keys: {keys}); expected an array "
                    "of records or JSON Lines with one record per line")


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# ---------------------------------------------------------------- reading in spans
# Large files are parsed span by span, possibly in several processes. A span starts at a
# record and holds the records that start before its `stop`. For JSON Lines a span starts
# after a newline, which is exact; in an array a start is a guess (the first key of the first
# record, after a comma) that may fall inside a record. A span's `end` is where the next
# record really starts, so the caller keeps a span only if it starts at the previous `end`.

_JSON_WS = re.compile(r"[ \t\n\r]*")
_FIRST_KEY = re.compile(r'\{[ \t\n\r]*"(?:[^"\\]|\\.)*"[ \t\n\r]*:')
_raw_decode = json.JSONDecoder().raw_decode
_decode = json.JSONDecoder().decode


class SpanError(ValueError):
    """A span does not parse as the layout says; `parse_text` gives the exact error."""


class Span(NamedTuple):
    records: list[Any]
    places: list[tuple[int, int]]  # (start, end) of each record's text
    end: int  # where the record after the span starts; len(text) at the end of the file


def span_starts(text: str, layout: str, size: int, begin: int = 0, limit: int | None = None,
                cut: re.Pattern | None = None) -> list[int]:
    """Starts of spans of about `size` characters in [begin, limit); the first is `begin`
    (the file's start or a true record start). `cut` is `array_cut` of the file's start
    (default: computed from `text`, which must then start the file)."""
    limit = len(text) if limit is None else limit
    starts = [begin]
    if layout == "array":
        cut = cut or array_cut(text)
        if cut is None:
            return starts
        find = lambda pos: (m := cut.search(text, pos)) and m.end()  # noqa: E731
    else:
        find = lambda pos: text.find("\n", pos) + 1  # noqa: E731
    pos = find(begin + size)
    while pos and pos < limit:
        starts.append(pos)
        pos = find(pos + size)
    return starts


def array_cut(text: str) -> re.Pattern | None:
    """A comma and blanks followed by the start of the first record up to its first key
    (or by "[" when records are arrays, as LCCC's dialogues), read from the start of an
    array file; None when records are neither."""
    try:
        start = _JSON_WS.match(text, _JSON_WS.match(text).end() + 1).end()
        first, end = _raw_decode(text, start)
    except (json.JSONDecodeError, IndexError):
        return None
    if isinstance(first, list):
        return re.compile(r",[ \t\n\r]*(?=\[)")
    key = _FIRST_KEY.match(text, start)
    if key is None or key.end() > end:
        return None
    return re.compile(r",[ \t\n\r]*(?=" + re.escape(key.group()) + ")")



def is_array_lines(text: str) -> bool:
    """Whether text starting with `[` is JSON Lines of arrays (LCCC dialogues one per line):
    its first line is a whole JSON value and more follows it."""
    start = _JSON_WS.match(text).end()
    newline = text.find("\n", start)
    if newline < 0:
        return False
    try:
        _decode(text[start:newline])
    except ValueError:
        return False
    return bool(text[newline:newline + 4096].strip())


def parse_span(text: str, layout: str, start: int, stop: int, first: bool = True,
               last: bool = True) -> Span:
    """The records starting in [start, stop) of a span that starts at a record (or at 0).

    `text` may be one block of a file read piece by piece: `first` when it starts the file
    (an array's `[` is at 0), `last` when it ends it (an array's `]` may close it)."""
    try:
        if layout == "array":
            return _array_span(text, start, stop, first, last)
        return _lines_span(text, start, stop)
    except SpanError:
        raise
    except (ValueError, IndexError):  # JSONDecodeError, or a line that does not end in text
        raise SpanError(f"no valid records at {start}") from None


def _array_span(text: str, pos: int, stop: int, first: bool = True, last: bool = True) -> Span:
    if pos == 0 and first:  # past the opening bracket
        pos = _JSON_WS.match(text).end()
        if text[pos] != "[":
            raise SpanError("no array")
        pos = _JSON_WS.match(text, pos + 1).end()
    span = Span([], [], len(text))
    while pos < stop:
        record, end = _raw_decode(text, pos)
        span.records.append(record)
        span.places.append((pos, end))
        pos = _JSON_WS.match(text, end).end()
        if last and text[pos] == "]" and _JSON_WS.match(text, pos + 1).end() == len(text):
            return span
        if text[pos] != ",":
            raise SpanError(f"no comma after the record at {span.places[-1][0]}")
        pos = _JSON_WS.match(text, pos + 1).end()
    if pos >= len(text):
        raise SpanError("unterminated array")
    return span._replace(end=pos)


def _lines_span(text: str, pos: int, stop: int) -> Span:
    end = len(text) if stop >= len(text) else text.index("\n", stop - 1) + 1
    span = Span([], [], end)
    for line in text[pos:end].split("\n"):
        if line.strip():  # as _parse_json_lines: blank lines are skipped
            span.records.append(_decode(line))
            span.places.append((pos, pos + len(line)))
        pos += len(line) + 1
    return span


# ---------------------------------------------------------------- shared helpers


def resolve_columns(fmt: str, columns: dict[str, str] | None,
                    defaults: dict[str, dict[str, str]] = DEFAULT_COLUMNS) -> dict[str, str]:
    """Default keys of `fmt` (from `defaults`, a table like DEFAULT_COLUMNS) overridden by
    the config's `columns`; unknown names are refused."""
    if fmt not in defaults:
        raise DataError(f"unknown format {fmt!r}; known: {', '.join(defaults)}")
    keys = dict(defaults[fmt])
    unknown = sorted(set(columns or {}) - set(keys))
    if unknown:
        raise DataError(f"columns: {', '.join(unknown)} not used by format {fmt!r}; "
                        f"known: {', '.join(keys)}")
    keys.update(columns or {})
    return keys


def _require_object(record: Any) -> dict:
    if not isinstance(record, dict):
        raise RecordError("wrong_type", f"record: expected an object, got {_type_name(record)}")
    return record


def _field(record: dict, key: str, kind: type, required: bool, where: str | None = None
           ) -> Any:
    """record[key] checked against `kind`; None or absent gives None when not required.
    `where` names the field in errors (default: `key`)."""
    value = record.get(key)
    if value.__class__ is kind:  # the common case, checked first for speed
        return value
    if value is None:
        if required:
            state = "missing" if key not in record else "null"
            raise RecordError("missing_field", f"{where or key}: {state}")
        return None
    if not isinstance(value, kind):
        raise RecordError("wrong_type", f"{where or key}: expected {_type_name(kind())}, "
                          f"got {_type_name(value)}")
    return value


def build_conversation(turns: list[tuple[str, str]], system: str | None = None) -> Conversation:
    """Check role order and build messages; one unanswered trailing user turn is dropped."""
    messages = [{"role": "system", "content": system}] if system else []
    trimmed = 0
    if turns and turns[-1][0] == "user":
        turns, trimmed = turns[:-1], 1
    expected = "user"
    for number, (role, content) in enumerate(turns):
        if role != expected:
            raise RecordError("bad_turns", f"turn {number}: expected {expected}, got {role}")
        messages.append({"role": role, "content": content})
        expected = "assistant" if role == "user" else "user"
    if not turns:
        raise RecordError("bad_turns", "no user turn followed by an assistant turn")
    return Conversation(messages, trimmed=trimmed)


class Turns(NamedTuple):
    """A ShareGPT/OpenAI list read into (role, content) pairs, a leading system turn split off."""

    turns: list[tuple[str, Any]]
    system: str | None
    unweighted: tuple[int, ...]  # positions in `turns` of assistant turns with loss_weight 0


# The keys a text part may hold its text under: OpenAI's and LLaMA-Factory v1's.
TEXT_PART_KEYS = ("text", "value")


def _content_text(item: dict, tag: str, where: str, required: bool) -> str | None:
    """A message's content: a string, or a list of text parts joined in order."""
    value = item.get(tag)
    if value.__class__ is not list:
        return _field(item, tag, str, required, f"{where}.{tag}")
    texts = []
    for number, part in enumerate(value):
        place = f"{where}.{tag}[{number}]"
        if not isinstance(part, dict):
            raise RecordError("wrong_type", f"{place}: expected a content part object, "
                              f"got {_type_name(part)}")
        kind = part.get("type", "text")
        if kind != "text":
            raise RecordError("non_text_content", f"{place}: a part of type {kind!r}; only "
                              "text parts can be trained on")
        text = next((part[key] for key in TEXT_PART_KEYS if key in part), None)
        if not isinstance(text, str):
            raise RecordError("wrong_type", f"{place}: a text part needs a string under "
                              f"{' or '.join(TEXT_PART_KEYS)}")
        texts.append(text)
    return "".join(texts)


def _loss_weight(item: dict, key: str, where: str) -> bool:
    """False when the message says loss_weight 0, True for 1 or no weight."""
    weight = item.get(key)
    if weight is None or weight.__class__ is not bool and weight in (0, 1):
        return weight != 0
    raise RecordError("wrong_type", f"{where}.{key}: expected 0 or 1, got {weight!r}")


def _tagged_turns(items: Any, key: str, keys: dict[str, str], roles: dict[str, str]) -> Turns:
    """(role, content) pairs of a ShareGPT/OpenAI list; a leading system turn is split off."""
    if not isinstance(items, list):
        raise RecordError("wrong_type", f"{key}: expected an array, got {_type_name(items)}")
    role_tag, content_tag, weight_tag = keys["role_tag"], keys["content_tag"], keys["loss_weight"]
    turns, unweighted = [], []
    for number, item in enumerate(items):
        where = f"{key}[{number}]"
        if not isinstance(item, dict):
            raise RecordError("wrong_type", f"{where}: expected an object, got {_type_name(item)}")
        tag = _field(item, role_tag, str, True, f"{where}.{role_tag}")
        calls = item.get("tool_calls") if tag == "assistant" else None
        content = _content_text(item, content_tag, where, required=calls is None)
        if tag not in roles:
            raise RecordError("bad_turns", f"{where}.{role_tag}: unknown role {tag!r}; "
                              f"known: {', '.join(roles)}")
        if weight_tag in item and not _loss_weight(item, weight_tag, where) and (
                calls is not None or roles[tag] in ("assistant", "function_call")):
            unweighted.append(len(turns))
        if calls is not None:  # OpenAI: text (maybe none) and calls in one turn
            turns.append(("function_call", ((content or "").strip(), calls)))
            continue
        turns.append((roles[tag], content.strip()))
    system = None
    if turns and turns[0][0] == "system":
        system, turns = turns[0][1], turns[1:]
        unweighted = [number - 1 for number in unweighted]
    return Turns(turns, system, tuple(unweighted))


# ---------------------------------------------------------------- normalizers


def normalize_alpaca(record: Any, keys: dict[str, str]) -> Conversation:
    """instruction (+ "\\n" + input) -> user, output -> assistant; history pairs come first."""
    fast = _plain_alpaca(record, keys)
    if fast is not None:
        return fast
    record = _require_object(record)
    instruction = _field(record, keys["instruction"], str, required=True).strip()
    output = _field(record, keys["output"], str, required=True).strip()
    extra = (_field(record, keys["input"], str, required=False) or "").strip()
    system = (_field(record, keys["system"], str, required=False) or "").strip()
    history = _field(record, keys["history"], list, required=False)
    prompt = f"{instruction}\n{extra}" if instruction and extra else instruction or extra
    messages = [{"role": "system", "content": system}] if system else []
    for number, pair in enumerate(history or ()):
        if not (isinstance(pair, list) and len(pair) == 2
                and all(isinstance(x, str) for x in pair)):
            raise RecordError("wrong_type", f"{keys['history']}[{number}]: expected "
                              "[user, assistant] strings")
        messages += [{"role": "user", "content": pair[0].strip()},
                     {"role": "assistant", "content": pair[1].strip()}]
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return Conversation(messages, bool(extra))


def _plain_alpaca(record: Any, keys: dict[str, str]) -> Conversation | None:
    """`normalize_alpaca` for the common record (strings, no history), without the per-field
    checks; None for anything else, which the general path handles."""
    if record.__class__ is not dict:
        return None
    get = record.get
    instruction, output = get(keys["instruction"]), get(keys["output"])
    extra, system = get(keys["input"]), get(keys["system"])
    if (instruction.__class__ is not str or output.__class__ is not str
            or get(keys["history"]) is not None
            or (extra is not None and extra.__class__ is not str)
            or (system is not None and system.__class__ is not str)):
        return None
    instruction, output = instruction.strip(), output.strip()
    extra = extra.strip() if extra else ""
    prompt = f"{instruction}\n{extra}" if instruction and extra else instruction or extra
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    if system and (system := system.strip()):
        messages.insert(0, {"role": "system", "content": system})
    return Conversation(messages, bool(extra))


def normalize_sharegpt(record: Any, keys: dict[str, str]) -> Conversation:
    """conversations of {from, value}: human/user, gpt/assistant, an optional first system."""
    record = _require_object(record)
    key = keys["conversations"]
    read = _tagged_turns(_field(record, key, list, True), key, keys, SHAREGPT_ROLES)
    top_system = (_field(record, keys["system"], str, required=False) or "").strip()
    return _conversation(record, read._replace(system=top_system or read.system), keys["tools"])


def normalize_openai(record: Any, keys: dict[str, str]) -> Conversation:
    """messages of {role, content} with roles system/user/assistant."""
    record = _require_object(record)
    key = keys["messages"]
    read = _tagged_turns(_field(record, key, list, True), key, keys, OPENAI_ROLES)
    return _conversation(record, read, keys["tools"])


def _conversation(record: dict, read: Turns, tools_key: str) -> Conversation:
    """A plain conversation, or a tool-calling one when the record has tools or tool turns;
    assistant turns with loss_weight 0 are marked in its messages."""
    turns, system = read.turns, read.system
    tools = parse_tools(record.get(tools_key), tools_key)
    if not tools and not any(role in TOOL_ROLES for role, _ in turns):
        conversation = build_conversation(turns, system)
    else:
        conversation = build_tool_conversation(turns, tools, system)
    if not read.unweighted:
        return conversation
    offset = 1 if conversation.messages[0]["role"] == "system" else 0
    for number in read.unweighted:
        conversation.messages[number + offset]["loss_weight"] = 0
    return conversation._replace(weighted=True)


def restore_lccc_text(utterance: str) -> str:
    """Undo LCCC's tokenization: the corpus separates EVERY character by one space.

    Latin letters and digits are separated too ("3 1 万" is "31万", "N a n" is "Nan",
    "T . T" is "T.T") and the corpus holds no double spaces, so the original word spaces
    were already lost upstream and removing every space is the faithful inverse.
    """
    return utterance.replace(" ", "").strip()


def normalize_lccc(record: Any, keys: dict[str, str]) -> Conversation:
    """A list of utterances by two alternating speakers: the first speaker is the user."""
    where = "record"
    if isinstance(record, dict):
        where = keys["conversations"]
        record = _field(record, where, list, required=True)
    if not isinstance(record, list):
        raise RecordError("wrong_type", f"{where}: expected an array of utterances, "
                          f"got {_type_name(record)}")
    turns = []
    for number, utterance in enumerate(record):
        if not isinstance(utterance, str):
            raise RecordError("wrong_type", f"{where}[{number}]: expected a string, "
                              f"got {_type_name(utterance)}")
        turns.append(("assistant" if number % 2 else "user", restore_lccc_text(utterance)))
    return build_conversation(turns)


# ---------------------------------------------------------------- tool calling


def _json_value(value: Any, reason: str, where: str) -> Any:
    """`value` parsed when it is a JSON string, else as it is."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise RecordError(reason, f"{where}: not valid JSON ({err.msg} at column "
                          f"{err.colno}): {value[:80]!r}") from None


def _function(item: Any, reason: str, where: str) -> dict:
    """A schema or call object, unwrapped from OpenAI's {"type": "function", "function": ...}."""
    function = item.get("function", item) if isinstance(item, dict) else None
    if not (isinstance(function, dict) and isinstance(function.get("name"), str)
            and function["name"]):
        raise RecordError(reason, f"{where}: expected an object with a function name")
    return function


def parse_tools(value: Any, key: str) -> list[dict]:
    """The `tools` column (a JSON string or a list of function schemas) in OpenAI's shape."""
    if value in (None, ""):
        return []
    value = _json_value(value, "bad_tools", key)
    if not isinstance(value, list):
        raise RecordError("bad_tools", f"{key}: expected a list of function schemas, "
                          f"got {_type_name(value)}")
    return [{"type": "function", "function": _function(schema, "bad_tools", f"{key}[{number}]")}
            for number, schema in enumerate(value)]


def tool_names(tools: list[dict] | None) -> set[str]:
    return {tool["function"]["name"] for tool in tools or ()}


def _call_arguments(arguments: Any, where: str) -> dict:
    """Arguments as an object; a JSON string is parsed (OpenAI and LLaMA-Factory use one)."""
    if isinstance(arguments, str) and not arguments.strip():
        return {}
    arguments = _json_value(arguments, "tool_args_not_json", f"{where}.arguments")
    if arguments is None:
        return {}
    if not isinstance(arguments, dict):
        raise RecordError("tool_args_not_json", f"{where}.arguments: expected a JSON object, "
                          f"got {_type_name(arguments)}")
    return arguments


def parse_calls(raw: Any, where: str) -> list[dict]:
    """Calls of one turn in the chat-template shape. `raw` is ShareGPT's function_call value
    (a JSON object or array of {name, arguments}) or OpenAI's tool_calls list."""
    raw = _json_value(raw, "bad_tool_call", where)
    items = raw if isinstance(raw, list) else [raw]
    calls = []
    for number, item in enumerate(items):
        place = f"{where}[{number}]" if isinstance(raw, list) else where
        function = _function(item, "bad_tool_call", place)
        calls.append({"type": "function", "function": {
            "name": function["name"],
            "arguments": _call_arguments(function.get("arguments"), place)}})
    if not calls:
        raise RecordError("bad_tool_call", f"{where}: no call in the turn")
    return calls


# What may follow each role in a tool-calling conversation.
_NEXT_ROLES = {"user": ("assistant", "function_call"), "assistant": ("user",),
               "function_call": ("tool",), "tool": ("tool", "assistant", "function_call")}


def _tool_message(role: str, content: Any, number: int, known: set[str]) -> dict:
    if role != "function_call":
        return {"role": role, "content": content}
    text, raw = content if isinstance(content, tuple) else ("", content)
    calls = parse_calls(raw, f"turn {number}")
    for call in calls:
        name = call["function"]["name"]
        if name not in known:
            listed = ", ".join(sorted(known)) or "none"
            raise RecordError("unknown_function", f"turn {number}: calls {name!r}, which is "
                              f"not in tools (listed: {listed})")
    return {"role": "assistant", "content": text, "tool_calls": calls}


def build_tool_conversation(turns: list[tuple[str, Any]], tools: list[dict],
                            system: str | None = None) -> Conversation:
    """`build_conversation` for tool calling: a call is followed by its results, results by
    an assistant turn; one unanswered trailing user turn is dropped."""
    messages = [{"role": "system", "content": system}] if system else []
    trimmed = 0
    if turns and turns[-1][0] == "user":
        turns, trimmed = turns[:-1], 1
    known, previous = tool_names(tools), None
    for number, (role, content) in enumerate(turns):
        if role == "tool" and previous not in ("function_call", "tool"):
            raise RecordError("tool_result_without_call",
                              f"turn {number}: a tool result with no call before it")
        allowed = ("user",) if previous is None else _NEXT_ROLES[previous]
        if role not in allowed:
            raise RecordError("bad_turns", f"turn {number}: expected {' or '.join(allowed)}, "
                              f"got {role}")
        messages.append(_tool_message(role, content, number, known))
        previous = role
    if previous is None:
        raise RecordError("bad_turns", "no user turn followed by an assistant turn")
    if previous == "tool":
        raise RecordError("bad_turns", "ends with a tool result and no assistant turn after it")
    return Conversation(messages, trimmed=trimmed, tools=tools)


NORMALIZERS: dict[str, Callable[[Any, dict[str, str]], Conversation]] = {
    "alpaca": normalize_alpaca,
    "sharegpt": normalize_sharegpt,
    "openai": normalize_openai,
    "lccc": normalize_lccc,
}


def get_normalizer(fmt: str, columns: dict[str, str] | None = None
                   ) -> Callable[[Any], Conversation]:
    """The normalizer of `fmt` with its column mapping bound."""
    keys = resolve_columns(fmt, columns)
    normalize = NORMALIZERS[fmt]
    return lambda record: normalize(record, keys)


def guess_format(record: Any) -> str | None:
    """The format a raw record looks like, by its default keys; None when none fits."""
    if isinstance(record, list):
        return "lccc" if all(isinstance(x, str) for x in record) else None
    if not isinstance(record, dict):
        return None
    if "instruction" in record and "output" in record:
        return "alpaca"
    items = record.get("conversations", record.get("messages"))
    if isinstance(items, list) and items and isinstance(items[0], dict):
        return "sharegpt" if "from" in items[0] else "openai" if "role" in items[0] else None
    return "lccc" if isinstance(record.get("dialog"), list) else None


def describe_keys(record: Any) -> str:
    """The keys (or the type) of a raw record, for error messages."""
    if isinstance(record, dict):
        return "keys found: " + (", ".join(map(str, list(record)[:12])) or "none")
    return f"record is {_type_name(record)}"

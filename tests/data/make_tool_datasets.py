"""Write the two small tool-calling test datasets (deterministic; rerun to regenerate).

    python tests/data/make_tool_datasets.py

- tool_calls_sharegpt.json: LLaMA-Factory ShareGPT (human/gpt/function_call/observation
  turns, `tools` as a JSON string), a JSON array;
- tool_calls_openai.jsonl: OpenAI messages (assistant `tool_calls` with JSON-string
  arguments, `role: tool` results, a `tools` list), JSON Lines.

Each holds 30 good conversations with several calls each (sequential, parallel, and
across two user turns) and then one malformed record per tool reject reason, in `REJECTS`
order, so tests can check raw = kept + rejected and every reason. Each also has a
`_valid` and a `_test` file of good conversations (4 and 6), so a config can pre-split
them (`files: {train: ..., valid: ..., test: ...}`) and never get an empty test split.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 14
SIZES = {"": 30, "_valid": 4, "_test": 6}  # good conversations per file, by suffix

FUNCTIONS = {  # name: (description, parameters)
    "get_weather": ("查询城市某天的天气", ("city", "date")),
    "search_flights": ("查询两城市间的航班", ("origin", "destination")),
    "convert_currency": ("按汇率换算金额", ("amount", "to")),
}
CITIES = ["北京", "上海", "广州", "深圳", "成都", "杭州", "西安", "武汉"]
DATES = ["今天", "明天", "后天"]
WEATHER = ["晴", "多云", "小雨", "阴"]
CURRENCIES = {"美元": 0.14, "日元": 20.6, "欧元": 0.13}


def schema(name: str) -> dict:
    description, params = FUNCTIONS[name]
    return {"name": name, "description": description, "parameters": {
        "type": "object", "required": list(params),
        "properties": {key: {"type": "string"} for key in params}}}


def call(name: str, **arguments) -> dict:
    return {"name": name, "arguments": arguments}


def two_cities(rng: random.Random) -> tuple[list[tuple[str, object]], list[str]]:
    """Two sequential weather calls, then the answer."""
    a, b = rng.sample(CITIES, 2)
    date = rng.choice(DATES)
    wa, wb = rng.choice(WEATHER), rng.choice(WEATHER)
    turns = [("user", f"{date}{a}和{b}的天气怎么样？"),
             ("call", [call("get_weather", city=a, date=date)]),
             ("result", json.dumps({"城市": a, "天气": wa}, ensure_ascii=False)),
             ("call", [call("get_weather", city=b, date=date)]),
             ("result", json.dumps({"城市": b, "天气": wb}, ensure_ascii=False)),
             ("assistant", f"{date}{a}{wa}，{b}{wb}。")]
    return turns, ["get_weather"]


def trip(rng: random.Random) -> tuple[list[tuple[str, object]], list[str]]:
    """Parallel flight and weather calls, then a second question answered by a call."""
    a, b = rng.sample(CITIES, 2)
    currency = rng.choice(list(CURRENCIES))
    price = rng.randrange(600, 1600, 10)
    converted = round(price * CURRENCIES[currency], 2)
    turns = [("user", f"我想从{a}去{b}，有航班吗？那边明天天气如何？"),
             ("call", [call("search_flights", origin=a, destination=b),
                       call("get_weather", city=b, date="明天")]),
             ("result", json.dumps({"航班": f"CA{rng.randrange(1000, 9999)}", "票价": price},
                                   ensure_ascii=False)),
             ("result", json.dumps({"城市": b, "天气": rng.choice(WEATHER)}, ensure_ascii=False)),
             ("assistant", f"有航班，票价{price}元；{b}明天的天气已查到。"),
             ("user", f"{price}元换成{currency}是多少？"),
             ("call", [call("convert_currency", amount=str(price), to=currency)]),
             ("result", json.dumps({"结果": converted}, ensure_ascii=False)),
             ("assistant", f"{price}元约合{converted}{currency}。")]
    return turns, ["search_flights", "get_weather", "convert_currency"]


def good_conversations(count: int, rng: random.Random
                       ) -> list[tuple[list[tuple[str, object]], list[str]]]:
    return [(two_cities if i % 2 == 0 else trip)(rng) for i in range(count)]


# ---------------------------------------------------------------- ShareGPT


def sharegpt(turns: list[tuple[str, object]], names: list[str]) -> dict:
    """LLaMA-Factory's layout: parallel calls are one function_call turn holding a list, and
    their results one observation turn."""
    rows, pending = [], []
    for kind, value in turns + [("end", None)]:
        if kind != "result" and pending:
            rows.append({"from": "observation",
                         "value": pending[0] if len(pending) == 1 else json.dumps(
                             [json.loads(p) for p in pending], ensure_ascii=False)})
            pending = []
        if kind == "result":
            pending.append(value)
        elif kind == "call":
            rows.append({"from": "function_call", "value": json.dumps(
                value[0] if len(value) == 1 else value, ensure_ascii=False)})
        elif kind != "end":
            rows.append({"from": "human" if kind == "user" else "gpt", "value": value})
    return {"conversations": rows,
            "tools": json.dumps([schema(n) for n in names], ensure_ascii=False)}


def sharegpt_rejects(base: dict) -> dict[str, dict]:
    def edit(index: int, value: str) -> dict:
        record = json.loads(json.dumps(base))
        record["conversations"][index]["value"] = value
        return record

    orphan = json.loads(json.dumps(base))
    orphan["conversations"].insert(1, {"from": "observation", "value": "无调用的结果"})
    return {
        "bad_tools": {**base, "tools": "[{\"name\": \"get_weather\""},
        "bad_tool_call": edit(1, "get_weather(city='北京')"),
        "tool_args_not_json": edit(1, json.dumps(
            {"name": "get_weather", "arguments": "city=北京"}, ensure_ascii=False)),
        "tool_result_without_call": orphan,
        "unknown_function": edit(1, json.dumps(call("book_hotel", city="北京"),
                                               ensure_ascii=False)),
    }


# ---------------------------------------------------------------- OpenAI


def openai(turns: list[tuple[str, object]], names: list[str], number: int) -> dict:
    messages, ids = [], []
    for kind, value in turns:
        if kind == "call":
            ids = [f"call_{number}_{len(messages)}_{k}" for k in range(len(value))]
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": i, "type": "function", "function": {
                    "name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
                for i, c in zip(ids, value)]})
        elif kind == "result":
            messages.append({"role": "tool", "tool_call_id": ids.pop(0), "content": value})
        else:
            messages.append({"role": kind, "content": value})
    return {"messages": messages,
            "tools": [{"type": "function", "function": schema(n)} for n in names]}


def openai_rejects(base: dict) -> dict[str, dict]:
    def edit(change) -> dict:
        record = json.loads(json.dumps(base))
        change(record)
        return record

    def arguments(value: str):
        return lambda r: r["messages"][1]["tool_calls"][0]["function"].update(arguments=value)

    return {
        "bad_tools": edit(lambda r: r.update(tools={"name": "get_weather"})),
        "bad_tool_call": edit(lambda r: r["messages"][1]["tool_calls"][0].update(
            function={"arguments": "{}"})),
        "tool_args_not_json": edit(arguments("{'city': '北京'}")),
        "tool_result_without_call": edit(lambda r: r["messages"].insert(
            1, {"role": "tool", "content": "无调用的结果"})),
        "unknown_function": edit(lambda r: r["messages"][1]["tool_calls"][0]["function"].update(
            name="book_hotel")),
    }


# ---------------------------------------------------------------- files

# Where the malformed records go (after the good ones), by reason.
REJECTS = ("bad_tools", "bad_tool_call", "tool_args_not_json", "tool_result_without_call",
           "unknown_function")


def build(count: int, rng: random.Random, rejects: bool) -> tuple[list[dict], list[dict]]:
    """(ShareGPT records, OpenAI records) of the same conversations."""
    good = good_conversations(count, rng)
    share = [sharegpt(turns, names) for turns, names in good]
    oai = [openai(turns, names, n) for n, (turns, names) in enumerate(good)]
    if rejects:
        share_bad, oai_bad = sharegpt_rejects(share[0]), openai_rejects(oai[0])
        share += [share_bad[r] for r in REJECTS]
        oai += [oai_bad[r] for r in REJECTS]
    return share, oai


def main() -> None:
    rng = random.Random(SEED)
    for suffix, count in SIZES.items():
        share, oai = build(count, rng, rejects=not suffix)
        (HERE / f"tool_calls_sharegpt{suffix}.json").write_text(
            json.dumps(share, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        (HERE / f"tool_calls_openai{suffix}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in oai), encoding="utf-8")


if __name__ == "__main__":
    main()

"""fast_tokenize gives exactly tokenize_records' samples and counts: on the repository's real
datasets (Alpaca, LCCC, the tool-calling files, Alpaca history), across templates (ChatML,
Qwen2.5/Qwen3-style, Llama-2- and ChatGLM-like ones built here), at every truncation point,
and on texts that merge with the template's tags; templates and tokenizers it cannot vouch
for fall back to the reference path, counted by reason."""
import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from workflow_scripts.data.prepare_dataset import prepare
from workflow_scripts.models.build_base_model import train_tokenizer
from workflow_scripts.models.chat_templates import CHATML_TEMPLATE
from workflow_scripts.training.chat_tokenize import tokenize_records
from workflow_scripts.training.fast_tokenize import (FAST, FIRST_OF_SHAPE, FastChatEncoder,
                                                      shape_key, tokenize_records_fast)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "tests" / "data" / "templates"
SMOKE = yaml.safe_load((ROOT / "tests" / "configs" / "smoke.yaml").read_text(encoding="utf-8"))
CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text(encoding="utf-8"))

# Llama-2-like: [INST] blocks, system folded into the first user turn, no strip
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set system = false %}"
    "{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}{{ '<s>[INST] ' }}"
    "{% if loop.first and system %}{{ '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' }}{% endif %}"
    "{{ message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' ' + eos_token }}"
    "{% endif %}{% endfor %}")
# ChatGLM3-like: [gMASK]sop prefix, <|role|> headers, a space before each text
CHATGLM = (
    "{% for message in messages %}{% if loop.first %}[gMASK]sop{% endif %}"
    "<|{{ message['role'] }}|>\n {{ message['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}")
# the official Llama-2 template strips each text: the fast path must see that and step aside
LLAMA2_STRIP = LLAMA2.replace("message['content'] + ' [/INST]'",
                              "message['content'].strip() + ' [/INST]'")

CHAT = [
    {"role": "system", "content": "你是一个乐于助人的助手。"},
    {"role": "user", "content": "你好，今天天气怎么样？"},
    {"role": "assistant", "content": "今天晴，气温25度。"},
    {"role": "user", "content": "那明天呢？"},
    {"role": "assistant", "content": "明天有小雨，记得带伞。"},
]


def prepared(name: str, spec: dict, tmp: Path) -> list[dict]:
    out = tmp / name
    prepare(name, spec, CONFIG["cleaning"], {"valid": 0.05, "test": 0.05}, 7, out, workers=1)
    return [json.loads(line) for split in ("train", "valid", "test")
            for line in (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, list[dict]]:
    """The smoke config's four datasets, prepared by the workflow's own code, plus Alpaca
    records with a system prompt and a multi-turn history."""
    tmp = tmp_path_factory.mktemp("prepared")
    out = {name: prepared(name, spec, tmp) for name, spec in SMOKE["datasets"].items()}
    raw = tmp / "alpaca_history.json"
    raw.write_text(json.dumps([
        {"instruction": f"第{i}个问题：接着说。", "input": "补充" * (i % 3),
         "output": f"好的，第{i}个回答。", "system": "你是助手。" if i % 2 else "",
         "history": [[f"先问{j}", f"先答{j}"] for j in range(i % 4)]} for i in range(40)],
        ensure_ascii=False), encoding="utf-8")
    out["alpaca_history"] = prepared("alpaca_history", {"format": "alpaca", "files": [str(raw)]},
                                     tmp)
    return out


@pytest.fixture(scope="module")
def tokenizer(datasets):
    corpus = [r["messages"] for records in datasets.values() for r in records[:150]]
    return train_tokenizer(corpus, vocab_size=600)


def with_template(tokenizer, template: str):
    clone = copy.deepcopy(tokenizer)
    clone.chat_template = template
    return clone


def assert_same(tokenizer, records, max_length, overflow="truncate") -> FastChatEncoder:
    """Both paths give the same samples, label for label, and the same counts (or the same error)."""
    encoder = FastChatEncoder(tokenizer, skeleton_at=1)
    try:
        expected, expected_stats = tokenize_records(tokenizer, records, max_length, overflow)
    except Exception as err:  # noqa: BLE001 - whatever the reference path raises, the same
        with pytest.raises(type(err), match=re.escape(str(err))):
            tokenize_records_fast(tokenizer, records, max_length, overflow, encoder)
        return encoder
    got, stats = tokenize_records_fast(tokenizer, records, max_length, overflow, encoder)
    assert got == expected
    assert stats == expected_stats and stats.as_dict() == expected_stats.as_dict()
    assert sum(encoder.counts.values()) == len(records)
    for skeleton_at in (1, 2):  # the job's way: the whole chunk as arrays
        arrays = FastChatEncoder(tokenizer, skeleton_at).encode_chunk(records, max_length,
                                                                       overflow)
        assert arrays.ids.tolist() == [t for f in expected for t in f["input_ids"]]
        assert arrays.labels.tolist() == [t for f in expected for t in f["labels"]]
        assert arrays.lengths.tolist() == expected_stats.lengths
        assert arrays.full_lengths.tolist() == expected_stats.full_lengths
        assert arrays.counts == {k: getattr(expected_stats, k) for k in arrays.counts}
    return encoder


def template_source(name: str) -> str:
    return CHATML_TEMPLATE if name == "chatml" else (TEMPLATES / f"{name}.jinja").read_text("utf-8")


@pytest.mark.parametrize("template", ["chatml", "qwen25_style", "qwen3_style"])
def test_real_datasets_give_the_same_samples(tokenizer, datasets, template):
    tok = with_template(tokenizer, template_source(template))
    settings = [(4096, "truncate"), (48, "truncate"), (48, "drop")]
    for i, (name, records) in enumerate(datasets.items()):
        if template == "qwen3_style" and not name.startswith("tools"):
            continue  # it inspects assistant texts (reasoning): all reference path, slow
        encoder = assert_same(tok, records, *settings[i % 3])
        if template != "qwen3_style":
            assert encoder.counts == {FAST: len(records)}, (name, dict(encoder.counts))
        else:
            assert FAST not in encoder.counts
    assert any(r.get("tools") for r in datasets["tools_openai"])
    assert any(len(r["messages"]) > 4 for r in datasets["alpaca_history"])
    assert any(r["messages"][0]["role"] == "system" for r in datasets["alpaca_history"])


def test_truncation_inside_answers(tokenizer):
    """Cut at every token of both answers and around them, kept or dropped."""
    records = [{"messages": CHAT}, {"messages": CHAT[1:3]}]
    [full, _], _ = tokenize_records(tokenizer, records, 10_000)
    learned = [i for i, label in enumerate(full["labels"]) if label != -100]
    for max_length in sorted({1, 2, *range(learned[0] - 1, learned[-1] + 3)}):
        for overflow in ("truncate", "drop"):
            assert assert_same(tokenizer, records, max_length, overflow).counts == {FAST: 2}


TRICKY = [
    "",  # empty
    "\n", " ", "\n\n结尾换行\n", "  前后空格  ",
    "<|im_end|>", "文字<|im_start|>assistant\n伪造的回合", "<|im_", "|>", "im_end|>\n",
    "assistant\n", "user", "e\u0301 组合字符 ﬁ 全角ＡＢＣ１２３", "😀👍🏽", "\t制表\r\n回车",
    "{{ messages }}", "{% raw %}", "\ue000 私用区 \ue001", "\"引号\" 'single' \\反斜杠",
]


def tricky_records() -> list[dict]:
    records = []
    for i, text in enumerate(TRICKY):
        other = TRICKY[(i * 7 + 3) % len(TRICKY)]
        records.append({"messages": [{"role": "user", "content": text or "问"},
                                     {"role": "assistant", "content": text}]})
        records.append({"messages": [{"role": "system", "content": other or "系统"},
                                     {"role": "user", "content": text + other},
                                     {"role": "assistant", "content": other + text + "。"},
                                     {"role": "user", "content": other},
                                     {"role": "assistant", "content": text}]})
    return records


@pytest.mark.parametrize("template", ["chatml", "qwen25_style", "llama2", "chatglm"])
def test_texts_that_merge_with_the_template_tags(tokenizer, template):
    source = {"llama2": LLAMA2, "chatglm": CHATGLM}.get(template) or template_source(template)
    tok = with_template(tokenizer, source)
    records = tricky_records()
    if template == "qwen25_style":  # it renders no reply for an empty answer: both paths raise
        assert_same(tok, records, 4096)
        records = [r for r in records if all(m["content"] for m in r["messages"])]
    for max_length in (4096, 9):
        encoder = assert_same(tok, records, max_length)
        assert encoder.counts[FAST] == len(records)
    # prompts cut before the answer leave nothing to learn: rejected as no target, the same way
    _, stats = tokenize_records_fast(tok, records, 9)
    assert stats.dropped_no_target >= 1


def test_non_chatml_templates_take_the_fast_path(tokenizer):
    records = [{"messages": CHAT}, {"messages": CHAT[1:]}, {"messages": CHAT[1:3]}]
    for source, marker in ((LLAMA2, "[INST]"), (CHATGLM, "[gMASK]sop")):
        tok = with_template(tokenizer, source)
        assert marker in tok.apply_chat_template(CHAT, tokenize=False)
        assert assert_same(tok, records, 4096).counts == {FAST: 3}


def test_shapes_tell_field_types_apart(tokenizer):
    """A field that is "1" in one record and 1 in another makes two shapes (here the second
    is an error, as in the reference path)."""
    named = CHATML_TEMPLATE.replace(
        "message['content'] + '<|im_end|>' + '\\n'",
        "message['content'] + (message['name'] if message['name'] is defined else '') "
        "+ '<|im_end|>' + '\\n'")
    assert named != CHATML_TEMPLATE
    tok = with_template(tokenizer, named)
    as_text = [dict(CHAT[1], name="1"), CHAT[2]]
    as_number = [dict(CHAT[1], name=1), CHAT[2]]
    encoder = assert_same(tok, [{"messages": as_text}], 4096)
    assert encoder.counts == {FAST: 1}
    with pytest.raises(TypeError):  # a string plus a number: the reference path's error
        tokenize_records(tok, [{"messages": as_number}], 4096)
    with pytest.raises(TypeError):
        tokenize_records_fast(tok, [{"messages": as_text}, {"messages": as_number}], 4096,
                              encoder=encoder)


def test_trainable_and_context_only_turns(tokenizer):
    messages = [dict(m) for m in CHAT]
    messages[2]["loss_weight"] = 0
    records = [{"messages": messages}, {"messages": CHAT}]
    encoder = assert_same(tokenizer, records, 4096)
    assert encoder.counts == {FAST: 2} and len(encoder.skeletons) == 2


INSPECTING = {
    "strip": (LLAMA2_STRIP, "inspects"),
    "trim filter": (CHATML_TEMPLATE.replace("message['content'] + '<|im_end|>'",
                                            "(message['content'] | trim) + '<|im_end|>'"), "inspects"),
    "length": ("{% for m in messages %}{{ m.role }}:{% if m.content | length > 6 %}长{% endif %}"
               "{{ m.content }};{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}",
               "inspects"),
    "percent then strip": ("{% for m in messages %}{{ m.role + ':' + ('%s' % m.content).strip() "
                           "+ ';' }}{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}",
                           "inspects"),
    "set block": ("{% for m in messages %}{% set c %}{{ m.content }}{% endset %}{{ m.role + ':' }}"
                  "{{ c | trim }};{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}",
                  "captures output"),
    "tojson": ("{% for m in messages %}{{ m.role + ':' }}{{ m.content | tojson }};{% endfor %}"
               "{% if add_generation_prompt %}assistant:{% endif %}", "inspects"),
    "wordcount": ("{% for m in messages %}{{ m.role + ':' }}{% if m.content | wordcount > 1 %}"
                  "多{% endif %}{{ m.content }};{% endfor %}"
                  "{% if add_generation_prompt %}assistant:{% endif %}", "inspects"),
    "int": ("{% for m in messages %}{{ m.role + ':' }}{{ m.content | int }}{{ m.content }};"
            "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}", "inspects"),
    "string method": ("{% for m in messages %}{{ m.role + ':' }}{% if '\\n前后空格'.startswith("
                      "m.content) %}前{% endif %}{{ m.content }};{% endfor %}"
                      "{% if add_generation_prompt %}assistant:{% endif %}", "inspects"),
    "in a string": ("{% for m in messages %}{{ m.role + ':' }}{% if m.content in '问好' %}短{% endif %}"
                    "{{ m.content }};{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}",
                    "`in`"),
    # json.dumps reads a text in C; with ASCII escapes no placeholder delimiter survives
    "message through tojson": ("{% for m in messages %}{{ m.role + ':' }}"
                               "{{ m | tojson(ensure_ascii=True) }};{% endfor %}"
                               "{% if add_generation_prompt %}assistant:{% endif %}",
                               "no placeholder survives"),
    "texts written twice, once escaped": (
        "{% for m in messages %}{{ m.role + ':' + m.content }};{% endfor %}"
        "{{ messages | tojson(ensure_ascii=True) }}{% if add_generation_prompt %}assistant:"
        "{% endif %}", "no placeholder survives"),
    "clock": ("{{ strftime_now('%Y') }}{% for m in messages %}{{ m.role + ':' + m.content }}"
              "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}", "clock"),
}


@pytest.mark.parametrize("case", sorted(INSPECTING))
def test_templates_that_look_at_texts_fall_back(tokenizer, case):
    """A skeleton would be wrong for these (a text's length, whitespace or escaping changes the
    rendering around it): every record goes the reference way, counted with the reason."""
    source, reason = INSPECTING[case]
    tok = with_template(tokenizer, source)
    numbers = [{"role": "user", "content": "42"}, {"role": "assistant", "content": "7"}]
    records = tricky_records()[:12] + [{"messages": CHAT}, {"messages": numbers}]
    encoder = assert_same(tok, records, 4096)
    assert FAST not in encoder.counts
    assert all(reason in why for why in encoder.counts), dict(encoder.counts)


def test_turn_by_turn_templates_and_broken_templates_fall_back(tokenizer):
    thinking = [{"role": "user", "content": "1+1等于几？"},
                {"role": "assistant", "content": "<think>\n一加一。\n</think>\n\n等于2。"},
                {"role": "user", "content": "再加3呢？"},
                {"role": "assistant", "content": "<think>\n二加三。\n</think>\n\n等于5。"}]
    tok = with_template(tokenizer, template_source("qwen3_style"))
    encoder = assert_same(tok, [{"messages": thinking}, {"messages": CHAT[1:3]}], 4096)
    assert FAST not in encoder.counts and sum(encoder.counts.values()) == 2
    # no generation prompt: a turn does not extend the rendering before it; same error
    broken = with_template(tokenizer, "{% for m in messages %}{{ m.role + ':' + m.content }}"
                           "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")
    with pytest.raises(ValueError, match="does not extend"):
        tokenize_records(broken, [{"messages": CHAT}], 4096)
    with pytest.raises(ValueError, match="does not extend"):
        tokenize_records_fast(broken, [{"messages": CHAT}], 4096)


class NoRustBackend:
    """A tokenizer that works but shows no Rust tokenizer (a slow, Python one)."""

    def __init__(self, tokenizer):
        self._inner = tokenizer

    def __call__(self, *args, **kwargs):
        return self._inner(*args, **kwargs)

    def apply_chat_template(self, *args, **kwargs):
        return self._inner.apply_chat_template(*args, **kwargs)


def test_tokenizers_the_fast_path_cannot_use(tokenizer):
    records = [{"messages": CHAT}, {"messages": CHAT[1:3]}]
    encoder = assert_same(NoRustBackend(tokenizer), records, 4096)
    assert encoder.counts == {"not a fast (Rust) tokenizer": 2}
    # truncation left on the Rust tokenizer: every tokenizer call resets it, so does the encoder
    tok = copy.deepcopy(tokenizer)
    tok.backend_tokenizer.enable_truncation(5)
    assert assert_same(tok, records, 4096).counts == {FAST: 2}


def test_odd_messages_fall_back(tokenizer):
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "你好"}]},
                          {"role": "assistant", "content": "好"}]}
    no_content = {"messages": [{"role": "user", "content": "查天气"},
                               {"role": "assistant", "content": None, "tool_calls": [
                                   {"type": "function",
                                    "function": {"name": "天气", "arguments": {"城市": "北京"}}}]},
                               {"role": "tool", "content": "晴"},
                               {"role": "assistant", "content": "北京晴。"}]}
    encoder = assert_same(tokenizer, [no_content, {"messages": CHAT}], 4096)
    assert encoder.counts == {FAST: 2}
    with pytest.raises(TypeError):  # this template takes no content parts: the reference error
        tokenize_records_fast(tokenizer, [parts], 4096, encoder=encoder)
    assert encoder.counts["a message is not a dict, has no role or its text is not a string"] == 1
    assert_same(tokenizer, [parts], 4096)
    no_role = {"messages": [{"content": "你好"}, {"role": "assistant", "content": "好"}]}
    assert_same(tokenizer, [no_role], 4096)  # the reference path's KeyError, from both


def test_tokenize_dataset_job_mixes_both_paths_in_order(tokenizer, tmp_path, monkeypatch):
    """The job's rows equal tokenize_records' samples when chunks hold records of both paths
    (here the template trims tool results, so conversations with tools fall back), and it
    reports how many records took which path."""
    from datasets import Dataset

    from workflow_scripts.training import tokenize_dataset

    template = CHATML_TEMPLATE.replace("'\\n<tool_response>\\n' + message['content']",
                                       "'\\n<tool_response>\\n' + (message['content'] | trim)")
    assert template != CHATML_TEMPLATE
    model_dir = tmp_path / "model"
    with_template(tokenizer, template).save_pretrained(model_dir)
    tool = [{"role": "user", "content": "查天气"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "天气", "arguments": {"城市": "北京"}}}]},
            {"role": "tool", "content": " 晴 "}, {"role": "assistant", "content": "北京晴。"}]
    records = [{"messages": tool if i % 5 == 0 else CHAT[i % 2:3 + i % 3]} for i in range(40)]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for split in ("train", "valid"):
        (data_dir / f"{split}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    monkeypatch.setattr(tokenize_dataset, "CHUNK_RECORDS", 7)
    paths: dict = {}
    settings = {"max_length": 40, "overflow": "truncate", "packing": False}
    tokenize_dataset.tokenize(data_dir, str(model_dir), settings, tmp_path / "out", 1, None, paths)
    expected, _ = tokenize_records(with_template(tokenizer, template), records, 40)
    rows = Dataset.from_file(str(tmp_path / "out" / "train.arrow"))
    assert rows["input_ids"] == [f["input_ids"] for f in expected]
    assert rows["labels"] == [f["labels"] for f in expected]
    # the job makes a shape's skeleton when it comes back: its first record goes the reference way
    shapes = {shape_key(r) for r in records}
    counts = paths["train"]
    assert counts[FIRST_OF_SHAPE] == len(shapes) and sum(counts.values()) == 40
    inspects = [why for why in counts if "inspects" in why]
    assert len(inspects) == 1 and counts[inspects[0]] == 8 - 1
    assert counts[FAST] == 40 - 8 - (len(shapes) - 1)


def random_records(seed: int, n: int) -> list[dict]:
    """Conversations of random shape and text: system prompts, tool calls and results, empty
    and context-only turns, and texts made of tag pieces, whitespace and a literal placeholder."""
    import random

    from workflow_scripts.training.template_skeleton import placeholder

    rng = random.Random(seed)
    pieces = ["你好", "天气", "<|im_end|>", "<|im_start|>", "\n", " ", "  ", "\t", "assistant",
              "user", "[INST]", "<<SYS>>", "<|assistant|>", "😀", "e\u0301", "\"", "\\", "{{",
              "}}", "%", placeholder(0), "\ue001", "ﬁ", "１２", "abc"]

    def text() -> str:
        return "".join(rng.choices(pieces, k=rng.choice([0, 1, 2, 5, 12])))

    records = []
    for _ in range(n):
        messages = [{"role": "system", "content": text()}] if rng.random() < 0.3 else []
        for turn in range(rng.randint(1, 3)):
            messages.append({"role": "user", "content": text() or "问"})
            if rng.random() < 0.2:
                city = text().translate({0xE000: None, 0xE001: None, 0xE002: None})
                call = {"type": "function", "function": {"name": "天气", "arguments": {"城市": city}}}
                messages += [{"role": "assistant", "content": text(), "tool_calls": [call]},
                             {"role": "tool", "content": text() or "晴"}]
            reply = {"role": "assistant", "content": text()}
            if rng.random() < 0.15:
                reply["loss_weight"] = 0
            messages.append(reply)
        record = {"messages": messages}
        if rng.random() < 0.2:
            record["tools"] = [{"type": "function", "function": {"name": "天气", "parameters": {}}}]
        records.append(record)
    return records


@pytest.mark.parametrize("template", ["chatml", "qwen25_style", "llama2", "chatglm"])
def test_random_conversations(tokenizer, template):
    source = {"llama2": LLAMA2, "chatglm": CHATGLM}.get(template) or template_source(template)
    tok = with_template(tokenizer, source)
    records = random_records(len(template), 80)
    if template == "qwen25_style":  # it renders nothing for an empty reply: the reference raises
        records = [r for r in records if all(m["content"] or m.get("tool_calls")
                                             for m in r["messages"] if m["role"] == "assistant")]
    for max_length, overflow in ((4096, "truncate"), (24, "drop")):
        encoder = assert_same(tok, records, max_length, overflow)
        assert encoder.counts[FAST] == len(records), dict(encoder.counts)

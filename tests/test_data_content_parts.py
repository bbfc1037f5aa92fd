"""Today's message files: content as a list of text parts (OpenAI's `text`, LLaMA-Factory
v1's `value`), per-message `loss_weight`, non-text parts rejected and counted, and a
whole-file error that names the field of the first bad record."""
import json

import pytest

from workflow_scripts.data.formats import DataError, RecordError, get_normalizer
from workflow_scripts.data.prepare_dataset import prepare
from workflow_scripts.models.build_base_model import train_tokenizer
from workflow_scripts.training.chat_tokenize import IGNORE_INDEX, encode_turns

# LLaMA-Factory v1's demo shape: parts carry `value`, every message has a loss_weight.
V1_RECORD = {"messages": [
    {"role": "system", "content": [{"type": "text", "value": "你是助手。"}], "loss_weight": 0.0},
    {"role": "user", "content": [{"type": "text", "value": "你好"}], "loss_weight": 0.0},
    {"role": "assistant", "content": [{"type": "text", "value": "你好！有什么事？"}],
     "loss_weight": 0.0},
    {"role": "user", "content": [{"type": "text", "value": "讲个"}, {"type": "text",
                                                                     "value": "笑话"}],
     "loss_weight": 0.0},
    {"role": "assistant", "content": [{"type": "text", "value": "从前有座山。"}],
     "loss_weight": 1.0},
]}
OPENAI_PARTS = {"messages": [
    {"role": "user", "content": [{"type": "text", "text": "第一段，"},
                                 {"type": "text", "text": "第二段。"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "收到两段。"}]},
]}
IMAGE_RECORD = {"messages": [
    {"role": "user", "content": [{"type": "text", "text": "这是什么？"},
                                 {"type": "image_url", "image_url": {"url": "x.png"}}]},
    {"role": "assistant", "content": "一只猫。"},
]}


def test_openai_text_parts_are_joined_in_order():
    messages = get_normalizer("openai")(OPENAI_PARTS).messages
    assert messages == [{"role": "user", "content": "第一段，第二段。"},
                        {"role": "assistant", "content": "收到两段。"}]


def test_llamafactory_v1_record_marks_unweighted_assistant_turns():
    conversation = get_normalizer("openai")(V1_RECORD)
    assert conversation.weighted
    assert conversation.messages == [
        {"role": "system", "content": "你是助手。"},
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！有什么事？", "loss_weight": 0},
        {"role": "user", "content": "讲个笑话"},
        {"role": "assistant", "content": "从前有座山。"},
    ]


def test_sharegpt_value_parts_and_loss_weight():
    record = {"conversations": [
        {"from": "human", "value": [{"type": "text", "value": "问"}]},
        {"from": "gpt", "value": [{"type": "text", "text": "答一"}], "loss_weight": 0},
        {"from": "human", "value": "再问"},
        {"from": "gpt", "value": "答二", "loss_weight": 1}]}
    messages = get_normalizer("sharegpt")(record).messages
    assert [m.get("loss_weight") for m in messages] == [None, 0, None, None]
    assert [m["content"] for m in messages] == ["问", "答一", "再问", "答二"]


@pytest.mark.parametrize("record, reason, where", [
    (IMAGE_RECORD, "non_text_content", "messages[0].content[1]: a part of type 'image_url'"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]},
                   {"role": "assistant", "content": "嗯"}]},
     "non_text_content", "'input_audio'"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]},
                   {"role": "assistant", "content": "嗯"}]},
     "wrong_type", "messages[0].content[0]: a text part needs a string"),
    ({"messages": [{"role": "user", "content": "问"},
                   {"role": "assistant", "content": "答", "loss_weight": 0.5}]},
     "wrong_type", "messages[1].loss_weight: expected 0 or 1, got 0.5"),
])
def test_bad_parts_and_weights_are_rejected_with_a_reason(record, reason, where):
    with pytest.raises(RecordError) as err:
        get_normalizer("openai")(record)
    assert err.value.reason == reason and where in err.value.detail


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                    encoding="utf-8")


def test_prepare_keeps_parts_counts_non_text_and_writes_weights(tmp_path):
    good = [json.loads(json.dumps(V1_RECORD, ensure_ascii=False).replace("从前有座山", f"从前有座山{n}"))
            for n in range(20)]
    source = tmp_path / "mine.jsonl"
    write_jsonl(source, good + [OPENAI_PARTS, IMAGE_RECORD])
    stats = prepare("mine", {"files": [str(source)], "format": "openai"}, {},
                    {"valid": 0, "test": 0}, 42, tmp_path / "out")
    assert stats["kept"] == 21 and stats["rejected"]["non_text_content"] == 1
    rejects = [json.loads(line) for line in (tmp_path / "out/rejects.jsonl").open()]
    assert [(r["index"], r["reason"]) for r in rejects] == [(21, "non_text_content")]
    assert "image_url" in rejects[0]["detail"]
    kept = [json.loads(line) for line in (tmp_path / "out/train.jsonl").open()]
    weights = [[m.get("loss_weight") for m in r["messages"]] for r in kept]
    assert weights.count([None, None, 0, None, None]) == 20
    assert weights.count([None, None]) == 1


def test_loss_weight_zero_is_masked_token_by_token():
    messages = get_normalizer("openai")(V1_RECORD).messages
    unmasked = [{k: v for k, v in m.items() if k != "loss_weight"} for m in messages]
    tokenizer = train_tokenizer([unmasked] * 4, vocab_size=400)
    [masked] = encode_turns(tokenizer, messages)
    [full] = encode_turns(tokenizer, unmasked)
    assert masked["input_ids"] == full["input_ids"]  # the same text: the turn stays context
    first_reply = tokenizer.decode([t for t, label in zip(full["input_ids"], full["labels"])
                                    if label != IGNORE_INDEX])
    assert first_reply.startswith("你好！有什么事？<|im_end|>")
    changed = [i for i, (a, b) in enumerate(zip(masked["labels"], full["labels"])) if a != b]
    # exactly the first reply's tokens lost their labels, and nothing else changed
    assert changed and all(masked["labels"][i] == IGNORE_INDEX for i in changed)
    assert tokenizer.decode([full["input_ids"][i] for i in changed]) == "你好！有什么事？<|im_end|>\n"
    kept = [t for t, label in zip(masked["input_ids"], masked["labels"]) if label != IGNORE_INDEX]
    assert tokenizer.decode(kept) == "从前有座山。<|im_end|>\n"


def test_whole_file_error_names_the_failing_field(tmp_path):
    source = tmp_path / "wrong.jsonl"
    write_jsonl(source, [{"messages": [{"role": "user", "content": {"text": "问"}},
                                       {"role": "assistant", "content": "答"}]}] * 3)
    with pytest.raises(DataError) as err:
        prepare("wrong", {"files": [str(source)], "format": "openai"}, {}, {}, 42,
                tmp_path / "out")
    message = str(err.value)
    assert "first bad record (index 0): messages[0].content: expected a string, got an " \
           "object" in message
    assert "keys found: messages" in message

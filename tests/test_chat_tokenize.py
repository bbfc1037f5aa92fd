"""Assistant-only labels, checked token by token on a multi-turn conversation."""
import pytest

from workflow_scripts.build_base_model import train_tokenizer
from workflow_scripts.chat_tokenize import IGNORE_INDEX, encode_conversation, tokenize_records

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

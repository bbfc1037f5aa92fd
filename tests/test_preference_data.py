"""Preference datasets through the data stage: every format read into the same normalized
record, cleaned with reasons, split by prompt, written as {split}.pairs.jsonl beside the chat
view of the chosen answers; LLaMA-Factory's own demo files; pairs built from a chat dataset."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from workflow_runner import SMOKE_CONFIG, make_workflow

from workflow_scripts.common.config import CHAT_FORMATS, ConfigError, validate
from workflow_scripts.data.formats import FORMATS, DataError, RecordError
from workflow_scripts.data.pairs_from import PairsReader
from workflow_scripts.data.preference_cleaning import PREFERENCE_REASONS
from workflow_scripts.data.preference_formats import Preference, get_normalizer
from workflow_scripts.data.prepare_dataset import prepare

ROOT = Path(__file__).resolve().parent.parent
LF = ROOT / "tests" / "data" / "llamafactory"
SMALL = ROOT / "tests" / "data" / "pref_sharegpt_small.json"
NO_SPLIT = {"valid": 0, "test": 0}
USER = {"role": "user", "content": "天空是什么颜色？"}
BLUE, RED = "天空是蓝色的。", "天空是红色的。"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return str(path)


def run(tmp_path: Path, fmt: str, rows: list, split: dict = NO_SPLIT, **spec) -> dict:
    files = [write_jsonl(tmp_path / "in.jsonl", rows)]
    return prepare("pref", {"format": fmt, "files": files, **spec}, {}, split, 42,
                   tmp_path / "out")


def outputs(out: Path, suffix: str = ".pairs") -> dict[str, list[dict]]:
    return {split: read_jsonl(out / f"{split}{suffix}.jsonl")
            for split in ("train", "valid", "test")}


def assert_invariant(stats: dict, out: Path) -> None:
    """raw = kept + rejected, in total, per file and in the files; every raw record once."""
    assert stats["raw"] == stats["kept"] + sum(stats["rejected"].values())
    for counts in stats["per_file"].values():
        assert counts["raw"] == counts["kept"] + counts["rejected"]
    pairs = outputs(out)
    assert {split: len(rows) for split, rows in pairs.items()} == stats["splits"]
    rejects = read_jsonl(out / "rejects.jsonl")
    assert len(rejects) == sum(stats["rejected"].values())
    assert all(r["reason"] in PREFERENCE_REASONS and r["detail"] for r in rejects)
    places = [(r["source"]["file"], r["source"]["index"]) for rows in pairs.values() for r in rows]
    places += [(r["file"], r["index"]) for r in rejects]
    assert len(set(places)) == len(places) == stats["raw"]


# ---------------------------------------------------------------- formats

EXPECTED = Preference([USER], BLUE, RED)
SYSTEM = {"role": "system", "content": "你是助手。"}
HISTORY = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]


def parts(text: str) -> list[dict]:
    return [{"type": "text", "text": text[:2]}, {"type": "text", "value": text[2:]}]


FORMAT_CASES = {
    "alpaca_pairwise": ({"instruction": "天空是什么颜色？", "chosen": BLUE, "rejected": RED},
                        EXPECTED),
    "alpaca_pairwise with input, system, history": (
        {"instruction": "回答问题", "input": "天空是什么颜色？", "system": "你是助手。",
         "history": [["你好", "你好！"]], "chosen": BLUE, "rejected": RED},
        Preference([SYSTEM, *HISTORY, {"role": "user", "content": "回答问题\n天空是什么颜色？"}],
                   BLUE, RED, has_input=True)),
    "sharegpt_pairwise": (
        {"conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "你好！"},
                           {"from": "human", "value": "天空是什么颜色？"}],
         "chosen": {"from": "gpt", "value": BLUE}, "rejected": {"from": "gpt", "value": RED},
         "system": "你是助手。"},
        Preference([SYSTEM, *HISTORY, USER], BLUE, RED)),
    "openai_pairwise": (
        {"chosen_messages": [{"role": "system", "content": parts("你是助手。"), "loss_weight": 0.0},
                             {"role": "user", "content": parts(USER["content"]),
                              "loss_weight": 0.0},
                             {"role": "assistant", "content": parts(BLUE), "loss_weight": 1.0}],
         "rejected_messages": [{"role": "system", "content": "你是助手。"}, USER,
                               {"role": "assistant", "content": RED}],
         "loss_weight": 2},
        Preference([SYSTEM, USER], BLUE, RED, loss_weight=2.0)),
    "trl_preference": ({"prompt": USER["content"], "chosen": BLUE, "rejected": RED}, EXPECTED),
    "trl_preference with message lists": (
        {"prompt": [SYSTEM, USER], "chosen": [{"role": "assistant", "content": BLUE}],
         "rejected": [{"role": "assistant", "content": RED}]},
        Preference([SYSTEM, USER], BLUE, RED)),
    "trl_preference with an implicit prompt": (
        {"chosen": [*HISTORY, USER, {"role": "assistant", "content": BLUE}],
         "rejected": [*HISTORY, USER, {"role": "assistant", "content": RED}]},
        Preference([*HISTORY, USER], BLUE, RED)),
    "swift_preference": (
        {"messages": [SYSTEM, USER, {"role": "assistant", "content": BLUE}],
         "rejected_response": RED},
        Preference([SYSTEM, USER], BLUE, RED)),
    "kto": ({"messages": [USER, {"role": "assistant", "content": RED}], "label": False},
            Preference([USER], RED, label=False)),
    "kto with kto_tag": ({"messages": [USER, {"role": "assistant", "content": BLUE}],
                          "kto_tag": True}, Preference([USER], BLUE, label=True)),
    "kto in TRL's shape": ({"prompt": [USER], "completion": [{"role": "assistant",
                                                              "content": BLUE}], "label": True},
                           Preference([USER], BLUE, label=True)),
}


@pytest.mark.parametrize("case", FORMAT_CASES)
def test_each_format_reads_into_the_normalized_record(case):
    raw, expected = FORMAT_CASES[case]
    assert get_normalizer(case.split()[0])(raw) == expected


def test_kto_with_sharegpt_tags_through_columns():
    normalize = get_normalizer("kto", {"messages": "conversations", "role_tag": "from",
                                       "content_tag": "value"})
    raw = {"conversations": [{"from": "human", "value": USER["content"]},
                             {"from": "gpt", "value": BLUE}], "kto_tag": True}
    assert normalize(raw) == Preference([USER], BLUE, label=True)


def test_pair_records_and_their_chat_view_in_the_written_files(tmp_path):
    raw, _ = FORMAT_CASES["sharegpt_pairwise"]
    stats = run(tmp_path, "sharegpt_pairwise", [raw])
    [pair] = outputs(tmp_path / "out")["train"]
    assert set(pair) == {"id", "messages", "chosen", "rejected", "source"}
    assert pair["messages"] == [SYSTEM, *HISTORY, USER]
    assert (pair["chosen"], pair["rejected"]) == (BLUE, RED)
    assert pair["source"] == {"file": str(tmp_path / "in.jsonl"), "index": 0}
    [chat] = read_jsonl(tmp_path / "out/train.jsonl")  # the chosen answer learned, as SFT
    assert set(chat) == {"id", "messages", "source"} and chat["source"] == pair["source"]
    assert chat["messages"] == [SYSTEM, HISTORY[0], {**HISTORY[1], "loss_weight": 0}, USER,
                                {"role": "assistant", "content": BLUE}]
    assert stats["preference"]["sft_records"] == {"train": 1, "valid": 0, "test": 0}
    assert stats["lengths"]["response_chars"]["max"] == len(BLUE)


def test_loss_weight_is_written_when_given(tmp_path):
    raw, _ = FORMAT_CASES["openai_pairwise"]
    stats = run(tmp_path, "openai_pairwise", [raw])
    [pair] = outputs(tmp_path / "out")["train"]
    assert pair["loss_weight"] == 2.0 and stats["preference"]["with_loss_weight"] == 1


def test_kto_writes_completions_and_only_desirable_ones_as_chat(tmp_path):
    rows = [{"messages": [USER, {"role": "assistant", "content": BLUE}], "label": True},
            {"messages": [USER, {"role": "assistant", "content": "哈哈哈"}], "label": False}]
    stats = run(tmp_path, "kto", rows)
    kept = outputs(tmp_path / "out")["train"]
    assert [(r["completion"], r["label"]) for r in kept] == [(BLUE, True), ("哈哈哈", False)]
    assert all(set(r) == {"id", "messages", "completion", "label", "source"} for r in kept)
    [chat] = read_jsonl(tmp_path / "out/train.jsonl")
    assert chat["messages"][-1] == {"role": "assistant", "content": BLUE}
    assert stats["preference"] == {"kind": "unpaired", "labels": {"desirable": 1, "undesirable": 1},
                                   "sft_records": {"train": 1, "valid": 0, "test": 0}}


# ---------------------------------------------------------------- reject reasons


def pair(prompt: str = "天空是什么颜色？", chosen: str = BLUE, rejected: str = RED) -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def conversation(answer: str, prompt: str = "天空是什么颜色？") -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


REJECTED = {  # reason -> a TRL record rejected for it (one reason each)
    "missing_field": {"prompt": "天空？", "chosen": BLUE},
    "wrong_type": pair(chosen=3),
    "bad_turns": {"prompt": [{"role": "assistant", "content": "先说一句"}], "chosen": BLUE,
                  "rejected": RED},
    "non_text_content": {"prompt": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x.png"}}]}], "chosen": BLUE, "rejected": RED},
    "prompt_mismatch": {"chosen": conversation(BLUE),
                        "rejected": conversation(RED, "海是什么颜色？")},
    "empty_prompt": pair(prompt=" "),
    "empty_response": {"prompt": [{"role": "user", "content": "你好"},
                                  {"role": "assistant", "content": ""}, USER],
                       "chosen": BLUE, "rejected": RED},
    "empty_answer": pair(rejected="  "),
    "identical_answers": pair(chosen="天空是蓝色的！", rejected="天空是蓝色的!"),
    "too_short_response": pair(chosen="蓝"),
    "too_long": pair(rejected="红" * 300),
    "repeated_char": pair(chosen="蓝蓝蓝蓝"),
    "low_cjk_share": pair(prompt="What colour is the sky?", chosen="It is blue.",
                          rejected="It is red."),
    "duplicate_pair": pair(),
}


def test_every_reason_rejects_its_record_and_nothing_else(tmp_path):
    rows = [pair()] + list(REJECTED.values())
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    cleaning = {"max_chars": 300, "min_cjk_share": 0.3, "min_response_chars": 2}
    stats = prepare("pref", {"format": "trl_preference", "files": [path]}, cleaning, NO_SPLIT,
                    42, tmp_path / "out")
    assert_invariant(stats, tmp_path / "out")
    rejects = read_jsonl(tmp_path / "out/rejects.jsonl")
    assert [r["reason"] for r in rejects] == list(REJECTED)
    assert [r["index"] for r in rejects] == list(range(1, len(rows)))
    assert stats["kept"] == 1 and {r for r, n in stats["rejected"].items() if n} == set(REJECTED)
    details = {r["reason"]: r["detail"] for r in rejects}
    assert details["missing_field"] == "rejected: missing"
    assert details["wrong_type"] == "chosen: expected a message object or a string, got a number"
    assert "after NFKC" in details["identical_answers"]
    assert details["duplicate_pair"] == f"same prompt and answers as {path} record 0"
    assert "prompts differ from message 0" in details["prompt_mismatch"]


def test_prompt_mismatch_in_openai_pairwise_and_a_rejected_answer_is_not_held_to_quality(
        tmp_path):
    rows = [{"chosen_messages": conversation(BLUE), "rejected_messages": conversation(
        RED, "海是什么颜色？")},
            {"chosen_messages": [SYSTEM, *conversation(BLUE)],
             "rejected_messages": conversation(RED)},
            {"chosen_messages": conversation(BLUE), "rejected_messages": conversation("红")}]
    stats = run(tmp_path, "openai_pairwise", rows)
    assert [r["detail"] for r in read_jsonl(tmp_path / "out/rejects.jsonl")] == [
        "chosen_messages and rejected_messages: the prompts differ from message 0 on "
        "(1 and 1 messages before the answers)",
        "chosen_messages and rejected_messages: the system messages differ"]
    assert stats["kept"] == 1  # a one-character rejected answer is a fine bad answer


def test_too_long_counts_the_prompt_and_the_longer_answer(tmp_path):
    prompt = "问" * 50
    rows = [pair(prompt, "回答" * 15, "错" * 20), pair(prompt, "回答" * 15, "错" * 31)]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    stats = prepare("pref", {"format": "trl_preference", "files": [path]}, {"max_chars": 80},
                    NO_SPLIT, 42, tmp_path / "out")
    [reject] = read_jsonl(tmp_path / "out/rejects.jsonl")
    assert reject["index"] == 1 and reject["detail"].startswith("81 > 80")
    assert stats["kept"] == 1


def test_a_bad_record_names_file_record_and_field(tmp_path):
    answers = {"chosen": {"from": "gpt", "value": BLUE}, "rejected": {"from": "gpt", "value": RED}}
    rows = [{"conversations": [{"from": "human", "value": "你好"}], **answers},
            {"conversations": "不是列表", **answers}]
    run(tmp_path, "sharegpt_pairwise", rows)
    [reject] = read_jsonl(tmp_path / "out/rejects.jsonl")
    assert (reject["file"], reject["index"], reject["reason"]) == (
        str(tmp_path / "in.jsonl"), 1, "wrong_type")
    assert reject["detail"] == "conversations: expected an array, got a string"


def test_a_file_of_another_format_is_refused_naming_file_record_and_field(tmp_path):
    rows = [pair() for _ in range(5)]
    with pytest.raises(DataError) as err:
        run(tmp_path, "sharegpt_pairwise", rows)
    assert str(err.value) == (
        f"{tmp_path / 'in.jsonl'}: 5 of 5 records are not valid sharegpt_pairwise records: "
        "this looks like TRL preference, not ShareGPT pairwise; first bad record (index 0): "
        "conversations: missing (keys found: prompt, chosen, rejected)")
    assert not (tmp_path / "out/train.pairs.jsonl").exists()  # nothing half written


@pytest.mark.parametrize("raw, reason, detail", [
    ({"chosen_messages": conversation(BLUE)[:1], "rejected_messages": conversation(RED)},
     "bad_turns", "chosen_messages: must end with the assistant's answer, not with user"),
    ({"chosen_messages": [USER, {"role": "assistant", "content": BLUE, "loss_weight": 0}],
      "rejected_messages": conversation(RED)}, "empty_answer",
     "chosen_messages[1]: loss_weight 0 leaves the answer out of the loss"),
    ({"chosen_messages": conversation(BLUE), "rejected_messages": conversation(RED),
      "loss_weight": -1}, "wrong_type", "loss_weight: expected a number >= 0, got -1"),
])
def test_openai_pairwise_record_errors(raw, reason, detail):
    with pytest.raises(RecordError) as err:
        get_normalizer("openai_pairwise")(raw)
    assert (err.value.reason, err.value.detail) == (reason, detail)


@pytest.mark.parametrize("raw, detail", [
    ({"messages": conversation(BLUE)}, "label: missing (or kto_tag)"),
    ({"messages": conversation(BLUE), "label": "yes"}, "label: expected true or false, got 'yes'"),
    ({"messages": conversation(BLUE), "label": True, "kto_tag": False},
     "label and kto_tag disagree"),
])
def test_kto_label_errors(raw, detail):
    with pytest.raises(RecordError) as err:
        get_normalizer("kto")(raw)
    assert err.value.detail == detail


# ---------------------------------------------------------------- splits


def test_every_pair_of_one_prompt_lands_in_one_split(tmp_path):
    rows = [pair(f"第{p}个问题是什么？", f"第{p}个好回答{k}", f"第{p}个坏回答{k}")
            for p in range(60) for k in range(3)]
    stats = run(tmp_path, "trl_preference", rows, split={"valid": 0.3, "test": 0.3})
    assert_invariant(stats, tmp_path / "out")
    side = {}
    for split, rows_ in outputs(tmp_path / "out").items():
        for row in rows_:
            assert side.setdefault(row["messages"][-1]["content"], split) == split
    assert len(side) == 60 and all(stats["splits"].values())
    chat = outputs(tmp_path / "out", suffix="")
    assert {s: len(r) for s, r in chat.items()} == stats["splits"]  # distinct answers each
    for split, rows_ in chat.items():
        assert all(side[r["messages"][-2]["content"]] == split for r in rows_)


def test_the_chat_view_holds_each_prompt_and_chosen_answer_once(tmp_path):
    rows = [pair(chosen=BLUE, rejected=f"天空是{c}色的。") for c in "红黄绿"]
    stats = run(tmp_path, "trl_preference", rows)
    assert stats["kept"] == 3 and stats["preference"]["sft_records"]["train"] == 1
    assert len(read_jsonl(tmp_path / "out/train.jsonl")) == 1


def test_presplit_files_are_kept_as_given(tmp_path):
    files = {split: write_jsonl(tmp_path / f"{split}.jsonl", [pair(f"{split}的问题{i}")
                                                             for i in range(3)])
             for split in ("train", "valid", "test")}
    stats = prepare("pref", {"format": "trl_preference", "files": files}, {}, {}, 42,
                    tmp_path / "out")
    for split, rows in outputs(tmp_path / "out").items():
        assert {r["source"]["file"] for r in rows} == {files[split]} and len(rows) == 3
    assert stats["per_file"][files["test"]]["split"] == "test"


# ---------------------------------------------------------------- LLaMA-Factory's demo files


@pytest.mark.parametrize("name, fmt, kept, rejected", [
    ("dpo_zh_demo.json", "sharegpt_pairwise", 289, {"duplicate_pair": 11}),
    ("v1_dpo_demo.jsonl", "openai_pairwise", 10, {}),
])
def test_llamafactory_demo_files_are_kept_or_rejected_with_a_reason(tmp_path, name, fmt, kept,
                                                                    rejected):
    path = str(LF / name)
    stats = prepare("demo", {"format": fmt, "files": [path]}, {}, {"valid": 0.1, "test": 0.1},
                    42, tmp_path)
    assert_invariant(stats, tmp_path)
    assert stats["kept"] == kept and {r: n for r, n in stats["rejected"].items() if n} == rejected
    every = [r for rows in outputs(tmp_path).values() for r in rows]
    assert all(r["messages"][-1]["role"] == "user" and r["chosen"] and r["rejected"]
               and r["chosen"] != r["rejected"] for r in every)
    assert stats["preference"]["sft_records"] == stats["splits"]  # one pair per prompt


def test_the_small_smoke_file_keeps_every_pair(tmp_path):
    stats = prepare("pref", {"format": "sharegpt_pairwise", "files": [str(SMALL)]}, {},
                    {"valid": 0.05, "test": 0.05}, 7, tmp_path)
    assert stats["raw"] == stats["kept"] == 40


# ---------------------------------------------------------------- pairs_from


def chat_split(path: Path, answers: list[str]) -> str:
    rows = [{"id": f"{n:016x}", "messages": conversation(answer, f"问题{n}"),
             "source": {"file": "raw.json", "index": n}} for n, answer in enumerate(answers)]
    return write_jsonl(path, rows)


def test_pairs_from_never_pairs_an_answer_with_itself_or_an_identical_one(tmp_path):
    answers = ["同一个回答"] * 30 + ["同一个回答 "] * 5 + [f"不同的回答{n}" for n in range(5)]
    reader = PairsReader(chat_split(tmp_path / "train.jsonl", answers), seed=3)
    pairs = [reader.pair(n) for n in range(len(answers))]
    for n, made in enumerate(pairs):
        assert made["rejected_from"] != n
        assert made["rejected"].strip() != made["chosen"].strip()
        assert made["rejected"] == answers[made["rejected_from"]]
    reader.close()


def test_pairs_from_is_deterministic_and_keeps_the_source_splits(tmp_path):
    files = {split: chat_split(tmp_path / f"{split}.jsonl",
                               [f"{split}的第{n}个回答" for n in range(count)])
             for split, count in (("train", 20), ("valid", 4), ("test", 1))}
    spec = {"format": "pairs_from", "source": "chat", "files": files}
    first = prepare("pairs", spec, {}, {}, 42, tmp_path / "a")
    prepare("pairs", spec, {}, {}, 42, tmp_path / "b")
    for name in ("train.pairs.jsonl", "valid.pairs.jsonl", "rejects.jsonl", "train.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert_invariant(first, tmp_path / "a")
    for split, rows in outputs(tmp_path / "a").items():
        assert all(r["chosen"].startswith(split) and r["rejected"].startswith(split)
                   for r in rows)
    # a one-record split has no other answer: rejected, with the reason
    assert [r["reason"] for r in read_jsonl(tmp_path / "a/rejects.jsonl")] == [
        "identical_answers"]
    other = prepare("pairs", spec, {}, {}, 43, tmp_path / "c")  # another seed, other pairs
    assert other["kept"] == first["kept"] == 24
    assert (tmp_path / "c/train.pairs.jsonl").read_bytes() != (
        tmp_path / "a/train.pairs.jsonl").read_bytes()


def test_config_accepts_pairs_from_a_chat_dataset_only():
    config = yaml.safe_load(SMOKE_CONFIG.read_text(encoding="utf-8"))
    config["datasets"]["pairs"] = {"format": "pairs_from", "source": "alpaca_zh"}
    assert validate(config)["datasets"]["pairs"]["rejected"] == "other_answer"
    config["datasets"]["prefs"] = {"format": "kto", "files": [str(SMALL)]}
    config["datasets"]["pairs"]["source"] = "prefs"
    with pytest.raises(ConfigError, match=r"datasets\.pairs\.source: kto dataset 'prefs'; "
                                          r"pairs are built from a chat dataset"):
        validate(config)
    config["datasets"]["pairs"] = {"format": "pairs_from", "source": "alpaca_zh",
                                   "files": ["x.json"]}
    with pytest.raises(ConfigError, match=r"unknown key datasets\.pairs\.files"):
        validate(config)
    assert tuple(CHAT_FORMATS) == FORMATS


def test_pairs_from_rule_reads_the_source_prepared_splits(tmp_path):
    workflow = make_workflow(tmp_path)
    config = yaml.safe_load(SMOKE_CONFIG.read_text(encoding="utf-8"))
    config["datasets"]["alpaca_pairs"] = {"format": "pairs_from", "source": "alpaca_zh"}
    config["datasets"]["small_pairs"] = {"format": "sharegpt_pairwise",
                                         "files": ["tests/data/pref_sharegpt_small.json"]}
    workflow.config.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    targets = ["results/data/alpaca_pairs/test.pairs.jsonl",
               "results/data/small_pairs/train.pairs.jsonl"]
    assert workflow.planned_jobs(*targets) == {"prepare_dataset": 1, "prepare_pairs": 2}
    workflow.run("--cores", "2", *targets)
    stats = json.loads((workflow.workdir / "results/data/alpaca_pairs/stats.json").read_text())
    source = json.loads((workflow.workdir / "results/data/alpaca_zh/stats.json").read_text())
    assert stats["splits"] == source["splits"] and stats["kept"] == source["kept"]
    assert set(stats["files"]) == {f"results/data/alpaca_zh/{s}.jsonl"
                                   for s in ("train", "valid", "test")}
    data = workflow.workdir / "results/data"
    for split in ("train", "valid", "test"):  # the chat view is the source's split again
        assert ({r["id"] for r in read_jsonl(data / f"alpaca_pairs/{split}.jsonl")}
                == {r["id"] for r in read_jsonl(data / f"alpaca_zh/{split}.jsonl")})


def test_spans_and_worker_processes_give_the_same_files(tmp_path, monkeypatch):
    from workflow_scripts.data import prepare_dataset
    spec = {"format": "sharegpt_pairwise", "files": [str(LF / "dpo_zh_demo.json")]}
    split = {"valid": 0.1, "test": 0.1}
    prepare("demo", spec, {}, split, 42, tmp_path / "one", workers=1)
    monkeypatch.setattr(prepare_dataset, "SPAN_CHARS", 20_000)  # about 40 spans
    prepare("demo", spec, {}, split, 42, tmp_path / "two", workers=2)
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert "train.pairs.jsonl" in names
    for name in names:
        if name != "run_info.json":
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()

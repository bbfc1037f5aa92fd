"""The data stage end to end: the five output files, the invariant, and clear errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow_scripts.data.formats import DataError
from workflow_scripts.data.prepare_dataset import main, prepare

ROOT = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text(encoding="utf-8"))
CLEANING = {"min_prompt_chars": 1, "min_response_chars": 2, "max_chars": 4096, "dedupe": True,
            "min_cjk_share": 0.0}
SPLIT = {"valid": 0.1, "test": 0.1}
STATS_KEYS = {"dataset", "format", "raw", "kept", "rejected", "splits", "lengths", "turns",
              "share_with_input", "share_with_history", "files"}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_json(path: Path, obj) -> str:
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return str(path)


def run(files, out: Path, fmt: str = "alpaca", **spec) -> dict:
    return prepare("demo", {"format": fmt, "files": files, **spec}, CLEANING, SPLIT, 42, out)


def outputs(out: Path) -> dict[str, list[dict]]:
    return {split: read_jsonl(out / f"{split}.jsonl") for split in ("train", "valid", "test")}


def assert_invariant(stats: dict, out: Path) -> None:
    """raw = kept + rejected in total and per file, and the files say the same."""
    assert stats["raw"] == stats["kept"] + sum(stats["rejected"].values())
    for counts in stats["per_file"].values():
        assert counts["raw"] == counts["kept"] + counts["rejected"]
    rows = outputs(out)
    assert {k: len(v) for k, v in rows.items()} == stats["splits"]
    assert sum(stats["splits"].values()) == stats["kept"]
    rejects = read_jsonl(out / "rejects.jsonl")
    assert len(rejects) == sum(stats["rejected"].values())
    for reason, count in stats["rejected"].items():
        assert sum(r["reason"] == reason for r in rejects) == count
    places = [(r["source"]["file"], r["source"]["index"]) for v in rows.values() for r in v]
    places += [(r["file"], r["index"]) for r in rejects]
    assert len(set(places)) == stats["raw"]  # every raw record once: kept or rejected


def assert_chat_records(rows: list[dict]) -> None:
    for row in rows:
        roles = [m["role"] for m in row["messages"]]
        if roles[0] == "system":
            roles = roles[1:]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
        assert all(m["content"] for m in row["messages"])
        assert set(row) == {"id", "messages", "source"}


# ---------------------------------------------------------------- shipped datasets


# pairs_from datasets read other datasets' prepared splits, not shipped files
@pytest.mark.parametrize("name", sorted(n for n, s in CONFIG["datasets"].items()
                                        if s["format"] != "pairs_from"))
def test_shipped_datasets_keep_the_invariant(name, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    spec = CONFIG["datasets"][name]
    stats = prepare(name, spec, CONFIG["cleaning"], CONFIG["split"], CONFIG["seed"], tmp_path)
    assert_invariant(stats, tmp_path)
    assert STATS_KEYS <= set(stats) and stats["kept"] > 0.9 * stats["raw"]
    assert json.loads((tmp_path / "stats.json").read_text(encoding="utf-8")) == stats
    for path, counts in stats["per_file"].items():
        assert counts["raw"] == len(json.loads(Path(path).read_text(encoding="utf-8")))
    rows = outputs(tmp_path)
    every = [r for v in rows.values() for r in v]
    assert_chat_records(every)
    assert len({r["id"] for r in every}) == len(every)
    assert all(v for v in rows.values())


def test_presplit_lccc_keeps_its_splits(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    prepare("lccc", CONFIG["datasets"]["lccc"], CLEANING, SPLIT, 42, tmp_path)
    for split, rows in outputs(tmp_path).items():
        assert {r["source"]["file"] for r in rows} == {f"data/raw/LCCC-base_{split}.json"}
    first = outputs(tmp_path)["train"][0]
    assert first["messages"][0] == {"role": "user", "content": "你也喜欢木心？"}


def test_alpaca_stats_describe_the_data(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    stats = prepare("alpaca_zh", CONFIG["datasets"]["alpaca_zh"], CLEANING, SPLIT, 42, tmp_path)
    assert 0.1 < stats["share_with_input"] < 0.2  # 139 of 1000 raw records have an input
    assert stats["turns"] == {"mean": 1.0, "max": 1} and stats["share_with_history"] == 0
    lengths = stats["lengths"]["response_chars"]
    assert lengths["p50"] <= lengths["p90"] <= lengths["p99"] <= lengths["max"]
    assert stats["files"]["data/raw/alpaca_zh_demo.json"].isalnum()


def test_sharegpt_json_lines_with_mapped_columns(tmp_path):
    rows = [{"dialog": [{"speaker": "system", "text": "你是助手"},
                        {"speaker": "human", "text": f"问题{i}是什么"},
                        {"speaker": "gpt", "text": f"回答{i}在这里"},
                        {"speaker": "human", "text": "谢谢你的回答"},
                        {"speaker": "gpt", "text": "不客气的"}]} for i in range(30)]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    columns = {"conversations": "dialog", "role_tag": "speaker", "content_tag": "text"}
    stats = run([str(path)], tmp_path / "out", fmt="sharegpt", columns=columns)
    assert_invariant(stats, tmp_path / "out")
    assert stats["kept"] == 30 and stats["turns"] == {"mean": 2.0, "max": 2}
    assert stats["share_with_history"] == 1.0
    every = [r for v in outputs(tmp_path / "out").values() for r in v]
    assert_chat_records(every)
    assert every[0]["messages"][0] == {"role": "system", "content": "你是助手"}


def test_openai_messages_end_to_end(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"第{i}题怎么做"},
                          {"role": "assistant", "content": f"第{i}题这样做"}]} for i in range(20)]
    rows.append({"messages": [{"role": "user", "content": "只有问题没有回答"}]})
    stats = run([write_json(tmp_path / "o.json", rows)], tmp_path / "out", fmt="openai")
    assert_invariant(stats, tmp_path / "out")
    assert stats["kept"] == 20 and stats["rejected"]["bad_turns"] == 1


# ---------------------------------------------------------------- stability


def make_rows(n: int, start: int = 0) -> list[dict]:
    return [{"instruction": f"第{i}个问题是什么", "output": f"这是第{i}个回答"}
            for i in range(start, start + n)]


def split_of(out: Path) -> dict[str, str]:
    return {r["id"]: split for split, rows in outputs(out).items() for r in rows}


def test_same_input_gives_byte_identical_outputs(tmp_path):
    path = write_json(tmp_path / "a.json", make_rows(200))
    run([path], tmp_path / "one")
    run([path], tmp_path / "two")
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl", "rejects.jsonl", "stats.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_appending_or_reordering_never_moves_a_record(tmp_path):
    before = write_json(tmp_path / "before.json", make_rows(300))
    after = write_json(tmp_path / "after.json", make_rows(400)[::-1])
    run([before], tmp_path / "before")
    run([after], tmp_path / "after")
    old, new = split_of(tmp_path / "before"), split_of(tmp_path / "after")
    assert len(new) == 400 and all(new[i] == split for i, split in old.items())


def test_duplicates_never_land_in_two_splits(tmp_path):
    rows = make_rows(100)
    wide = str.maketrans("0123456789", "０１２３４５６７８９")
    noisy = [{"instruction": r["instruction"].translate(wide), "output": r["output"]}
             for r in rows]
    stats = run([write_json(tmp_path / "a.json", rows + noisy + rows)], tmp_path / "out")
    assert stats["kept"] == 100
    assert stats["rejected"]["duplicate_normalized"] == 100
    assert stats["rejected"]["duplicate_exact"] == 100


def test_presplit_duplicate_stays_in_test_and_leaves_train(tmp_path):
    shared = {"instruction": "共享的问题", "output": "共享的回答"}
    files = {"train": write_json(tmp_path / "t.json", make_rows(5) + [shared]),
             "test": write_json(tmp_path / "e.json", [shared])}
    stats = run(files, tmp_path / "out")
    assert stats["splits"] == {"train": 5, "valid": 0, "test": 1}
    reject, = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert reject["file"].endswith("t.json") and reject["reason"] == "duplicate_exact"


# ---------------------------------------------------------------- bad records


BAD_ROWS = [
    ("not an object", ["a"], "wrong_type"),
    ("missing output", {"instruction": "问题问题"}, "missing_field"),
    ("numeric output", {"instruction": "问题问题", "output": 5}, "wrong_type"),
    ("empty instruction", {"instruction": " ", "output": "回答回答"}, "empty_prompt"),
    ("empty output", {"instruction": "问题问题", "output": ""}, "empty_response"),
    ("short output", {"instruction": "问题问题", "output": "好"}, "too_short_response"),
    ("long output", {"instruction": "问题问题", "output": "长" * 5000}, "too_long"),
    ("laughing", {"instruction": "问题问题", "output": "哈哈哈哈哈哈"}, "repeated_char"),
    ("bad history", {"instruction": "问题", "output": "回答回答", "history": [1]}, "wrong_type"),
    ("exact duplicate", {"instruction": "第0个问题是什么", "output": "这是第0个回答"},
     "duplicate_exact"),
    ("width duplicate", {"instruction": "第１个问题是什么", "output": "这是第１个回答"},
     "duplicate_normalized"),
]


def test_bad_records_go_to_rejects_with_file_index_reason_and_record(tmp_path):
    rows = make_rows(20) + [row for _, row, _ in BAD_ROWS]
    path = write_json(tmp_path / "mixed.json", rows)
    stats = run([path], tmp_path / "out")
    assert_invariant(stats, tmp_path / "out")
    rejects = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert [(r["index"], r["reason"]) for r in rejects] == [
        (20 + i, reason) for i, (_, _, reason) in enumerate(BAD_ROWS)]
    for reject in rejects:
        assert reject["file"] == path and reject["record"] == rows[reject["index"]]
        assert reject["detail"]


def test_a_mostly_broken_file_of_the_right_format_is_kept_with_rejects(tmp_path):
    rows = make_rows(3) + [{"instruction": "缺少回答"}] * 5
    stats = run([write_json(tmp_path / "a.json", rows)], tmp_path / "out")
    assert stats["kept"] == 3 and stats["rejected"]["missing_field"] == 5
    assert_invariant(stats, tmp_path / "out")


def test_mostly_other_format_refuses_the_file(tmp_path):
    rows = make_rows(3) + SHAREGPT_ROWS * 2
    with pytest.raises(DataError, match="6 of 9 records .* looks like ShareGPT, not Alpaca"):
        run([write_json(tmp_path / "a.json", rows)], tmp_path / "out")


def test_unanswered_turns_are_counted(tmp_path):
    dialogues = [["你 好", "你 好 呀", "在 干 嘛"], ["早 上 好", "早 啊"]]
    stats = run([write_json(tmp_path / "d.json", dialogues)], tmp_path / "out", fmt="lccc")
    assert stats["trimmed_turns"] == 1 and stats["kept"] == 2


# ---------------------------------------------------------------- unusable input


def cli(tmp_path: Path, files, fmt: str = "alpaca", **cleaning) -> int:
    config = {"dataset": {"format": fmt, "files": files},
              "cleaning": {**CLEANING, **cleaning}, "split": SPLIT, "seed": 42}
    return main(["--name", "demo", "--config", json.dumps(config),
                 "--out-dir", str(tmp_path / "out")])


SHAREGPT_ROWS = [{"conversations": [{"from": "human", "value": "你好"},
                                    {"from": "gpt", "value": "你好呀"}], "id": 1}] * 3

BAD_INPUTS = {
    "malformed json": (b'[{"instruction": "a", "output": "bb"}\n{"x": 1}]',
                       {}, ["bad.json", "line 2", "byte offset"]),
    "not utf-8": ('[{"instruction": "é", "output": "bb"}]'.encode("latin-1"), {},
                  ["bad.json", "UTF-8", "byte offset 18"]),
    "empty file": (b"", {}, ["bad.json", "empty"]),
    "empty array": (b"[]", {}, ["bad.json", "no records"]),
    "sharegpt declared alpaca": (json.dumps(SHAREGPT_ROWS).encode(), {},
                                 ["bad.json", "looks like ShareGPT, not Alpaca",
                                  "keys found: conversations, id"]),
    "alpaca declared lccc": (json.dumps(make_rows(3)).encode(), {"fmt": "lccc"},
                             ["looks like Alpaca, not LCCC", "keys found: instruction"]),
    "unknown records": (b'[{"q": "a", "a": "b"}]', {},
                        ["not valid alpaca records", "keys found: q, a"]),
    "all rejected": (json.dumps([{"instruction": "问", "output": ""}]).encode(), {},
                     ["no usable records", "empty_response 1"]),
    "all too short": (json.dumps(make_rows(2)).encode(), {"min_response_chars": 99},
                      ["no usable records", "too_short_response 2"]),
    "unknown cleaning key": (json.dumps(make_rows(2)).encode(), {"max_len": 3},
                             ["cleaning: unknown keys max_len"]),
}


@pytest.mark.parametrize("data, options, expected", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_unusable_input_fails_with_one_clear_message(data, options, expected, tmp_path,
                                                     capsys):
    (tmp_path / "bad.json").write_bytes(data)
    fmt = options.pop("fmt", "alpaca")
    code = cli(tmp_path, [str(tmp_path / "bad.json")], fmt, **options)
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("prepare_dataset: error: ")
    assert err.count("\n") == 1
    for part in expected:
        assert part in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_missing_file_is_named(tmp_path, capsys):
    assert cli(tmp_path, [str(tmp_path / "nope.json")]) == 1
    assert "nope.json: cannot read (No such file or directory)" in capsys.readouterr().err


def test_invalid_config_json_exits_non_zero(capsys):
    assert main(["--name", "x", "--config", "{", "--out-dir", "/tmp/never"]) == 2
    assert "--config is not valid JSON" in capsys.readouterr().err


def test_config_without_dataset_entry_is_refused(capsys):
    assert main(["--name", "x", "--config", '{"cleaning": {}}', "--out-dir", "/tmp/never"]) == 1
    assert '--config needs a "dataset" object' in capsys.readouterr().err


def test_a_failed_run_keeps_no_partial_outputs(tmp_path):
    good = write_json(tmp_path / "good.json", make_rows(10))
    (tmp_path / "broken.json").write_text("[{", encoding="utf-8")
    with pytest.raises(DataError, match="broken.json"):
        run([good, str(tmp_path / "broken.json")], tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_command_line_module_writes_its_files(tmp_path):
    config = {"dataset": {"format": "alpaca", "files": ["data/raw/alpaca_zh_demo.json"]},
              "cleaning": CLEANING, "split": SPLIT, "seed": 42}
    done = subprocess.run([sys.executable, "-m", "workflow_scripts.data.prepare_dataset", "--name",
                           "alpaca_zh", "--config", json.dumps(config), "--out-dir",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "alpaca_zh: raw 1000, kept" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "rejects.jsonl", "run_info.json", "stats.json", "test.jsonl", "train.jsonl",
        "valid.jsonl"]


# ---------------------------------------------------------------- tool calling

TOOL_DATA = ROOT / "tests" / "data"
TOOL_REJECTS = ("bad_tools", "bad_tool_call", "tool_args_not_json", "tool_result_without_call",
                "unknown_function")


@pytest.mark.parametrize("file, fmt", [("tool_calls_sharegpt.json", "sharegpt"),
                                       ("tool_calls_openai.jsonl", "openai")])
def test_tool_calling_files_keep_calls_results_and_tools(tmp_path, file, fmt):
    stats = run([str(TOOL_DATA / file)], tmp_path, fmt=fmt)
    assert_invariant(stats, tmp_path)
    assert stats["raw"] == 35
    assert all(stats["rejected"][reason] == 1 for reason in TOOL_REJECTS)
    # the malformed records are the last five, in REJECTS order
    rejects = [r for r in read_jsonl(tmp_path / "rejects.jsonl") if r["reason"] in TOOL_REJECTS]
    assert [(r["index"], r["reason"]) for r in rejects] == list(enumerate(TOOL_REJECTS, 30))
    rows = [r for v in outputs(tmp_path).values() for r in v]
    assert all(set(r) == {"id", "messages", "tools", "source"} for r in rows)
    calls = [c["function"]["name"] for r in rows for m in r["messages"]
             for c in m.get("tool_calls", ())]
    tool = stats["tool_calls"]
    assert tool["records_with_tools"] == tool["records_with_calls"] == len(rows) == stats["kept"]
    assert tool["calls"] == len(calls) and tool["calls_per_record"]["max"] == 3
    assert tool["functions"] == {name: calls.count(name) for name in sorted(set(calls))}
    assert json.loads((tmp_path / "stats.json").read_text(encoding="utf-8")) == stats


def test_both_tool_formats_give_the_same_records(tmp_path):
    share = run([str(TOOL_DATA / "tool_calls_sharegpt.json")], tmp_path / "s", fmt="sharegpt")
    oai = run([str(TOOL_DATA / "tool_calls_openai.jsonl")], tmp_path / "o", fmt="openai")
    assert share["tool_calls"] == oai["tool_calls"]
    by_format = [{r["id"]: (r["messages"], r["tools"]) for v in outputs(tmp_path / d).values()
                  for r in v} for d in ("s", "o")]
    # OpenAI gives each parallel result its own tool turn, ShareGPT one observation for both
    same = [i for i in by_format[0] if by_format[0][i] == by_format[1].get(i)]
    assert len(same) >= 10


def test_plain_datasets_count_no_tool_calls(tmp_path):
    rows = [{"instruction": f"问题{i}", "output": f"回答{i}"} for i in range(5)]
    stats = run([write_json(tmp_path / "a.json", rows)], tmp_path / "out")
    assert stats["tool_calls"] == {"records_with_tools": 0, "records_with_calls": 0, "calls": 0,
                                   "calls_per_record": {"mean": 0.0, "p50": 0, "p90": 0,
                                                        "p99": 0, "max": 0},
                                   "functions": {}}


def test_data_warnings_are_in_stats(tmp_path):
    rows = make_rows(20)
    files = {"train": write_json(tmp_path / "train.json", rows + rows[:10]),
             "test": write_json(tmp_path / "test.json", make_rows(1, start=100))}
    stats = run(files, tmp_path / "out")
    assert stats["warnings"] == [
        "the valid split is empty", "the test split has only one record",
        "10 of 31 records (32%) were rejected (duplicate_exact 10); each one is in "
        "rejects.jsonl"]
    assert run([write_json(tmp_path / "all.json", make_rows(200))], tmp_path / "out2"
               )["warnings"] == []


def test_warnings_and_a_whole_file_error_reach_the_terminal(tmp_path):
    """Through the real rule: the job's log holds everything, the terminal (Snakemake's
    own stderr) shows the warnings and the reason a file was refused."""
    from workflow_runner import make_workflow
    workflow = make_workflow(tmp_path)
    config = yaml.safe_load(workflow.config.read_text(encoding="utf-8"))
    rows = make_rows(20)
    (workflow.workdir / "mine.json").write_text(json.dumps(rows + rows[:10]), encoding="utf-8")
    (workflow.workdir / "one.json").write_text(json.dumps(make_rows(1, 100)), encoding="utf-8")
    (workflow.workdir / "chat.json").write_text(json.dumps(
        [{"conversations": [{"from": "human", "value": "问"}, {"from": "gpt", "value": "答"}]}]
        * 3), encoding="utf-8")
    config["datasets"]["mine"] = {"format": "alpaca",
                                  "files": {"train": "mine.json", "test": "one.json"}}
    config["datasets"]["chat"] = {"format": "openai", "files": ["chat.json"]}
    workflow.config.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    proc = workflow.run("--cores", "1", "results/data/mine/stats.json")
    for warning in ("the valid split is empty", "the test split has only one record",
                    "10 of 31 records (32%) were rejected"):
        assert f"prepare_dataset: warning: mine: {warning}" in proc.stderr, proc.stderr[-3000:]
    proc = workflow.run("--cores", "1", "results/data/chat/stats.json", check=False)
    assert proc.returncode != 0
    assert ("prepare_dataset: error: chat.json: 3 of 3 records are not valid openai records: "
            "this looks like ShareGPT, not OpenAI messages" in proc.stderr), proc.stderr[-3000:]
    assert "first bad record (index 0): messages: missing (keys found: conversations)" \
        in proc.stderr, proc.stderr[-3000:]

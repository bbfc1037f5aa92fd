"""docs/data.md shows what a record of each format looks like: every example in it is read
here exactly as shown (each fenced block, parsed out of the page), and its tables list every
reject reason and every `columns` name the code knows."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from workflow_scripts.common.config import validate
from workflow_scripts.data.cleaning import REASONS
from workflow_scripts.data.formats import DEFAULT_COLUMNS, DataError
from workflow_scripts.data.preference_cleaning import PREFERENCE_REASONS
from workflow_scripts.data.preference_formats import PREFERENCE_COLUMNS
from workflow_scripts.data.prepare_dataset import prepare

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "docs" / "data.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"(?:<!-- example: (?P<spec>[^\n]*?) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```",
                   re.S)
BLOCKS = [m.groupdict() for m in BLOCK.finditer(PAGE)]
EXAMPLES = [b for b in BLOCKS if b["lang"] in ("json", "jsonl")]
COLUMNS = DEFAULT_COLUMNS | PREFERENCE_COLUMNS  # every file format's names


def test_every_record_example_says_its_format():
    assert len(EXAMPLES) >= 6
    assert all(b["spec"] for b in EXAMPLES), "a json/jsonl block without <!-- example: -->"
    assert {b["spec"].split()[0] for b in EXAMPLES} == set(COLUMNS)


@pytest.mark.parametrize("block", EXAMPLES, ids=lambda b: b["spec"].split()[0])
def test_example_records_are_all_kept(block, tmp_path):
    fmt, _, columns = block["spec"].partition(" columns=")
    source = tmp_path / f"example.{block['lang']}"
    source.write_text(block["body"], encoding="utf-8")
    records = (json.loads(block["body"]) if block["lang"] == "json"
               else [json.loads(line) for line in block["body"].splitlines()])
    spec = {"format": fmt, "files": [str(source)]}
    if columns:
        spec["columns"] = json.loads(columns)
    stats = prepare("example", spec, {}, {"valid": 0, "test": 0}, 42, tmp_path / "out")
    assert stats["kept"] == len(records), (tmp_path / "out/rejects.jsonl").read_text()
    kept = [json.loads(line) for line in (tmp_path / "out/train.jsonl").open()]
    if fmt == "openai" and "loss_weight" in block["body"]:  # v1: the first reply is context
        assert [m.get("loss_weight") for m in kept[0]["messages"]] == [None, 0, None, None]
        assert kept[0]["messages"][2]["content"] == "讲个笑话"


def test_config_examples_validate():
    config = yaml.safe_load((ROOT / "tests/configs/smoke.yaml").read_text(encoding="utf-8"))
    for block in [b for b in BLOCKS if b["lang"] == "yaml"]:
        config["datasets"].update(yaml.safe_load(block["body"])["datasets"])
    datasets = validate(config)["datasets"]
    assert datasets["my_chats"]["columns"]["role_tag"] == "speaker"
    assert datasets["alpaca_pairs"] == {"format": "pairs_from", "source": "alpaca_zh",
                                        "rejected": "other_answer", "language": "zh"}


def test_whole_file_error_example_is_what_prepare_says(tmp_path, monkeypatch):
    [block] = [b for b in BLOCKS if b["lang"] == "" and "first bad record" in b["body"]]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    rows = [{"conversations": [{"from": "human", "value": f"问{n}"},
                               {"from": "gpt", "value": f"答{n}"}]} for n in range(40)]
    (tmp_path / "data/mine.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(DataError) as err:
        prepare("mine", {"format": "openai", "files": ["data/mine.jsonl"]}, {}, {}, 42,
                tmp_path / "out")
    assert str(err.value) == " ".join(block["body"].split())


def table_rows(heading: str) -> list[list[str]]:
    section = PAGE.split(heading, 1)[1].split("\n##", 1)[0]  # to the next heading
    return [[cell.strip() for cell in line.strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]


def test_every_reject_reason_is_explained():
    assert [row[0].strip("`") for row in table_rows("## Rejected records")] == list(REASONS)
    assert [row[0].strip("`") for row in table_rows("### Rejected pairs")] == list(
        PREFERENCE_REASONS)


def test_every_column_name_is_listed():
    rows = table_rows("## `columns`") + table_rows("### Preference `columns`")
    for fmt, names in rows:
        listed = [name.split()[0].strip("`,") for name in re.findall(r"`\w+`(?: \(`\w+`\))?",
                                                                      names)]
        assert listed == list(COLUMNS[fmt]), fmt
    assert [fmt for fmt, _ in rows] == list(COLUMNS)

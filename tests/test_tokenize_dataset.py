"""Tokenization as its own stage: the Arrow rows are exactly the features the in-process path
made (tokenize_records, pack_features), in one process or several; the tokenizer's identity
is its content."""
import json
import shutil

import pytest

from workflow_scripts.common.io_utils import read_json, read_jsonl, write_jsonl
from workflow_scripts.models.build_base_model import train_tokenizer
from workflow_scripts.models.tokenizer_identity import tokenizer_content_hash
from workflow_scripts.training import tokenize_dataset
from workflow_scripts.training.chat_tokenize import tokenize_records
from workflow_scripts.training.packing import pack_features

TOOLS = [{"type": "function", "function": {"name": "天气", "description": "查天气",
                                           "parameters": {"type": "object", "properties": {}}}}]


def conversation(i: int) -> dict:
    """Lengths from a few tokens to past max_length; some two-turn, some with tools."""
    messages = [{"role": "user", "content": "问题" * (1 + i % 5)},
                {"role": "assistant", "content": "回答很长" * (1 + (7 * i) % 13)}]
    if i % 3 == 0:
        messages += [{"role": "user", "content": "还有呢？"}, {"role": "assistant", "content": "好的"}]
    record = {"id": str(i), "messages": messages}
    if i % 7 == 0:
        record["tools"] = TOOLS
    return record


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    corpus = [conversation(i)["messages"] for i in range(20)]
    path = tmp_path_factory.mktemp("tok")
    train_tokenizer(corpus, vocab_size=300).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    write_jsonl(path / "train.jsonl", [conversation(i) for i in range(230)])
    write_jsonl(path / "valid.jsonl", [conversation(i) for i in range(1000, 1021)])
    return path


def expected(model_dir, data_dir, settings):
    """Today's in-process path: tokenize_records on the whole split, then pack_features."""
    from workflow_scripts.models.loading import load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    records = list(read_jsonl(data_dir / "train.jsonl"))
    features, stats = tokenize_records(tokenizer, records, settings["max_length"], settings["overflow"])
    if settings["packing"]:
        features = pack_features(features, settings["max_length"])
        stats.packed_rows = len(features)
    for feature in features:
        feature["length"] = len(feature["input_ids"])
    valid, _ = tokenize_records(tokenizer, list(read_jsonl(data_dir / "valid.jsonl")),
                                settings["max_length"], settings["overflow"])
    return features, valid, stats.as_dict()


@pytest.mark.parametrize("packing,overflow", [(True, "truncate"), (False, "drop"), (True, "drop")])
def test_rows_equal_the_in_process_features(model_dir, data_dir, tmp_path, monkeypatch, packing,
                                            overflow):
    monkeypatch.setattr(tokenize_dataset, "CHUNK_RECORDS", 50)  # several chunks, a short last one
    monkeypatch.setattr(tokenize_dataset, "ROWS_PER_BATCH", 16)  # several Arrow batches
    settings = {"max_length": 48, "overflow": overflow, "packing": packing}
    manifest = tokenize_dataset.tokenize(data_dir, str(model_dir), settings, tmp_path)
    train, valid, stats = tokenize_dataset.load_tokenized(tmp_path)
    features, valid_features, expected_stats = expected(model_dir, data_dir, settings)
    assert stats.as_dict() == expected_stats
    assert expected_stats["truncated" if overflow == "truncate" else "dropped_too_long"] > 0
    assert train.to_list() == features
    assert valid == valid_features
    assert manifest["rows"] == {"train": len(features), "valid": len(valid_features)}
    assert manifest["tokenizer_sha256"] == tokenizer_content_hash(model_dir)


def test_worker_processes_write_the_same_files(model_dir, data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(tokenize_dataset, "CHUNK_RECORDS", 40)
    monkeypatch.setattr(tokenize_dataset, "worker_count", lambda threads, data_dir: threads)
    settings = {"max_length": 48, "overflow": "truncate", "packing": True}
    one = tokenize_dataset.tokenize(data_dir, str(model_dir), settings, tmp_path / "one", threads=1)
    two = tokenize_dataset.tokenize(data_dir, str(model_dir), settings, tmp_path / "two", threads=2)
    assert one == two  # the same Arrow files, byte for byte (their SHA-256 in the manifest)
    assert read_json(tmp_path / "one/stats.json") == read_json(tmp_path / "two/stats.json")
    assert not list((tmp_path / "two").glob("*.bin"))  # the flat token files are gone


def test_length_summary_matches_chat_tokenize():
    import numpy as np

    from workflow_scripts.training.chat_tokenize import length_summary

    lengths = [5, 3, 900, 17, 17, 2, 64, 33, 1, 8, 250]
    assert tokenize_dataset.length_summary(np.array(lengths)) == length_summary(lengths)
    assert tokenize_dataset.length_summary(np.array([], np.int64)) == length_summary([]) == {}


def test_a_bad_line_is_named(model_dir, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data/train.jsonl").write_text(
        json.dumps(conversation(1), ensure_ascii=False) + "\n\n{not json\n", encoding="utf-8")
    settings = {"max_length": 48, "overflow": "truncate", "packing": False}
    with pytest.raises(ValueError, match=r"train.jsonl, line 3: not JSON"):
        tokenize_dataset.tokenize(tmp_path / "data", str(model_dir), settings, tmp_path / "out")


def test_no_sample_left_fails_naming_the_file(model_dir, tmp_path):
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data/train.jsonl", [conversation(4)])
    settings = {"max_length": 4, "overflow": "drop", "packing": False}
    with pytest.raises(SystemExit, match=r"train.jsonl: no record left to train on"):
        tokenize_dataset.tokenize(tmp_path / "data", str(model_dir), settings, tmp_path / "out")


def test_tokenizer_identity_is_its_content(model_dir, tmp_path):
    copy = shutil.copytree(model_dir, tmp_path / "other-name")
    (copy / "model.safetensors").write_bytes(b"weights do not matter")
    assert tokenizer_content_hash(copy) == tokenizer_content_hash(model_dir)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    template_file = copy / "chat_template.jinja"
    if template_file.exists():
        template_file.write_text(template_file.read_text() + "{# edited #}")
    else:
        config["chat_template"] += "{# edited #}"
        (copy / "tokenizer_config.json").write_text(json.dumps(config))
    assert tokenizer_content_hash(copy) != tokenizer_content_hash(model_dir)


def test_settings_that_change_tokens_change_the_key():
    base = {"dataset": "d", "tokenizer": {"sha256": "ab"}, "trust_remote_code": False,
            **tokenize_dataset.token_settings({"max_length": 64})}
    assert base["overflow"] == "truncate" and base["packing"] is False
    keys = {tokenize_dataset.settings_key(base)}
    for change in ({"max_length": 128}, {"packing": True}, {"overflow": "drop"},
                   {"tokenizer": {"sha256": "cd"}}, {"dataset": "e"}):
        keys.add(tokenize_dataset.settings_key(base | change))
    assert len(keys) == 6
    # what does not change tokens is not in the key
    assert tokenize_dataset.token_settings({"max_length": 64, "learning_rate": 1.0}) == \
        tokenize_dataset.token_settings({"max_length": 64, "batch_size": 8})


def test_the_plan_has_one_job_per_set_of_tokens(model_dir, tmp_path):
    from workflow_scripts.common.config import resolve_experiments
    from workflow_scripts.training.tokenize_plan import TokenizePlan

    copy = shutil.copytree(model_dir, tmp_path / "copy")
    config = {
        "datasets": {"d": {"format": "alpaca", "files": ["x.json"]}},
        "base_models": {"a": {"source": "path", "path": str(model_dir)},
                        "b": {"source": "path", "path": str(copy)},
                        "s": {"source": "scratch"}},
        "experiments": {"a-r4": {"base_model": "a", "dataset": "d", "lora": {"r": 4}},
                        "a-r8": {"base_model": "a", "dataset": "d", "lora": {"r": 8},
                                 "training": {"learning_rate": 1e-3}},
                        "a-qlora": {"base_model": "a", "dataset": "d", "method": "qlora"},
                        "b-same": {"base_model": "b", "dataset": "d"},
                        "a-long": {"base_model": "a", "dataset": "d", "training": {"max_length": 999}},
                        "s": {"base_model": "s", "dataset": "d"}}}
    plan = TokenizePlan(resolve_experiments(config), config["base_models"])
    shared = {plan.directory(n) for n in ("a-r4", "a-r8", "a-qlora", "b-same")}
    assert len(shared) == 1  # rank, learning rate, method, another model with the same tokenizer
    assert len(plan.jobs) == 3 and plan.directory("a-long") not in shared
    [(dataset, key)] = [k for k in plan.jobs if plan.directory("a-r4").endswith("/".join(k))]
    assert plan.model(dataset, key) == "a"


def test_the_checkpoint_key_follows_the_tokens(model_dir, data_dir, tmp_path):
    from workflow_scripts.training.train_adapter import prepare_checkpoints

    settings = {"max_length": 48, "overflow": "truncate", "packing": True}
    job = {"experiment": {"training": settings}, "seed": 1, "base_model": {"source": "path"}}
    other_data = shutil.copytree(data_dir, tmp_path / "other-data")
    with open(other_data / "train.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(conversation(999), ensure_ascii=False) + "\n")
    keys = []
    for name, data in (("a", data_dir), ("again", data_dir), ("b", other_data)):
        tokenize_dataset.tokenize(data, str(model_dir), settings, tmp_path / name)
        keys.append(prepare_checkpoints(job, str(model_dir), tmp_path / name, tmp_path / f"ckpt-{name}").name)
    assert keys[0] == keys[1] != keys[2]  # the same tokens resume; other tokens never do

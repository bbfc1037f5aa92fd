"""Statements in docs/ that restate a fact the code holds (a list of files, a default, a
set of tags) say what the code says."""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow_scripts.common.config import load_schema
from workflow_scripts.launch.gpu_slots import train_launcher
from workflow_scripts.studio.__main__ import parse_args, settings_from
from workflow_scripts.tracking.run_record import provenance_tags

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def smk_tuple(path: str, name: str) -> tuple:
    """A tuple constant assigned at the top of a rule file (`EVAL_OUTPUTS = (...)`)."""
    text = (ROOT / path).read_text(encoding="utf-8")
    literal = re.search(rf"^{name} = (\(.*?\))\n", text, re.S | re.M).group(1)
    return ast.literal_eval(literal)


def test_metrics_page_names_every_file_an_evaluation_writes():
    opening = page("metrics.md").split("\n\n")[1]
    written = smk_tuple("rules/evaluate.smk", "EVAL_OUTPUTS")
    assert len(written) == 7
    assert sorted(re.findall(r"`([\w.]+\.jsonl?)`", opening)) == sorted(written)


def test_metrics_page_gives_the_real_number_of_prompts():
    said = re.search(r"`evaluation\.samples`: (\d+) in the default config, (\d+) where",
                     page("metrics.md"))
    default_config = yaml.safe_load((ROOT / "config/config.yaml").read_text(encoding="utf-8"))
    schema = load_schema()["$defs"]["evaluation"]["properties"]["samples"]["default"]
    assert said, "docs/metrics.md no longer says how many prompts a run answers"
    assert (int(said[1]), int(said[2])) == (
        default_config["defaults"]["evaluation"]["samples"], schema)


def test_slurm_profile_names_the_launchers_the_code_uses():
    comment = (ROOT / "profiles/slurm/config.yaml").read_text(encoding="utf-8").split(
        "training asks for training.devices GPUs", 1)[1].split("\n  train_adapter:", 1)[0]
    one_node, across = comment.split("and across", 1)
    assert "local_launch" in train_launcher({"devices": 2, "nodes": 1})
    assert "local_launch" in one_node and "torchrun" not in one_node
    assert "torch.distributed.run" in train_launcher({"devices": 2, "nodes": 2})
    assert "torchrun" in across


def refusal(*args: str) -> str:
    with pytest.raises(SystemExit) as refused:
        settings_from(parse_args(["--host", "0.0.0.0", *args]))
    return str(refused.value)


def test_readme_names_what_the_studio_needs_beyond_loopback():
    said = re.search(r"listens on another address only with (.*?)\. See",
                     (ROOT / "README.md").read_text(encoding="utf-8"), re.S).group(1)
    asked = set(re.findall(r"--[\w-]+|\$[A-Z_]+", refusal() + " " + refusal("--token", "t")))
    assert {"--token", "--certfile", "--keyfile", "--insecure-http"} <= asked
    assert asked <= set(re.findall(r"--[\w-]+|\$[A-Z_]+", said))


def test_tracking_page_lists_every_data_hash_tag(tmp_path):
    """train_adapter's run_info.json hashes both splits and the tokenized data's manifest."""
    files = ["results/data/lccc/train.jsonl", "results/data/lccc/valid.jsonl",
             "results/tokenized/lccc/0123456789abcdef/manifest.json"]
    (tmp_path / "run_info.json").write_text(json.dumps(
        {"data_files": {path: "0" * 64 for path in files}}), encoding="utf-8")
    job = {"experiment": "e", "settings": {"dataset": "lccc", "base_model": "tiny",
                                           "method": "lora"}}
    tags = provenance_tags(job, tmp_path, "hash")
    written = {t.split("data_sha256.")[1] for t in tags if "data_sha256." in t}
    listed = re.search(r"`\.data_sha256\.\{([\w,]+)\}`", page("tracking.md")).group(1)
    assert set(listed.split(",")) == written == {"train", "valid", "manifest"}


def test_collect_metrics_help_gives_corpus_metrics_the_same_resamples():
    help_text = subprocess.run(
        [sys.executable, "-m", "workflow_scripts.report.collect_metrics", "--help"],
        capture_output=True, text=True, check=True).stdout
    option = re.search(r"^ +--resamples RESAMPLES\s+(.*?)(?=^ +-|\Z)", help_text, re.M | re.S)
    resamples = " ".join(option.group(1).split())
    assert "fewer" not in resamples and "corpus metrics (sacreBLEU, chrF) included" in resamples

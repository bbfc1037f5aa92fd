"""LLaMA-Factory's own preference demo files (ShareGPT style and v1) train DPO adapters from an
SFT adapter of the smoke run, end to end through the workflow, every record kept or rejected
with a reason; a bad preference file fails its own jobs with an error naming the record and
field, and the rest of the run goes on."""
from __future__ import annotations

import json

import yaml

from workflow_scripts.common.io_utils import read_json

BAD_PAIRS = [  # TRL-shaped records in a file declared as ShareGPT pairwise: refused whole
    {"prompt": "你好", "chosen": "你好！", "rejected": "嗯"},
    {"prompt": "今天天气怎么样？", "chosen": "晴天。", "rejected": "不知道"},
]
DEMOS = {"lf_sharegpt": ("sharegpt_pairwise", "tests/data/llamafactory/dpo_zh_demo.json"),
         "lf_v1": ("openai_pairwise", "tests/data/llamafactory/v1_dpo_demo.jsonl")}


def test_llamafactory_demo_files_train_dpo_from_an_sft_adapter(smoke_run, tmp_path):
    workflow = smoke_run.clone(tmp_path)
    (workflow.workdir / "bad_pairs.json").write_text(json.dumps(BAD_PAIRS, ensure_ascii=False),
                                                      encoding="utf-8")
    config = yaml.safe_load(workflow.config.read_text(encoding="utf-8"))
    datasets = {name: {"format": fmt, "files": [path]} for name, (fmt, path) in DEMOS.items()}
    datasets["bad_pairs"] = {"format": "sharegpt_pairwise", "files": ["bad_pairs.json"]}
    config["datasets"].update(datasets)
    for name in datasets:
        config["experiments"][f"{name}-dpo"] = {
            "stage": "preference", "init_from": "rank-r2", "dataset": name,
            "training": {"max_length": 512, "max_steps": 2, "batch_size": 2}}
    workflow.config.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    targets = [f"results/eval/{name}-dpo/preference.json" for name in datasets]
    proc = workflow.run("--cores", "2", "--keep-going", *targets, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0  # the bad file's jobs fail ...
    assert ("bad_pairs.json: 2 of 2 records are not valid sharegpt_pairwise records" in output
            and "first bad record (index 0): conversations: missing" in output), output[-3000:]
    for name in DEMOS:  # ... and the demo files' go on to the end
        work = workflow.workdir
        stats = read_json(work / f"results/data/{name}/stats.json")
        raw = sum(f["raw"] for f in stats["per_file"].values())
        rejects = (work / f"results/data/{name}/rejects.jsonl").read_text(encoding="utf-8")
        assert raw == stats["kept"] + sum(stats["rejected"].values()) == len(
            json.loads(work.joinpath(DEMOS[name][1]).read_text()) if name == "lf_sharegpt"
            else work.joinpath(DEMOS[name][1]).read_text().splitlines())
        assert len(rejects.splitlines()) == sum(stats["rejected"].values())
        metrics = read_json(work / f"results/adapters/{name}-dpo/train_metrics.json")
        assert metrics["stage"] == "preference" and metrics["steps"] == 2
        summary = read_json(work / f"results/eval/{name}-dpo/preference.json")
        assert summary["start"] == "rank-r2" and summary["n"] > 0
    assert not (workflow.workdir / "results/adapters/bad_pairs-dpo").exists()

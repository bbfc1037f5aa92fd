"""`export:` in the config: refusals name the key, defaults are filled, rule all asks for the
configured targets."""
from __future__ import annotations

import pytest
import yaml

from workflow_runner import SMOKE_CONFIG
from workflow_scripts.common.config import ConfigError, resolve_experiments, validate


def with_export(export: dict) -> dict:
    config = yaml.safe_load(SMOKE_CONFIG.read_text(encoding="utf-8"))
    config["export"] = export
    return config


@pytest.mark.parametrize("export, message", [
    ({"nope": {"targets": ["merged"]}}, "export.nope: unknown experiment 'nope'"),
    ({"lccc-qlora": {"targets": ["onnx"]}}, "export.lccc-qlora.targets.0: 'onnx' is not one of"),
    ({"lccc-qlora": {"targets": []}}, "export.lccc-qlora.targets: [] should be non-empty"),
    ({"lccc-qlora": {"targets": ["gguf"], "gguf_types": ["q4_k_m"]}},
     "export.lccc-qlora.gguf_types.0: 'q4_k_m' is not one of"),
    ({"lccc-qlora": {"targets": ["gguf"], "check": {"tokens": 0}}},
     "export.lccc-qlora.check.tokens: 0 is less than the minimum of 1"),
    ({"lccc-qlora": {"targets": ["gguf"], "format": "gguf"}}, "unknown key export.lccc-qlora.format"),
    ({"lccc-qlora": {"gguf_types": ["f16"]}}, "export.lccc-qlora: 'targets' is a required property"),
])
def test_a_bad_export_entry_is_refused_naming_the_key(export, message):
    with pytest.raises(ConfigError) as err:
        config = validate(with_export(export), "my.yaml")
        resolve_experiments(config, "my.yaml")
    assert message in str(err.value) and "my.yaml" in str(err.value)


def test_an_export_entry_gets_the_documented_defaults():
    config = validate(with_export({"rank-r2": {"targets": ["gguf", "vllm"]}}))
    resolve_experiments(config)
    assert config["export"]["rank-r2"] == {
        "targets": ["gguf", "vllm"], "gguf_types": ["f16", "q8_0"], "lora_gguf": True,
        "max_shard_size": "2GB",
        "check": {"prompts": 3, "tokens": 32, "min_agreement": 0.95, "loss_records": 32}}


def refusals_for(experiment: dict, export: dict) -> list[str]:
    from workflow_scripts.export.plan import export_refusals

    config = with_export({"probe": export})
    config["experiments"]["probe"] = experiment
    config = validate(config, "my.yaml")
    return export_refusals(config["export"], resolve_experiments(config, "my.yaml"), "my.yaml")


def test_vllm_and_lora_gguf_exports_that_cannot_work_are_refused_before_training():
    dora = refusals_for({"base_model": "tiny", "dataset": "lccc", "method": "dora"},
                        {"targets": ["vllm", "gguf"]})
    assert dora == [
        "invalid config in my.yaml: export.probe.targets: vllm: vLLM rule 'no DoRA': use_dora "
        "is true (magnitude vectors); fix: retrain with method: lora, or export the `merged` "
        "target and serve that model without --enable-lora",
        "invalid config in my.yaml: export.probe.lora_gguf: no LoRA GGUF: it is a DoRA adapter, "
        "which llama.cpp's --lora does not apply; fix: the merged GGUF, or set lora_gguf: false"]
    tokens = refusals_for({"base_model": "tiny", "dataset": "lccc",
                           "lora": {"trainable_tokens": ["<|im_end|>"]}}, {"targets": ["vllm"]})
    assert len(tokens) == 1 and "vLLM rule 'no trainable tokens'" in tokens[0]
    assert refusals_for({"base_model": "tiny", "dataset": "lccc",
                         "lora": {"trainable_tokens": ["<|im_end|>"]}},
                        {"targets": ["gguf", "merged"], "lora_gguf": False}) == []
    assert refusals_for({"base_model": "tiny", "dataset": "lccc", "lora": {"r": 16}},
                        {"targets": ["vllm", "gguf"]}) == []


def test_the_dag_runs_each_export_once_per_target(tmp_path):
    """A dry run of the smoke config with exports: the jobs each target needs, once."""
    import re
    import subprocess
    import sys

    from workflow_runner import REPO

    config = with_export({"lccc-qlora": {"targets": ["merged", "gguf", "vllm"]},
                          "rank-r2": {"targets": ["gguf"], "gguf_types": ["bf16"],
                                      "lora_gguf": False}})
    path = tmp_path / "export.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(path),
                           "--quiet", "rules"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = dict(re.findall(r"^(export_\w+)\s+(\d+)$", proc.stdout + proc.stderr, re.M))
    assert counts == {"export_merged": "2", "export_gguf": "3", "export_base_gguf": "1",
                      "export_lora_gguf": "1", "export_modelfile": "2", "export_check": "4",
                      "export_vllm": "1", "export_table": "1"}

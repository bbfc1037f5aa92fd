"""The load-back check: llama.cpp (llama-cpp-python, built by scripts/setup_export.sh --build)
loads each GGUF, and the base GGUF with the LoRA GGUF, and greedy-decodes the first test
prompts as transformers does; a GGUF of another model fails naming the prompt and the first
differing token; exports.tsv collects the rows."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from random_chat_models import random_base

REPO = Path(__file__).resolve().parent.parent
TOOLS = Path(os.environ.get("LORA_ZH_EXPORT_TOOLS") or REPO / ".venv" / "export")
pytestmark = pytest.mark.skipif(not list((TOOLS / "site").glob("llama_cpp/__init__.py")),
                                reason="run scripts/setup_export.sh --build")
EVALUATION = {"max_new_tokens": 32, "do_sample": False, "temperature": 1.0, "top_p": 1.0,
              "top_k": 0, "repetition_penalty": 1.0, "max_length": 256, "batch_size": 4}
CHECK = {"prompts": 3, "tokens": 32, "min_agreement": 0.95, "loss_records": 4}
POEM = "床前明月光，疑是地上霜。举头望明月，低头思故乡。白日依山尽，黄河入海流。"
# answers of 32 tokens and more, which the adapter learns by heart: greedy decoding has clear
# margins (a random model's near-ties would flip on any rounding)
PROMPTS = [("北京今天天气怎么样？", POEM), ("上海明天下雨吗？", POEM[::-1]),
           ("查询城市天气", POEM[12:] + POEM[:12]), ("你好", "你好")]


def module(name: str, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(TOOLS / "site")}
    return subprocess.run([sys.executable, "-m", f"workflow_scripts.export.{name}", *args],
                          cwd=REPO, capture_output=True, text=True, env=env)


def converted(*args: str) -> None:
    proc = module("gguf_convert", *args, "--tools", str(TOOLS / "llama.cpp"))
    assert proc.returncode == 0, proc.stderr[-3000:]


def memorising_adapter(base: Path, out: Path) -> Path:
    """A LoRA adapter trained until the base answers PROMPTS by heart."""
    import torch
    from peft import LoraConfig, get_peft_model

    from workflow_scripts.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(base))
    torch.manual_seed(0)
    model = get_peft_model(load_model(str(base)), LoraConfig(
        task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules="all-linear"))
    rows = [torch.tensor([tokenizer.apply_chat_template(
        [{"role": "user", "content": u}, {"role": "assistant", "content": a}], tokenize=True,
        return_dict=True)["input_ids"]]) for u, a in PROMPTS]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(60):
        for ids in rows:
            model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """A model that never ends its turn (every prompt runs to 32 tokens), a plain LoRA
    adapter, its merged export and every GGUF of it."""
    from workflow_scripts.export.merged import export_merged

    root = tmp_path_factory.mktemp("check")
    base = random_base(root / "base", hidden=64, layers=2)
    adapter = memorising_adapter(base, root / "adapter")
    export_merged(str(base), str(adapter), root / "merged",
                  {"base_model": {}, "evaluation": EVALUATION, "max_shard_size": "2GB"})
    for outtype in ("f16", "q8_0"):
        converted("model", "--model-dir", str(root / "merged"), "--outtype", outtype,
                  "--outfile", str(root / f"m-{outtype}.gguf"))
    converted("model", "--model-dir", str(base), "--outfile", str(root / "base-f16.gguf"))
    converted("lora", "--model-dir", str(base), "--adapter-dir", str(adapter),
              "--outfile", str(root / "lora.gguf"))
    (root / "test.jsonl").write_text("".join(json.dumps(
        {"id": f"r{i}", "messages": [{"role": "user", "content": u},
                                     {"role": "assistant", "content": a}]}, ensure_ascii=False)
        + "\n" for i, (u, a) in enumerate(PROMPTS)), encoding="utf-8")
    return root


def run_check(root: Path, target: str, gguf: str, *extra: str, out_name: str = ""):
    out = root / "checks" / f"{out_name or target}.json"
    proc = module("check_gguf", "--merged-dir", str(root / "merged"), "--gguf", str(root / gguf),
                  *extra, "--test-file", str(root / "test.jsonl"), "--out", str(out),
                  "--config", json.dumps({"evaluation": EVALUATION, "check": CHECK,
                                          "target": target}))
    return proc, out


@pytest.mark.parametrize("target, gguf, extra", [
    ("f16", "m-f16.gguf", ()), ("lora", "base-f16.gguf", ("--lora", "lora.gguf")),
    ("q8_0", "m-q8_0.gguf", ())])
def test_each_gguf_answers_like_the_merged_model(export, target, gguf, extra):
    extra = tuple(str(export / e) if e.endswith(".gguf") else e for e in extra)
    proc, out = run_check(export, target, gguf, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["verdict"] == "pass" and result["tokens_compared"] == 3 * 32
    assert all(p["same_prompt_ids"] for p in result["prompts_checked"])
    if target != "q8_0":
        assert result["agreement"] == 1.0
        assert abs(result["loss_difference"]) < 1e-2
    assert result["agreement"] >= 0.95 and result["loss_tokens"] > 0


def test_a_gguf_of_another_model_fails_naming_the_prompt_and_the_token(export):
    proc, out = run_check(export, "f16", "base-f16.gguf", out_name="wrong")  # not the merged model
    assert proc.returncode != 0 and not out.exists()
    assert "the load-back check failed: prompt 1 (record r0, " in proc.stderr
    assert "differs: transformers " in proc.stderr and "llama.cpp " in proc.stderr
    assert "f16 needs all" in proc.stderr


def test_exports_tsv_has_a_row_per_check(export, tmp_path):
    from workflow_scripts.export.exports_table import write_table

    checks = export / "results" / "exports" / "e1" / "checks"
    checks.mkdir(parents=True)
    proc, out = run_check(export, "f16", "m-f16.gguf")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (checks / "f16.json").write_text(out.read_text())
    write_table([checks / "f16.json"], tmp_path / "exports.tsv")
    with open(tmp_path / "exports.tsv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert [(r["experiment"], r["target"], r["verdict"], r["agreement"]) for r in rows] == [
        ("e1", "f16", "pass", "1.0")]
    assert int(rows[0]["size_bytes"]) == (export / "m-f16.gguf").stat().st_size


def test_an_rslora_adapter_keeps_its_scale_in_the_lora_gguf(export, tmp_path):
    """The same adapter written as rsLoRA (alpha/sqrt(r) giving the same scale): its LoRA GGUF
    must answer like the merged model too (the converter itself ignores use_rslora)."""
    import shutil

    rslora = tmp_path / "rslora"
    shutil.copytree(export / "adapter", rslora)
    config = json.loads((rslora / "adapter_config.json").read_text())
    config.update(use_rslora=True, lora_alpha=config["lora_alpha"] / config["r"] ** 0.5)
    (rslora / "adapter_config.json").write_text(json.dumps(config))
    converted("lora", "--model-dir", str(export / "base"), "--adapter-dir", str(rslora),
              "--outfile", str(tmp_path / "rslora.gguf"))
    proc, out = run_check(export, "lora", "base-f16.gguf", "--lora", str(tmp_path / "rslora.gguf"),
                          out_name="rslora")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(out.read_text())["agreement"] == 1.0

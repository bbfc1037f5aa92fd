"""Preference training on a random Qwen2: pairs tokenized behind a prompt rendered once, the
reference read from the reference job's files, rewards 0 before the first update when the
reference is the starting adapter, reference-free and KTO losses, and resume after a kill."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from random_chat_models import random_adapter, random_base

from workflow_scripts.common.io_utils import read_jsonl
from workflow_scripts.models.loading import load_tokenizer
from workflow_scripts.training import reference_logps
from workflow_scripts.training.preference_objective import resolved
from workflow_scripts.training.preference_tokenize import encode_record, fit, load_split, PairStats
from workflow_scripts.training.preference_tokenize import tokenize_pairs
from workflow_scripts.training.train_preference import train

REPO = Path(__file__).resolve().parent.parent
QWEN_STYLE = (  # Qwen2's template: a default system prompt when the conversation has none
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def pair(i: int, split: str) -> dict:
    return {"id": f"{split}-{i}", "messages": [{"role": "user", "content": f"问题{i}：今天怎么样？"}],
            "chosen": "很好，谢谢你。" * (1 + i % 2), "rejected": "不知道" * (1 + i % 3)}


def kto_record(i: int, split: str) -> dict:
    good = i % 2 == 0
    return {"id": f"{split}-{i}", "messages": [{"role": "user", "content": f"问题{i}"}],
            "completion": "很好，谢谢你。" if good else "不知道", "label": good}


def write_splits(root: Path, make) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 16), ("valid", 4), ("test", 4)):
        with open(root / f"{split}.pairs.jsonl", "w", encoding="utf-8") as handle:
            for i in range(n):
                handle.write(json.dumps(make(i, split), ensure_ascii=False) + "\n")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("preference")
    base = random_base(root / "base", hidden=32, layers=1)
    sft = random_adapter(base, root / "sft", seed=1)
    config = json.loads((sft / "adapter_config.json").read_text())
    (sft / "adapter_config.json").write_text(json.dumps(config | {"lora_dropout": 0.1}))  # as SFT's
    tokenize_pairs(write_splits(root / "pairs", pair), str(base), {"max_length": 96}, root / "tok")
    tokenize_pairs(write_splits(root / "kto", kto_record), str(base), {"max_length": 96},
                   root / "kto_tok")
    for start, adapter in (("sft", sft), ("base", None)):
        for data, out in (("tok", f"ref_{start}"), ("kto_tok", f"kto_ref_{start}")):
            reference_logps.main(["--config", json.dumps({"batch_size": 4}), "--model-dir", str(base),
                                  "--tokenized-dir", str(root / data), "--out-dir", str(root / out)]
                                 + (["--adapter-dir", str(adapter)] if adapter else []))
    return root


def job(loss: str = "dpo", steps: int = 4, **preference) -> dict:
    training = {"learning_rate": 2e-3, "epochs": 1, "max_steps": steps, "batch_size": 4,
                "grad_accum": 1, "scheduler": "linear", "warmup_ratio": 0.0, "weight_decay": 0.0,
                "max_grad_norm": 1.0, "gradient_checkpointing": False, "logging_steps": 1,
                "eval_steps": 2, "save_steps": 2, "max_length": 96}
    experiment = {"method": "lora", "stage": "preference", "training": training,
                  "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": "all-linear"},
                  "preference": resolved({"loss": loss, **preference})}
    return {"experiment": experiment, "seed": 3, "base_model": {"source": "path"}}


def test_a_default_system_prompt_appears_once_and_answers_hold_no_prompt_token(world):
    tokenizer = load_tokenizer(str(world / "base"))
    tokenizer.chat_template = QWEN_STYLE
    record = pair(1, "train")
    row = encode_record(tokenizer, record, "pairwise", 512, None, "record 1", PairStats())
    for role in ("chosen", "rejected"):
        text = tokenizer.decode(row[f"{role}_ids"])
        assert text.count("You are a helpful assistant.") == 1
        assert tokenizer.decode(row[f"{role}_ids"][row[f"{role}_start"]:]) == \
            record[role] + "<|im_end|>\n"
        assert tokenizer.decode(row[f"{role}_ids"][:row[f"{role}_start"]]).endswith(
            "<|im_start|>assistant\n")


def test_truncation_keeps_the_answers_and_cuts_the_prompt_from_the_left():
    prompt, chosen, rejected = list(range(100)), [1000 + i for i in range(10)], [2000, 2001]
    (c_ids, c_start), (r_ids, r_start) = fit(
        [(prompt + chosen, 100), (prompt + rejected, 100)], max_length=40)[0]
    assert c_ids[c_start:] == chosen and r_ids[r_start:] == rejected
    assert c_ids[:c_start] == prompt[-30:] and len(c_ids) == 40


def test_rewards_are_zero_before_the_first_update_when_the_reference_is_the_start(world, tmp_path):
    metrics = train(job(), str(world / "base"), world / "tok", world / "ref_sft",
                    str(world / "sft"), tmp_path / "out", tmp_path / "ckpt")
    rows = list(read_jsonl(tmp_path / "out" / "trainer_log.jsonl"))
    first = rows[0]
    assert first["step"] == 1
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert abs(first[key]) < 1e-5, (key, first[key])
    assert first["loss"] == pytest.approx(0.693147, abs=1e-5)
    assert metrics["eval_rewards/margins"] > 0  # and training moves them
    assert [r for r in rows if "loss" in r][-1]["rewards/margins"] > 0.01


def test_the_base_as_reference_for_an_sft_start_would_not_give_zero_rewards(world, tmp_path):
    train(job(steps=1), str(world / "base"), world / "tok", world / "ref_base",
          str(world / "sft"), tmp_path / "out", tmp_path / "ckpt")
    first = next(read_jsonl(tmp_path / "out" / "trainer_log.jsonl"))
    assert abs(first["rewards/chosen"]) > 1e-3


def test_a_reference_free_loss_trains_a_new_adapter_without_reference(world, tmp_path):
    metrics = train(job("simpo", gamma=0.5, beta=2.0), str(world / "base"), world / "tok", None,
                    None, tmp_path / "out", tmp_path / "ckpt")
    assert metrics["loss_type"] == "simpo" and metrics["steps"] == 4
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    rows = list(read_jsonl(tmp_path / "out" / "trainer_log.jsonl"))
    assert all(r["loss"] == r["loss"] for r in rows if "loss" in r)


def test_kto_trains_on_unpaired_completions(world, tmp_path):
    metrics = train(job("kto"), str(world / "base"), world / "kto_tok", world / "kto_ref_sft",
                    str(world / "sft"), tmp_path / "out", tmp_path / "ckpt")
    first = next(read_jsonl(tmp_path / "out" / "trainer_log.jsonl"))
    assert abs(first["rewards/chosen"]) < 1e-5 and first["kl"] == pytest.approx(0, abs=1e-5)
    assert metrics["eval_loss"] < first["loss"]


def test_the_tokenized_kto_rows_score_another_records_completion_as_kl(world):
    rows = load_split(world / "kto_tok", "train")[0].to_list()
    assert rows[1]["kl_ids"][rows[1]["kl_start"]:] == rows[0]["completion_ids"][rows[0]["completion_start"]:]
    assert rows[0]["kl_ids"][rows[0]["kl_start"]:] == rows[-1]["completion_ids"][rows[-1]["completion_start"]:]


SLOW_MAIN = (
    "import time, transformers\n"
    "step = transformers.Trainer.training_step\n"
    "transformers.Trainer.training_step = lambda *a, **k: (time.sleep(0.4), step(*a, **k))[1]\n"
    "from workflow_scripts.training.train_preference import main\n"
    "main()\n"
)


def run_cli(world: Path, root: Path, prefix: list[str]) -> subprocess.Popen:
    args = ["--config", json.dumps(job(steps=6)), "--model-dir", str(world / "base"),
            "--tokenized-dir", str(world / "tok"), "--reference-dir", str(world / "ref_sft"),
            "--init-adapter", str(world / "sft"), "--out-dir", str(root / "out"),
            "--checkpoint-dir", str(root / "ckpt"), "--threads", "1"]
    return subprocess.Popen([sys.executable, *prefix, *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_a_killed_run_resumes_to_the_same_adapter(world, tmp_path):
    from safetensors.torch import load_file

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(job(steps=6), str(world / "base"), world / "tok", world / "ref_sft", str(world / "sft"),
          straight / "out", straight / "ckpt")
    proc = run_cli(world, killed, ["-c", SLOW_MAIN])
    deadline = time.monotonic() + 300
    while not list((killed / "ckpt").glob("*/checkpoint-*/trainer_state.json")):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_cli(world, killed, ["-m", "workflow_scripts.training.train_preference"])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert json.loads((killed / "out" / "train_metrics.json").read_text())["resumed_from_checkpoint"]
    a = load_file(straight / "out" / "adapter_model.safetensors")
    b = load_file(killed / "out" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)

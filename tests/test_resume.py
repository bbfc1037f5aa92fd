"""A training killed with SIGKILL resumes from its last checkpoint and ends as if never killed,
also when it was killed in the middle of a later epoch."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from test_training import adapter_weights, data_dir, make_job, qwen2_dir  # noqa: F401

from workflow_scripts.common.io_utils import read_jsonl

REPO = Path(__file__).resolve().parent.parent
# The same CLI, each optimizer step slowed down so that the kill lands mid-run.
SLOW_MAIN = (
    "import time, transformers\n"
    "step = transformers.Trainer.training_step\n"
    "transformers.Trainer.training_step = lambda *a, **k: (time.sleep(0.3), step(*a, **k))[1]\n"
    "from workflow_scripts.training.train_adapter import main\n"
    "main()\n"
)


def cli(job: dict, model_dir: Path, data_dir: Path, root: Path) -> list[str]:
    return ["--config", json.dumps(job), "--model-dir", str(model_dir), "--data-dir", str(data_dir),
            "--out-dir", str(root / "adapter"), "--checkpoint-dir", str(root / "checkpoints"),
            "--progress-file", str(root / "progress.jsonl"), "--threads", "1"]


def run_cli(args: list[str], prefix: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *prefix, *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_after_first_checkpoint(proc: subprocess.Popen, checkpoints: Path) -> None:
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("*/checkpoint-*/trainer_state.json")):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]


def test_run_killed_in_a_later_epoch_resumes_to_the_same_result(qwen2_dir, data_dir, tmp_path):
    # 12 samples in batches of 4: 3 steps an epoch. The checkpoint at step 4 is one step into
    # the second epoch, so the resumed run skips a batch of an epoch whose order it must
    # draw exactly as the uninterrupted run did, then crosses into the third epoch.
    job = make_job(qwen2_dir, training__max_steps=8, training__batch_size=4,
                   training__save_steps=4, training__eval_steps=3)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    first = run_cli(cli(job, qwen2_dir, data_dir, straight), ["-m", "workflow_scripts.training.train_adapter"])
    second = run_cli(cli(job, qwen2_dir, data_dir, killed), ["-c", SLOW_MAIN])
    kill_after_first_checkpoint(second, killed / "checkpoints")
    finish(first)
    assert not (killed / "adapter" / "train_metrics.json").exists()
    finish(run_cli(cli(job, qwen2_dir, data_dir, killed), ["-m", "workflow_scripts.training.train_adapter"]))

    metrics = [json.loads((r / "adapter" / "train_metrics.json").read_text()) for r in (straight, killed)]
    assert [m["resumed_from_checkpoint"] for m in metrics] == [False, True]
    assert metrics[1]["final_loss"] == metrics[0]["final_loss"]
    assert metrics[1]["eval_loss"] == metrics[0]["eval_loss"]
    assert metrics[1]["train_tokens"] == metrics[0]["train_tokens"]
    weights = [adapter_weights(r / "adapter") for r in (straight, killed)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])

    logs = [list(read_jsonl(r / "adapter" / "trainer_log.jsonl")) for r in (straight, killed)]
    assert [r["step"] for r in logs[1]] == [r["step"] for r in logs[0]]
    assert [r.get("loss") for r in logs[1]] == [r.get("loss") for r in logs[0]]
    assert [r.get("eval_loss") for r in logs[1]] == [r.get("eval_loss") for r in logs[0]]
    train_rows = [r for r in logs[1] if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 9))
    elapsed = [r["elapsed_s"] for r in train_rows]
    assert elapsed == sorted(elapsed) and all("memory_mb" in r for r in train_rows)
    # the killed process's steps 1-4 (slowed by 0.3 s each) count in the step time
    assert 4 * 0.3 <= metrics[1]["train_step_time_s"] < metrics[1]["wall_time_s"]
    assert metrics[1]["peak_memory_mb"] >= max(r["memory_mb"] for r in train_rows)
    assert not list((killed / "checkpoints").iterdir())  # the finished job cleans up

    events = list(read_jsonl(killed / "progress.jsonl"))
    starts = [e for e in events if e["event"] == "start"]
    assert [e["resumed"] for e in starts] == [False, True] and starts[1]["step"] == 4
    assert events[-1]["event"] == "end" and events[-1]["step"] == 8
    resumed_logs = [e["step"] for e in events[events.index(starts[1]):] if e["event"] == "log"]
    assert resumed_logs == [5, 6, 7, 8]

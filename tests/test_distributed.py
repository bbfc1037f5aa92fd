"""Data-parallel training: two processes (gloo, CPU) match one process with the same global batch.

Two ranks with batch 2 see, at each optimizer step, the two consecutive batches of 2 that one
process sees with batch 2 and two accumulation steps (accelerate hands rank r batches r, r+2,
...), so both runs take the same steps on the same samples. The loss is averaged over the
global batch's tokens in both (`average_tokens_across_devices`); what differs is only the
order of floating-point sums, hence the tolerances below.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_training import adapter_weights, data_dir, make_job, qwen2_dir  # noqa: F401

from workflow_scripts.common.io_utils import read_jsonl

REPO = Path(__file__).resolve().parent.parent
LOSS_RTOL = 1e-4      # relative, on the last logged training loss and the final eval loss
WEIGHT_ATOL = 1e-5    # absolute, on every adapter tensor (their values are ~1e-2)

pytestmark = pytest.mark.slow


def cli(job: dict, model_dir: Path, data_dir: Path, root: Path) -> list[str]:
    return ["-m", "workflow_scripts.training.train_adapter", "--config", json.dumps(job),
            "--model-dir", str(model_dir), "--data-dir", str(data_dir),
            "--out-dir", str(root / "adapter"), "--checkpoint-dir", str(root / "checkpoints"),
            "--threads", "1"]


ENV = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", CUDA_VISIBLE_DEVICES="")
# train_adapter's CLI with every optimizer step slowed down, so that a kill lands mid-run
SLOW_MAIN = (
    "import time, transformers\n"
    "step = transformers.Trainer.training_step\n"
    "transformers.Trainer.training_step = lambda *a, **k: (time.sleep(0.5), step(*a, **k))[1]\n"
    "from workflow_scripts.training.train_adapter import main\n"
    "main()\n"
)


def run(prefix: list[str], args: list[str]) -> None:
    proc = subprocess.run([sys.executable, *prefix, *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]


def launcher(nproc: int) -> list[str]:
    """The launcher as rules/train.smk starts it (each rank through gpu_slots --rank)."""
    return ["-m", "workflow_scripts.launch.local_launch", "--nproc", str(nproc)]


def listening_addresses(pid: int) -> set[str]:
    """The addresses that the process and its descendants listen on (TCP)."""
    import psutil

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    found = set()
    for proc in procs:
        try:
            found |= {c.laddr.ip for c in proc.net_connections(kind="tcp")
                      if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:
            pass
    return found


def test_two_processes_match_one_with_the_same_global_batch(qwen2_dir, data_dir, tmp_path):
    common = dict(training__max_steps=4, training__logging_steps=1, training__eval_steps=0,
                  lora__dropout=0.0)
    single = make_job(qwen2_dir, training__batch_size=2, training__grad_accum=2, **common)
    double = make_job(qwen2_dir, training__batch_size=2, training__devices=2, **common)
    one, two = tmp_path / "one", tmp_path / "two"
    run([], cli(single, qwen2_dir, data_dir, one))
    run(launcher(2), cli(double, qwen2_dir, data_dir, two))

    metrics = [json.loads((r / "adapter" / "train_metrics.json").read_text()) for r in (one, two)]
    assert metrics[0]["steps"] == metrics[1]["steps"] == 4
    for key in ("final_loss", "eval_loss"):
        assert metrics[1][key] == pytest.approx(metrics[0][key], rel=LOSS_RTOL), key
    logs = [list(read_jsonl(r / "adapter" / "trainer_log.jsonl")) for r in (one, two)]
    losses = [[row["loss"] for row in log if "loss" in row] for log in logs]
    assert losses[1] == pytest.approx(losses[0], rel=LOSS_RTOL)
    # 12 samples, 4 per optimizer step in both runs: the same epochs at the same steps
    assert [r["epoch"] for r in logs[1]] == [r["epoch"] for r in logs[0]]

    weights = [adapter_weights(r / "adapter") for r in (one, two)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        torch.testing.assert_close(weights[1][name], weights[0][name], atol=WEIGHT_ATOL, rtol=0)
    assert any(w.abs().sum() > 0 for n, w in weights[1].items() if "lora_B" in n)
    # only rank 0 wrote: one log row per step, no leftovers of a second writer
    assert [r["step"] for r in logs[1] if "loss" in r] == [1, 2, 3, 4]
    assert not list((two / "checkpoints").iterdir())


def test_a_killed_two_process_training_resumes_to_the_same_result(qwen2_dir, data_dir, tmp_path):
    job = make_job(qwen2_dir, training__batch_size=2, training__devices=2, training__max_steps=6,
                   training__save_steps=2, training__logging_steps=1, lora__dropout=0.0)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(launcher(2), cli(job, qwen2_dir, data_dir, straight))

    (tmp_path / "slow_train.py").write_text(SLOW_MAIN)
    # SIGKILL to the launcher alone: its ranks must die with it
    proc = subprocess.Popen([sys.executable, *launcher(2), "-m", "slow_train",
                             *cli(job, qwen2_dir, data_dir, killed)[2:]], cwd=REPO,
                            env=dict(ENV, PYTHONPATH=str(tmp_path)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, listening = time.monotonic() + 300, set()
    while not list((killed / "checkpoints").glob("*/checkpoint-*/trainer_state.json")):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        listening |= listening_addresses(proc.pid)
        time.sleep(0.05)
    # gloo's sockets were seen, and nothing of the training listened beyond the loopback
    assert listening and listening <= {"127.0.0.1", "::1"}, listening
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(5)  # ranks that outlived the launcher would go on and finish
    assert not (killed / "adapter" / "train_metrics.json").exists()
    assert list((killed / "checkpoints").glob("*/checkpoint-*"))
    run(launcher(2), cli(job, qwen2_dir, data_dir, killed))

    metrics = [json.loads((r / "adapter" / "train_metrics.json").read_text())
               for r in (straight, killed)]
    assert [m["resumed_from_checkpoint"] for m in metrics] == [False, True]
    assert metrics[1]["final_loss"] == pytest.approx(metrics[0]["final_loss"], rel=1e-6)
    weights = [adapter_weights(r / "adapter") for r in (straight, killed)]
    for name in weights[0]:
        torch.testing.assert_close(weights[1][name], weights[0][name], atol=1e-7, rtol=0)

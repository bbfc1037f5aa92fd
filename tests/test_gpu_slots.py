"""Device slots on a workstation: concurrent jobs never share a GPU, and a dead job frees its own."""
from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workflow_scripts.gpu_slots import launch_env

REPO = Path(__file__).resolve().parent.parent
# A job that notes the devices it was given and the time it held them.
JOB = (
    "import json, os, sys, time\n"
    "start = time.monotonic(); time.sleep(float(sys.argv[2]))\n"
    "row = {'devices': os.environ['CUDA_VISIBLE_DEVICES'], 'start': start, 'end': time.monotonic()}\n"
    "with open(sys.argv[1], 'a') as fh: fh.write(json.dumps(row) + '\\n')\n"
)


def launcher(slots: Path, gpus: int, *cmd: str, total: int = 2, env: dict | None = None):
    args = [sys.executable, "-m", "workflow_scripts.gpu_slots", "--gpus", str(gpus),
            "--total", str(total), "--slots-dir", str(slots), "--", *cmd]
    env = {k: v for k, v in (env or os.environ).items() if k != "SLURM_JOB_ID"}
    return subprocess.Popen(args, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)


def test_concurrent_jobs_over_two_slots_never_share_a_device(tmp_path):
    log = tmp_path / "held.jsonl"
    sizes = [1, 2, 1, 1, 2, 1, 1, 1, 2, 1, 1, 1]
    jobs = [launcher(tmp_path / "slots", n, sys.executable, "-c", JOB, str(log), "0.15")
            for n in sizes]
    for job in jobs:  # no deadlock: every job ends, each holding the slots for 0.15 s
        _, err = job.communicate(timeout=120)
        assert job.returncode == 0, err
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(len(r["devices"].split(",")) for r in rows) == sorted(sizes)
    assert {d for r in rows for d in r["devices"].split(",")} == {"0", "1"}
    for a, b in itertools.combinations(rows, 2):
        overlap = a["start"] < b["end"] and b["start"] < a["end"]
        if overlap:
            assert not set(a["devices"].split(",")) & set(b["devices"].split(",")), (a, b)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_a_killed_holder_frees_its_slots(tmp_path):
    slots, started, second = tmp_path / "slots", tmp_path / "started", tmp_path / "second"
    holder = launcher(slots, 2, sys.executable, "-c",
                      f"import time; open({str(started)!r}, 'w').close(); time.sleep(120)")
    wait_for(started, holder)
    waiter = launcher(slots, 1, sys.executable, "-c",
                      f"import os; open({str(second)!r}, 'w').write(os.environ['CUDA_VISIBLE_DEVICES'])")
    time.sleep(1.5)
    assert waiter.poll() is None and not second.exists()  # both slots are taken
    holder.send_signal(signal.SIGKILL)
    assert holder.wait() == -signal.SIGKILL
    _, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, err
    assert second.read_text() in {"0", "1"}


@pytest.mark.parametrize("visible,total,gpus,expected", [
    (None, 2, 1, "0"),
    ("4,6", None, 2, "4,6"),        # slots stand for the devices already visible
    ("4,6", None, 0, ""),           # no GPU asked: no GPU visible
    (None, 2, 0, ""),
])
def test_the_child_sees_only_its_devices(tmp_path, visible, total, gpus, expected):
    env = {"CUDA_VISIBLE_DEVICES": visible} if visible else {}
    child_env, fds = launch_env(gpus, total, env, tmp_path)
    assert child_env["CUDA_VISIBLE_DEVICES"] == expected
    assert len(fds) == gpus
    for fd in fds:
        os.close(fd)


@pytest.mark.parametrize("env,total", [({"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "3"}, 4),
                                       ({}, 0), ({}, None)])
def test_nothing_changes_under_slurm_or_without_gpus(tmp_path, env, total):
    assert launch_env(1, total, env, tmp_path) == (env, [])


def test_asking_for_more_gpus_than_the_machine_has_fails_clearly(tmp_path):
    with pytest.raises(SystemExit, match="asks for 3 GPUs but this machine has 2"):
        launch_env(3, 2, {}, tmp_path)

"""Device slots on a workstation: concurrent jobs never share a GPU, and a dead job frees its own."""
from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from workflow_scripts.launch.gpu_slots import launch_env, multi_node_resources, stage_resources, train_launcher

REPO = Path(__file__).resolve().parent.parent
# A job that notes the devices it was given and the time it held them.
JOB = (
    "import json, os, sys, time\n"
    "start = time.monotonic(); time.sleep(float(sys.argv[2]))\n"
    "row = {'devices': os.environ['CUDA_VISIBLE_DEVICES'], 'start': start, 'end': time.monotonic()}\n"
    "with open(sys.argv[1], 'a') as fh: fh.write(json.dumps(row) + '\\n')\n"
)


def launcher(slots: Path, gpus: int, *cmd: str, total: int = 2, env: dict | None = None):
    args = [sys.executable, "-m", "workflow_scripts.launch.gpu_slots", "--gpus", str(gpus),
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


def test_the_workflow_starts_each_job_through_its_slots(tmp_path):
    """What `snakemake --resources gpu=2` would run: every training, merge, evaluation and
    pretraining holds its GPUs, and two devices per training mean two processes (local_launch)."""
    from workflow_runner import make_workflow

    workflow = make_workflow(tmp_path)
    config = yaml.safe_load(workflow.config.read_text())
    config["sweeps"]["rank"]["base"]["training"] = {"devices": 2}
    config["sweeps"]["rank"]["base"]["resources"] = {"threads": 2}
    config["experiments"]["lccc-qlora"]["resources"] = {"merge": {"gpu": 0}}  # merge on the CPU
    workflow.config.write_text(yaml.safe_dump(config))
    proc = workflow.run("-n", "-p", "--cores", "4", "--resources", "gpu=2")
    commands = [line for line in proc.stdout.splitlines() if "workflow_scripts.launch.gpu_slots" in line]
    trains = {re.search(r"--out-dir results/adapters/(\S+)", c).group(1): c
              for c in commands if "training.train_adapter" in c}
    assert set(trains) >= {"rank-r2", "rank-r4", "lccc-qlora"}
    for name in ("rank-r2", "rank-r4"):
        assert "--gpus 2 --total 2 -- python -m workflow_scripts.launch.local_launch --nproc 2 " \
               "-m workflow_scripts.training.train_adapter" in trains[name]
        assert "--threads 1 " in trains[name]  # the rule's 2 threads over two processes
    for name in set(trains) - {"rank-r2", "rank-r4"}:  # one device: one process on one GPU
        assert "--gpus 1 --total 2 -- python -m workflow_scripts.training.train_adapter" in trains[name]
    builds = [c for c in commands if "build_base_model" in c]  # pretraining the scratch model
    assert len(builds) == 1 and "--gpus 1 --total 2 -- python -m" in builds[0]
    merges = [c for c in commands if "merge_adapter" in c]
    assert len(merges) == 1 and "--gpus 0 --total 2 -- python -m" in merges[0]
    preference = [c for c in commands if "training.train_preference" in c]  # rank-dpo
    assert len(preference) == 1 and "--gpus 1 --total 2 -- python -m" in preference[0]
    evaluations = [c for c in commands if "evaluation.evaluate " in c]
    assert len(evaluations) == 12  # six adapters and six base evaluations
    assert all("--gpus 1 --total 2 -- python -m workflow_scripts.evaluation.evaluate" in c
               for c in evaluations)


def experiment(devices=1, nodes=1, **resources) -> dict:
    return {"training": {"devices": devices, "nodes": nodes}, "resources": resources}


def test_evaluation_and_merge_take_a_gpu_when_training_does():
    assert stage_resources(experiment(devices=4), "train")["gpu"] == 4
    assert stage_resources(experiment(devices=4), "evaluate")["gpu"] == 1
    assert stage_resources(experiment(gpu=0), "merge")["gpu"] == 0       # a CPU experiment
    own = experiment(mem_mb=9000, evaluate={"gpu": 0, "runtime": 30})
    assert stage_resources(own, "evaluate") == {"gpu": 0, "mem_mb": 9000, "runtime": 30,
                                                "threads": 2}


def test_threads_come_from_the_experiment_and_evaluation_may_set_its_own():
    assert stage_resources(experiment(), "train")["threads"] == 2
    one = experiment(threads=1)
    assert [stage_resources(one, s)["threads"] for s in ("train", "evaluate", "merge")] == [1, 1, 1]
    mixed = experiment(threads=1, evaluate={"threads": 4})
    assert stage_resources(mixed, "evaluate")["threads"] == 4


def test_a_training_across_nodes_asks_slurm_for_one_task_and_its_gpus_per_node():
    assert set(multi_node_resources(experiment(devices=4)).values()) == {None}
    assert multi_node_resources(experiment(devices=4, nodes=2)) == {
        "gres": "gpu:4", "nodes": 2, "tasks": 2, "tasks_per_gpu": 0, "mpi": "srun"}
    launcher = train_launcher({"devices": 4, "nodes": 2})
    assert launcher.startswith("srun --nodes 2 --ntasks-per-node 1 python -m torch.distributed.run")
    assert "--nnodes 2 --nproc-per-node 4 --rdzv-backend c10d" in launcher
    assert train_launcher({"devices": 1, "nodes": 1}) == "python"

"""A cut-down smoke workflow through the Slurm profile, on a real one-node Slurm on localhost.

The cluster comes from tests/slurm/start_slurm.sh. Without one the test is skipped, except
where the environment variable CI is set: there the test starts the cluster itself and a
cluster that does not come up is a failure.

What it runs is profiles/slurm/config.yaml with only the cluster's names and sizes changed
(tests/slurm/make_test_profile.py): the test partition instead of the placeholders, no
account, resources capped to the node, no GPU (the node has none). What it checks:

* every output of the workflow (smoke.yaml cut to one dataset, the rank sweep and a QLoRA
  experiment: `_slurm_config`) exists, and a second dry run has nothing left to do;
* every job of a non-local rule ran as a Slurm job (its log under logs/slurm, its job
  COMPLETED in `scontrol`), and no local rule did;
* each job's sbatch request (partition, --mem, -t, --cpus-per-task) is the resources that
  Snakemake resolved from the profile and the config, and Slurm granted exactly that;
* the rank sweep trains with `training.devices: 2`: two processes (local_launch, gloo) in one
  Slurm job, which saw twice the samples per step;
* with the GPU requests left in, each training job's sbatch line asks for what its experiment
  uses: `--gpus=N` for training.devices N, and across `training.nodes: 2` one task and
  `--gres=gpu:N` per node (this CPU node then refuses them: Slurm's answer is checked too).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "slurm"))
from make_test_profile import write_test_profile  # noqa: E402

SNAKEFILE = REPO / "Snakefile"
SMOKE_CONFIG = REPO / "tests" / "configs" / "smoke.yaml"
START_SLURM = REPO / "tests" / "slurm" / "start_slurm.sh"
SLURM_RULES = {"prepare_dataset", "build_base_model", "tokenize_dataset", "train_adapter", "evaluate",
               "evaluate_base"}

pytestmark = pytest.mark.slurm

SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")
SBATCH_CALL = re.compile(r"sbatch call: (sbatch .*?) --wrap=")


def _node_state() -> str:
    proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


@pytest.fixture(scope="module")
def slurm_cluster() -> str:
    if os.environ.get("CI"):
        cmd = ["bash", str(START_SLURM)]
        if os.geteuid() != 0:
            cmd = ["sudo", "-n", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, f"{START_SLURM} failed:\n{proc.stdout}\n{proc.stderr}"
    elif shutil.which("sinfo") is None:
        pytest.skip("no Slurm here (sinfo not found): `bash scripts/setup.sh --test`, then "
                    "`sudo bash tests/slurm/start_slurm.sh`")
    state = _node_state()
    if not re.match(r"(idle|mix|alloc|completing)", state):
        pytest.skip(f"Slurm is not up (node state: {state or 'no answer'}): "
                    "`sudo bash tests/slurm/start_slurm.sh` starts a one-node cluster")
    return state


def _snakemake(workdir: Path, profile: Path, *args: str, check: bool = True, timeout=600,
               config: Path = SMOKE_CONFIG):
    env = dict(os.environ)
    # Jobs get this environment (sbatch --export=ALL): the venv's python and snakemake first.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("SLURM_JOB_ID", None)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir),
           "--configfile", str(config), "--profile", str(profile), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, env=env,
                          timeout=timeout)
    out = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-10000:]}")
    return proc.returncode, out


def _sbatch_flags(call: str) -> dict[str, str]:
    flags = {}
    for key, pattern in {"partition": r" -p (\S+)", "mem_mb": r" --mem (\d+)",
                         "runtime": r" -t (\d+)", "cpus": r" --cpus-per-task=(\d+)",
                         "gpus": r" --gpus=(\S+)", "gres": r" --gres=(\S+)",
                         "nodes": r" --nodes=(\d+)", "tasks": r" --ntasks=(\d+)",
                         "comment": r" --comment (\S+)",
                         "output": r" --output (\S+)"}.items():
        m = re.search(pattern, call)
        if m:
            flags[key] = m.group(1).strip("'")
    return flags


def _scontrol(jobid: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", jobid], capture_output=True,
                         text=True).stdout
    return dict(f.split("=", 1) for f in out.split() if "=" in f)


def _minutes(limit: str) -> int:
    """Slurm's TimeLimit ([D-]HH:MM:SS or MM:SS) in minutes."""
    days, _, hms = limit.rpartition("-")
    parts = [int(p) for p in hms.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    return int(days or 0) * 1440 + parts[0] * 60 + parts[1] + (parts[2] > 0)


def _slurm_config(path: Path) -> Path:
    """The smoke config cut to what the cluster's side needs, with the rank sweep trained by
    two processes per experiment: one dataset, the scratch model, the two-point sweep and one
    QLoRA experiment, so every rule that goes to Slurm runs (tool calls, benchmarks and the
    merge are local-side features the shared smoke run covers)."""
    config = yaml.safe_load(SMOKE_CONFIG.read_text())
    config["datasets"] = {"alpaca_zh": config["datasets"]["alpaca_zh"]}
    config["base_models"]["tiny"]["pretrain"]["datasets"] = ["alpaca_zh"]
    config.pop("benchmarks")
    config["defaults"]["evaluation"].pop("benchmarks")
    config.pop("merge")
    config["experiments"] = {"qlora": {"base_model": "tiny", "dataset": "alpaca_zh", "method": "qlora"}}
    config["sweeps"]["rank"]["base"].setdefault("training", {})["devices"] = 2
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_smoke_workflow_runs_through_slurm(slurm_cluster, tmp_path):
    if not SNAKEFILE.exists() or not SMOKE_CONFIG.exists():
        pytest.skip("the workflow (Snakefile, tests/configs/smoke.yaml) is not there yet")
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "data").symlink_to(REPO / "data")  # the smoke config's paths are relative
    (workdir / "tests").symlink_to(REPO / "tests")  # its tool-calling files
    profile = tmp_path / "profile"
    derived = write_test_profile(profile)
    config = _slurm_config(tmp_path / "config.yaml")

    # Every output of the DAG, listed before anything runs.
    _, summary = _snakemake(workdir, profile, "--summary", config=config)
    outputs = [line.split("\t")[0] for line in summary.splitlines()[1:] if "\t" in line]
    assert outputs, summary[-3000:]

    started = time.monotonic()
    _, log = _snakemake(workdir, profile, "--verbose", config=config, timeout=1200)
    (tmp_path / "snakemake.log").write_text(log)
    print(f"\nsmoke workflow through Slurm: {time.monotonic() - started:.0f} s")

    # The same outputs as a local run, and nothing left to do.
    missing = [out for out in outputs if not (workdir / out).exists()]
    assert not missing, f"missing after the Slurm run: {missing}"
    for out in ["results/report/training_report.md", "results/report/training_report.html"]:
        assert (workdir / out).is_file(), out
    assert list((workdir / "results" / "metrics").glob("*.tsv"))
    _, again = _snakemake(workdir, profile, "--dry-run", config=config)
    assert "Nothing to be done" in again, again[-3000:]

    # The jobs as Snakemake announced them, with the resources it resolved for each.
    jobs = _announced_jobs(log)
    cluster_jobs = [j for j in jobs if not j["local"]]
    assert {j["rule"] for j in cluster_jobs} >= SLURM_RULES, jobs
    trains = [j for j in cluster_jobs if j["rule"] == "train_adapter"]
    adapters = list((workdir / "results" / "adapters").glob("*/adapter_model.safetensors"))
    assert len(adapters) == len(trains) > 0
    slurm_logdir = workdir / derived["slurm-logdir"]
    for rule in {j["rule"] for j in jobs if j["local"]}:
        assert not (slurm_logdir / f"rule_{rule}").exists(), f"local rule {rule} went to Slurm"
    _check_slurm_jobs(log, cluster_jobs, slurm_logdir)

    # What the profile names is what the jobs got.
    for rule, resources in derived["set-resources"].items():
        for job in (j for j in cluster_jobs if j["rule"] == rule):
            for key, value in resources.items():
                assert job["resources"][key] == str(value), (rule, key, job["resources"])
    for job in trains:
        assert job["resources"]["cpus_per_task"] == str(derived["set-threads"]["train_adapter"])
        assert "gpu" not in job["resources"] or job["resources"]["gpu"] == "0"
    _check_two_process_trainings(workdir, log)
    _check_gpu_requests(workdir, tmp_path, config, len(trains))


def _check_two_process_trainings(workdir: Path, log: str) -> None:
    """The rank sweep's jobs ran two processes (local_launch), each step taking 2 x 4 samples."""
    launched = re.findall(r"local_launch --nproc 2 -m workflow_scripts.training.train_adapter .*?"
                          r"--out-dir results/adapters/(\S+)", log)
    assert set(launched) == {"rank-r2", "rank-r4"}, log[-5000:]
    for name in ("rank-r2", "rank-r4"):
        adapter = workdir / "results/adapters" / name
        samples = json.loads((adapter / "train_metrics.json").read_text())["tokenization"]["kept"]
        rows = [json.loads(line) for line in (adapter / "trainer_log.jsonl").read_text().splitlines()]
        last = [r for r in rows if "loss" in r][-1]
        # an epoch is ceil(samples / 8) steps for 2 x 4 samples a step, twice that for one process
        assert last["step"] == 4
        assert last["epoch"] == pytest.approx(4 / math.ceil(samples / 8), abs=1e-3), (samples, last)


def _check_gpu_requests(workdir: Path, tmp_path: Path, config: Path, n_trains: int) -> None:
    """With the GPU requests left in, each training's sbatch asks for its experiment's GPUs.

    This node has no GPU, so Slurm refuses them: proof that they reached Slurm. (On a test
    cluster with GPUs the jobs are accepted and Slurm records the GPUs.)"""
    gpu_profile = tmp_path / "profile-gpu"
    write_test_profile(gpu_profile, keep_gpu=True)
    gpu_config = yaml.safe_load(config.read_text())
    gpu_config["experiments"]["two-nodes"] = {"base_model": "tiny", "dataset": "alpaca_zh",
                                              "training": {"devices": 2, "nodes": 2}}
    (tmp_path / "gpu-config.yaml").write_text(yaml.safe_dump(gpu_config))
    _, gpu_log = _snakemake(workdir, gpu_profile, "--verbose", "--forcerun", "train_adapter",
                            "--until", "train_adapter", check=False,
                            config=tmp_path / "gpu-config.yaml")
    calls = {_sbatch_flags(c)["comment"].rsplit("_", 1)[-1]: _sbatch_flags(c)
             for c in SBATCH_CALL.findall(gpu_log) if "rule_train_adapter" in c}
    assert len(calls) == n_trains + 1, gpu_log[-5000:]
    for name, gpus in {"rank-r2": "2", "rank-r4": "2", "qlora": "1"}.items():
        assert calls[name].get("gpus") == gpus and "nodes" not in calls[name], calls[name]
    across = calls["two-nodes"]
    assert (across.get("nodes"), across.get("tasks"), across.get("gres")) == ("2", "2", "gpu:2")
    assert "gpus" not in across, across
    assert "Invalid generic resource" in gpu_log or "node configuration is not available" \
        in gpu_log, gpu_log[-5000:]


def _announced_jobs(log: str) -> list[dict]:
    """Rule, wildcards and resolved resources of each job a run's log announces."""
    jobs, job = [], None
    for line in log.splitlines():
        m = re.match(r"(local)?rule (\w+):$", line.strip())
        if m:
            job = {"rule": m.group(2), "local": bool(m.group(1)), "wildcards": "", "resources": {}}
            jobs.append(job)
        elif job is not None and line.startswith("    wildcards: "):
            job["wildcards"] = line.split(": ", 1)[1]
        elif job is not None and line.startswith("    resources: "):
            for item in line.split(": ", 1)[1].split(", "):
                key, _, value = item.partition("=")
                job["resources"][key] = value
    return jobs


def _wildcards_slug(wildcards: str) -> str:
    """The plugin's --comment suffix for a job's wildcards: the values joined by '_'."""
    return "_".join(item.split("=", 1)[1] for item in wildcards.split(", ") if "=" in item)


def _check_slurm_jobs(log: str, cluster_jobs: list[dict], slurm_logdir: Path) -> None:
    """Each cluster job was one Slurm job that asked for, and got, what Snakemake resolved."""
    submitted = SUBMITTED.findall(log)
    # sbatch runs in two threads: pair each call with its job id through its log path
    calls = {_sbatch_flags(c)["output"]: c for c in SBATCH_CALL.findall(log)}
    assert len(submitted) == len(calls) == len(cluster_jobs), (len(submitted), len(cluster_jobs))
    for _, slurm_id, logfile in submitted:
        assert Path(logfile).is_file() and Path(logfile).is_relative_to(slurm_logdir), logfile
        call = calls[logfile.replace(f"/{slurm_id}.log", "/%j.log")]
        flags = _sbatch_flags(call)
        rule = re.match(r"rule_(\w+?)(_wildcards_.*)?$", flags["comment"]).group(1)
        wildcards = (flags["comment"].split("_wildcards_", 1) + [""])[1]
        want = next(j for j in cluster_jobs if j["rule"] == rule
                    and _wildcards_slug(j["wildcards"]) == wildcards)["resources"]
        assert flags["partition"] == want["slurm_partition"], call
        assert flags["mem_mb"] == want["mem_mb"] and flags["runtime"] == want["runtime"], call
        assert flags["cpus"] == want["cpus_per_task"], call
        assert "gpus" not in flags, call  # the test profile asks for no GPU
        granted = _scontrol(slurm_id)
        if granted:  # finished jobs stay in slurmctld for MinJobAge (an hour on the test cluster)
            assert granted["JobState"] == "COMPLETED", granted
            assert granted["Partition"] == flags["partition"], granted
            assert granted["MinMemoryNode"] == f"{flags['mem_mb']}M", granted
            assert _minutes(granted["TimeLimit"]) == int(flags["runtime"]), granted
            assert granted["CPUs/Task"] == flags["cpus"], granted

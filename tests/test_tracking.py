"""Experiment tracking against a real `mlflow server` (SQLite backend, a free loopback port), a
SQLite-URI store and SwanLab's local run files, on a clone of the smoke run: only the
tracking jobs (and the report, which shows their status) run on top of it."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from workflow_runner import Workflow, deps_python

EXPERIMENTS = {"lccc-qlora", "rank-r2", "rank-r4", "tools-openai", "tools-sharegpt", "rank-dpo"}
TRACKING_JOBS = {"track_experiment": 6, "render_report": 1, "track_report": 1, "all": 1}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_mlflow_server(directory: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on 127.0.0.1 with a SQLite backend and served artifacts."""
    port = free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}",
         "--artifacts-destination", str(directory / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=directory, stdout=open(directory / "server.log", "w"), stderr=subprocess.STDOUT,
        # no background job workers (seven extra processes this test never uses)
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as response:
                if response.status == 200:
                    return proc, uri
        except OSError:
            time.sleep(0.5)
        assert proc.poll() is None, (directory / "server.log").read_text()[-3000:]
    stop(proc)
    raise AssertionError("mlflow server did not answer: " + (directory / "server.log").read_text()[-3000:])


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def with_tracking(workflow: Workflow, tracking: dict) -> None:
    config = yaml.safe_load(workflow.config.read_text())
    config["tracking"] = tracking
    workflow.config.write_text(yaml.safe_dump(config, sort_keys=False))


def tsv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("*.tsv"))}


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def all_runs(uri: str) -> list:
    c = client(uri)
    experiment = c.get_experiment_by_name("lora-zh")
    return c.search_runs([experiment.experiment_id], max_results=1000) if experiment else []


def curve(workflow: Workflow, experiment: str, field: str) -> dict[int, float]:
    rows = (json.loads(line) for line in
            (workflow.workdir / "results/adapters" / experiment / "trainer_log.jsonl").open())
    return {r["step"]: r[field] for r in rows if field in r}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mlflow-server")
    proc, uri = start_mlflow_server(directory)
    yield proc, uri
    stop(proc)


@pytest.fixture(scope="module")
def tracked(smoke_run, server, tmp_path_factory) -> Workflow:
    """The smoke run with MLflow (the server) and SwanLab (local mode) tracking on."""
    workflow = smoke_run.clone(tmp_path_factory.mktemp("tracked"))
    with_tracking(workflow, {"mlflow": {"tracking_uri": server[1], "experiment": "lora-zh"},
                             "swanlab": {"mode": "local", "logdir": "results/swanlog"}})
    assert workflow.planned_jobs() == TRACKING_JOBS
    workflow.run("--cores", "2")
    return workflow


@pytest.mark.slow
def test_one_run_per_experiment_with_params_tags_curves_and_final_metrics(tracked, server):
    runs = all_runs(server[1])
    assert sorted(r.data.tags["lora_zh.experiment"] for r in runs) == sorted(EXPERIMENTS)
    experiments = {r["experiment"]: r for r in tsv(tracked.workdir / "results/metrics/experiments.tsv")}
    comparison = {(r["experiment"], r["metric"]): r
                  for r in tsv(tracked.workdir / "results/metrics/comparison.tsv")}
    c = client(server[1])
    for run in runs:
        name, data = run.data.tags["lora_zh.experiment"], run.data
        assert run.info.run_name == name and run.info.status == "FINISHED"
        assert data.params["training.learning_rate"] == "0.001"
        assert data.params["lora.r"] == experiments[name]["r"]
        assert data.params["model.hidden_size"] == "32" and data.params["seed"] == "7"
        assert data.tags["lora_zh.run_key"] == f"{name}@{data.tags['lora_zh.config_hash']}"
        assert data.tags["lora_zh.dataset"] == experiments[name]["dataset"]
        assert data.tags["lora_zh.method"] == experiments[name]["method"]
        assert data.tags["lora_zh.model_hash"].startswith("sha256:")
        train_file = "train.pairs" if name == "rank-dpo" else "train"  # what it trained on
        assert len(data.tags[f"lora_zh.data_sha256.{train_file}"]) == 64
        assert data.tags["lora_zh.snakemake_job"] == f"track_experiment[experiment={name}]"
        assert data.tags["lora_zh.host"] == socket.gethostname()
        assert data.tags["lora_zh.git_commit"] and "lora_zh.verdict.test_loss" in data.tags
        history = {m.step: m.value for m in c.get_metric_history(run.info.run_id, "train_loss")}
        assert history == pytest.approx(curve(tracked, name, "loss"))
        assert {m.step for m in c.get_metric_history(run.info.run_id, "eval_loss")} == \
            set(curve(tracked, name, "eval_loss"))
        for key in ("test_loss", "test_loss_low", "test_loss_high", "perplexity_high"):
            assert data.metrics[key] == pytest.approx(float(experiments[name][key]))
        paired = comparison[(name, "loss")]
        assert data.metrics["base_test_loss"] == pytest.approx(float(paired["base"]))
        for suffix in ("", "_low", "_high"):
            assert data.metrics[f"test_loss_diff{suffix}"] == pytest.approx(
                float(paired[f"difference{suffix}"]))
        artifacts = {f.path for folder in ("adapter", "evaluation", "report")
                     for f in c.list_artifacts(run.info.run_id, folder)}
        assert {"adapter/adapter_config.json", "evaluation/metrics.json",
                "report/training_report.html"} <= artifacts
        assert "adapter/adapter_model.safetensors" not in artifacts  # log_adapter is off
    report = (tracked.workdir / "results/report/training_report.md").read_text()
    assert f"tracking.mlflow | 6 of 6 experiments logged ({server[1]})" in report


def swanlab_scalars(run_file: Path) -> dict[str, dict[int, float]]:
    """Every scalar of a SwanLab run file, read back with SwanLab's own record reader."""
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record
    from swanlab.sdk.internal.core_python.store import DataStoreReader

    reader, scalars = DataStoreReader(), {}
    reader.open(run_file)
    for raw in reader:
        record = Record()
        record.ParseFromString(raw)
        if record.HasField("scalar"):
            scalars.setdefault(record.scalar.key, {})[record.scalar.step] = record.scalar.value.number
    reader.close()
    return scalars


@pytest.mark.slow
def test_swanlab_local_run_files_hold_the_same_metrics(tracked):
    logdir = tracked.workdir / "results/swanlog"
    experiments = {r["experiment"]: r for r in tsv(tracked.workdir / "results/metrics/experiments.tsv")}
    run_dirs = sorted(logdir.glob("run-*"))
    assert len(run_dirs) == len(EXPERIMENTS)
    for name in EXPERIMENTS:
        receipt = json.loads((tracked.workdir / f"results/tracking/experiments/{name}.json").read_text())
        swan = receipt["backends"]["swanlab"]
        scalars = swanlab_scalars(tracked.workdir / swan["run_file"])
        assert scalars["train_loss"] == pytest.approx(curve(tracked, name, "loss"))
        (test_loss,) = scalars["test_loss"].values()
        assert test_loss == pytest.approx(float(experiments[name]["test_loss"]))
        config = yaml.safe_load((tracked.workdir / swan["run_file"]).parent.joinpath(
            "files", "config.yaml").read_text())
        assert config["lora_zh.run_key"]["value"] == receipt["run_key"]


@pytest.mark.slow
def test_reruns_add_nothing_and_a_changed_learning_rate_adds_exactly_one_run(tracked, server):
    uri = server[1]
    before = {r.info.run_id: r for r in all_runs(uri)}
    assert tracked.planned_jobs() == {}
    tracked.run("--cores", "2")  # nothing to do
    assert set(r.info.run_id for r in all_runs(uri)) == set(before)

    config = yaml.safe_load(tracked.config.read_text())
    config["experiments"]["tools-openai"]["training"]["learning_rate"] = 2.0e-3
    tracked.config.write_text(yaml.safe_dump(config, sort_keys=False))
    planned = tracked.planned_jobs()
    assert planned["train_adapter"] == 1 and planned["track_experiment"] == 6
    tracked.run("--cores", "2")
    after = {r.info.run_id: r for r in all_runs(uri)}
    (new_id,) = set(after) - set(before)
    new = after[new_id]
    assert new.data.tags["lora_zh.experiment"] == "tools-openai"
    assert new.data.params["training.learning_rate"] == "0.002"
    old = [r for r in after.values() if r.info.run_id != new_id
           and r.data.tags["lora_zh.experiment"] == "tools-openai"]
    assert [r.data.tags.get("lora_zh.superseded_by") for r in old] == [new_id]
    c = client(uri)
    for run_id, run in before.items():  # the others were updated in place, curves not doubled
        steps = [m.step for m in c.get_metric_history(run_id, "train_loss")]
        assert sorted(steps) == sorted(set(steps))
        if run.data.tags["lora_zh.experiment"] != "tools-openai":
            assert "lora_zh.superseded_by" not in after[run_id].data.tags
    swan_dirs = list((tracked.workdir / "results/swanlog").glob("run-*"))
    assert len(swan_dirs) == len(EXPERIMENTS) + 1  # the new config's run beside the old one


@pytest.mark.slow
def test_a_server_stopped_mid_run_is_a_warning_and_changes_no_result(tracked, server):
    """Runs last: it stops the module's server once the first experiment is logged."""
    proc, uri = server
    results = tracked.workdir / "results"
    tables = digests(results / "metrics")
    receipts = results / "tracking" / "experiments"
    started = time.time()
    # the tracking jobs run again (forced), one at a time
    cmd = [deps_python(), "-m", "snakemake", "-s", str(tracked.code / "Snakefile"), "--directory",
           str(tracked.workdir), "--configfile", str(tracked.config), "--cores", "1",
           "-R", "track_experiment"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.Popen(cmd, cwd=tracked.workdir, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    while run.poll() is None and not any(p.stat().st_mtime > started for p in receipts.glob("*.json")):
        time.sleep(0.05)
    stop(proc)
    output = run.communicate(timeout=900)[0]
    assert run.returncode == 0, output[-4000:]
    assert digests(results / "metrics") == tables
    statuses = [json.loads(p.read_text())["backends"]["mlflow"] for p in sorted(receipts.glob("*.json"))]
    assert len(statuses) == len(EXPERIMENTS)
    warned = [s for s in statuses if s["status"] == "warning"]
    assert warned and len(warned) < len(statuses), statuses
    # a job that found the server gone says so; one it vanished under names the failed request
    assert any(f"no MLflow server answers at {uri}" in s["warning"] for s in warned), warned
    logs = "".join(p.read_text() for p in (tracked.workdir / "logs/track_experiment").glob("*.log"))
    assert "WARNING: tracking (mlflow): no MLflow server answers" in logs
    report = (results / "report/training_report.md").read_text()
    assert "tracking.mlflow warning" in report and "no MLflow server answers" in report
    assert f"tracking.mlflow | {len(statuses) - len(warned)} of {len(EXPERIMENTS)} experiments logged" in report


@pytest.mark.slow
def test_parallel_jobs_share_one_sqlite_store(smoke_run, tmp_path):
    """Four tracking jobs at once write one SQLite file (they take turns under its lock)."""
    workflow = smoke_run.clone(tmp_path)
    with_tracking(workflow, {"mlflow": {"tracking_uri": "sqlite:///results/mlflow.db"}})
    workflow.run("--cores", "4")
    uri = f"sqlite:///{workflow.workdir / 'results/mlflow.db'}"
    runs = all_runs(uri)
    assert sorted(r.data.tags["lora_zh.experiment"] for r in runs) == sorted(EXPERIMENTS)
    assert all(r.data.metrics["test_loss"] > 0 and r.info.status == "FINISHED" for r in runs)
    for receipt in (workflow.workdir / "results/tracking/experiments").glob("*.json"):
        assert json.loads(receipt.read_text())["backends"]["mlflow"]["status"] == "ok"


def test_a_file_store_or_unknown_mode_is_refused_before_any_job(tmp_path):
    from workflow_scripts.common.config import ConfigError, validate

    smoke = yaml.safe_load((Path(__file__).parent / "configs" / "smoke.yaml").read_text())
    for tracking, key in (({"mlflow": {"tracking_uri": "./mlruns"}}, "tracking.mlflow.tracking_uri"),
                          ({"mlflow": {"tracking_uri": "file:///tmp/mlruns"}}, "tracking.mlflow.tracking_uri"),
                          ({"swanlab": {"mode": "online"}}, "tracking.swanlab.mode"),
                          ({"wandb": {}}, "tracking.wandb")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate({**smoke, "tracking": tracking}, "smoke.yaml")
    filled = validate({**smoke, "tracking": {"swanlab": {}}})["tracking"]
    assert filled == {"swanlab": {"mode": "local", "logdir": "results/swanlog", "project": "lora-zh"},
                      "log_adapter": False}
    assert validate(smoke)["tracking"] == {"log_adapter": False}  # off by default


def test_credentials_in_a_tracking_uri_never_reach_the_job_log_or_the_receipt(capsys):
    """The config refuses such a URI (test_config_validation); a job run by hand with one still
    writes no password: urllib's own error quotes it (`nonnumeric port: 'pw@host'`)."""
    from workflow_scripts.tracking import mlflow_backend
    from workflow_scripts.tracking.track_experiment import guarded

    secret = "s3cr3t-pw"
    uri = f"http://alice:{secret}@127.0.0.1"

    def stdlib_error():
        urllib.request.urlopen(uri + "/health", timeout=2)

    for log in (stdlib_error, lambda: mlflow_backend.attach({"tracking_uri": uri}, "run-id", {})):
        receipt = guarded("mlflow", log, (uri,))
        out = capsys.readouterr()
        assert receipt["status"] == "warning" and receipt["warning"]
        assert secret not in json.dumps(receipt) + out.out + out.err
    assert mlflow_backend.redact(uri) == "http://127.0.0.1"


def test_curves_hold_each_point_once_after_a_crash_or_a_longer_trainer_log(tmp_path):
    """On a real SQLite store: a job that stopped before tagging its curves, then a trainer
    log that grew under the same run key, leave one point per step in every series."""
    from workflow_scripts.common.io_utils import file_sha256
    from workflow_scripts.tracking import mlflow_backend
    from workflow_scripts.tracking.run_record import TAG_PREFIX, RunRecord

    log = tmp_path / "trainer_log.jsonl"
    rows = [{"step": s, "loss": 3.0 - 0.1 * s, "learning_rate": 1e-4 * s} for s in range(1, 6)]
    record = RunRecord("exp", {}, {"lora.r": "8"},
                       {TAG_PREFIX + k: v for k, v in (("run_key", "exp@abc"), ("config_hash", "abc"),
                                                       ("experiment", "exp"))}, {}, log)
    settings = {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "curves"}

    def log_rows(n: int) -> dict:
        log.write_text("".join(json.dumps(r) + "\n" for r in rows[:n]))
        return mlflow_backend.log_record(settings, record, file_sha256(log))

    first = log_rows(3)
    assert first["curve_points_logged"] == 6
    tracker = client(settings["tracking_uri"])
    tracker.delete_tag(first["run_id"], mlflow_backend.CURVES_TAG)  # stopped before the tag
    assert log_rows(3)["curve_points_logged"] == 0
    assert log_rows(5)["curve_points_logged"] == 4  # the two new steps only
    for name, field in (("train_loss", "loss"), ("learning_rate", "learning_rate")):
        history = tracker.get_metric_history(first["run_id"], name)
        assert sorted((m.step, m.value) for m in history) == [(r["step"], r[field]) for r in rows]


def test_preference_curves_are_logged_under_trl_names(tmp_path):
    """A preference experiment's rewards and log-probs (train and eval_) become curves of
    their own on a real SQLite store, beside the loss."""
    from workflow_scripts.common.io_utils import file_sha256
    from workflow_scripts.tracking import mlflow_backend
    from workflow_scripts.tracking.run_record import TAG_PREFIX, RunRecord

    log = tmp_path / "trainer_log.jsonl"
    rows = [{"step": 1, "loss": 0.69, "rewards/margins": 0.0, "rewards/accuracies": 0.0},
            {"step": 2, "loss": 0.5, "rewards/margins": 0.8, "rewards/accuracies": 1.0},
            {"step": 2, "eval_loss": 0.55, "eval_rewards/margins": 0.6, "eval_logps/chosen": -9.5}]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    record = RunRecord("pref", {}, {}, {TAG_PREFIX + k: v for k, v in (
        ("run_key", "pref@abc"), ("config_hash", "abc"), ("experiment", "pref"))}, {}, log)
    settings = {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "pref"}
    logged = mlflow_backend.log_record(settings, record, file_sha256(log))
    tracker = client(settings["tracking_uri"])
    history = {name: sorted((m.step, m.value) for m in tracker.get_metric_history(logged["run_id"], name))
               for name in ("rewards/margins", "rewards/accuracies", "eval_rewards/margins",
                            "eval_logps/chosen", "train_loss")}
    assert history == {"rewards/margins": [(1, 0.0), (2, 0.8)],
                       "rewards/accuracies": [(1, 0.0), (2, 1.0)],
                       "eval_rewards/margins": [(2, 0.6)], "eval_logps/chosen": [(2, -9.5)],
                       "train_loss": [(1, 0.69), (2, 0.5)]}

"""Log a RunRecord to MLflow: one run per (experiment, config hash), found again by its tag.

A rerun of the same config updates that run and logs only what changed; a changed config
makes a new run and tags the experiment's earlier runs superseded. A SQLite store is written
under an exclusive lock on `<file>.lock`, so parallel jobs on one machine take turns.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from workflow_scripts.common.credentials import without_userinfo
from workflow_scripts.tracking.run_record import CURVES, TAG_PREFIX, RunRecord

RUN_KEY_TAG = TAG_PREFIX + "run_key"
CURVES_TAG = TAG_PREFIX + "curves_sha256"
SUPERSEDED_TAG = TAG_PREFIX + "superseded_by"
BATCH = 1000  # MLflow accepts at most 1000 metrics per log_batch


class TrackerUnavailable(RuntimeError):
    """The tracking store cannot be reached; the job goes on with a warning."""


def quiet_client_settings() -> None:
    """Fail within seconds instead of retrying for minutes against a server that is down
    (a user's own environment settings win)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Raise TrackerUnavailable unless an http(s) tracking server answers its health check."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        health = without_userinfo(uri).rstrip("/") + "/health"  # urllib takes no user:password@
        with urllib.request.urlopen(health, timeout=timeout) as response:
            response.read()
    except (urllib.error.URLError, OSError) as err:
        raise TrackerUnavailable(f"no MLflow server answers at {redact(uri)}: {err}") from None


def redact(uri: str) -> str:
    """The URI without user:password (never written to logs or receipts)."""
    return without_userinfo(uri)


def sqlite_file(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock beside a SQLite store for the whole logging (no-op for servers)."""
    db = sqlite_file(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def experiment_id(client, name: str, uri: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if sqlite_file(uri) is not None:  # artifacts beside the SQLite file, not in the cwd
        location = (sqlite_file(uri).resolve().parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # noqa: BLE001 - a parallel job created it first
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def find_runs(client, exp_id: str, tag: str, value: str) -> list:
    from mlflow.entities import ViewType

    escaped = value.replace("'", "\\'")
    return client.search_runs([exp_id], filter_string=f"tags.`{tag}` = '{escaped}'",
                              run_view_type=ViewType.ACTIVE_ONLY, max_results=1000)


def open_run(client, exp_id: str, record: RunRecord) -> tuple[object, bool]:
    """(the run for this record, whether it was created now)."""
    runs = find_runs(client, exp_id, RUN_KEY_TAG, record.run_key)
    if runs:
        return min(runs, key=lambda r: r.info.start_time), False
    run = client.create_run(exp_id, run_name=record.experiment,
                            tags={RUN_KEY_TAG: record.run_key})
    return run, True


def mark_superseded(client, exp_id: str, record: RunRecord, run_id: str) -> list[str]:
    """Tag this experiment's runs of other configs as superseded by `run_id`."""
    marked = []
    for old in find_runs(client, exp_id, TAG_PREFIX + "experiment", record.experiment):
        if old.info.run_id != run_id and old.data.tags.get(RUN_KEY_TAG) != record.run_key \
                and old.data.tags.get(SUPERSEDED_TAG) != run_id:
            client.set_tag(old.info.run_id, SUPERSEDED_TAG, run_id)
            client.set_tag(old.info.run_id, TAG_PREFIX + "superseded", "true")
            marked.append(old.info.run_id)
    return marked


def log_in_batches(client, run_id: str, metrics=(), params=(), tags=()) -> None:
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start:start + 100])
    for start in range(0, len(tags), 100):
        client.log_batch(run_id, tags=tags[start:start + 100])
    for start in range(0, len(metrics), BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + BATCH])


def log_curves(client, run, record: RunRecord, curves_sha: str) -> int:
    """Step metrics, unless this very trainer log was logged to the run before; then only the
    points the run's series do not hold yet, so that a changed trainer log (a longer run under
    the same run key) or a job that stopped before setting the tag adds no point twice.
    MLflow deletes no single point: a changed value at a step already logged is added beside
    the old one."""
    from mlflow.entities import Metric

    if run.data.tags.get(CURVES_TAG) == curves_sha:
        return 0
    run_id = run.info.run_id
    logged = {name: {(m.step, m.value) for m in client.get_metric_history(run_id, name)}
              for name in set(CURVES.values()) & set(run.data.metrics)}
    now = int(time.time() * 1000)
    batch, count = [], 0
    for name, step, value in record.curve_points():
        if (step, value) in logged.get(name, ()):
            continue
        batch.append(Metric(name, value, now, step))
        if len(batch) == BATCH:
            log_in_batches(client, run_id, metrics=batch)
            count, batch = count + len(batch), []
    log_in_batches(client, run_id, metrics=batch)
    client.set_tag(run_id, CURVES_TAG, curves_sha)
    return count + len(batch)


def log_record(settings: dict, record: RunRecord, curves_sha: str) -> dict:
    """Log the record; returns what the receipt keeps (run and experiment ids, counts)."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    uri = settings["tracking_uri"]
    quiet_client_settings()
    check_server(uri)
    with store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        exp_id = experiment_id(client, settings.get("experiment", "lora-zh"), uri)
        run, created = open_run(client, exp_id, record)
        run_id = run.info.run_id
        logged = run.data.params
        params = [Param(k, v) for k, v in sorted(record.params.items()) if k not in logged]
        tags = [RunTag(k, v) for k, v in sorted(record.tags.items())
                if run.data.tags.get(k) != v]
        now = int(time.time() * 1000)
        final = [Metric(k, v, now, 0) for k, v in sorted(record.final.items())
                 if run.data.metrics.get(k) != v]
        log_in_batches(client, run_id, metrics=final, params=params, tags=tags)
        curve_points = log_curves(client, run, record, curves_sha)
        for name, path in sorted(record.artifacts.items()):
            client.log_artifact(run_id, str(path), os.path.dirname(name) or None)
        superseded = mark_superseded(client, exp_id, record, run_id)
        if SUPERSEDED_TAG in run.data.tags:  # this config is current again
            client.delete_tag(run_id, SUPERSEDED_TAG)
            client.delete_tag(run_id, TAG_PREFIX + "superseded")
        client.set_terminated(run_id, "FINISHED")
    return {"run_id": run_id, "experiment_id": exp_id, "created": created,
            "params_logged": len(params), "final_metrics_logged": len(final),
            "curve_points_logged": curve_points, "superseded": superseded}


def attach(settings: dict, run_id: str, files: dict[str, Path]) -> None:
    """Add files (the report) to an existing run."""
    from mlflow.tracking import MlflowClient

    uri = settings["tracking_uri"]
    quiet_client_settings()
    check_server(uri)
    with store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        for name, path in sorted(files.items()):
            client.log_artifact(run_id, str(path), os.path.dirname(name) or None)

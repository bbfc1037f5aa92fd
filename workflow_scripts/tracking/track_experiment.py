"""Log one experiment to the configured trackers (MLflow, SwanLab) and write a receipt.

    python -m workflow_scripts.tracking.track_experiment --config '<job JSON>' \\
        --results results --receipt results/tracking/experiments/NAME.json

Each backend is independent: a missing package, an unreachable server or any error while
logging becomes a warning on stderr (the job log) and in the receipt, which the report's
Environment section shows; the job itself still succeeds and no result file changes.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from workflow_scripts.common.cli import parser as cli_parser
from workflow_scripts.common.credentials import redact
from workflow_scripts.common.io_utils import file_sha256, write_json
from workflow_scripts.tracking.mlflow_backend import TrackerUnavailable
from workflow_scripts.tracking.model_hash import model_hash
from workflow_scripts.tracking.run_record import RunRecord, build_record


def warn(backend: str, message: str, uris: tuple[str, ...] = ()) -> dict:
    """Print and return a warning, with any credentials of `uris` (and of any URI in it) hidden."""
    message = redact(message, uris)
    print(f"WARNING: tracking ({backend}): {message}", file=sys.stderr, flush=True)
    return {"status": "warning", "warning": message}


def guarded(backend: str, log, uris: tuple[str, ...] = ()) -> dict:
    """Run one backend's logging; any failure is a warning, never the job's failure. What is
    written of an error (the traceback in the job log, the message in the receipt) has the
    credentials of `uris` hidden: an error about a URI quotes it."""
    try:
        return {"status": "ok", **log()}
    except ImportError as err:
        return warn(backend, f"package not installed ({err}); nothing was logged", uris)
    except TrackerUnavailable as err:
        return warn(backend, str(err), uris)
    except Exception as err:  # noqa: BLE001 - a tracker must never fail the workflow
        print(redact(traceback.format_exc(), uris), file=sys.stderr, end="", flush=True)
        return warn(backend, f"{type(err).__name__}: {redact(str(err), uris)}".strip()[:500], uris)


def log_mlflow(settings: dict, record: RunRecord) -> dict:
    from workflow_scripts.tracking import mlflow_backend

    out = mlflow_backend.log_record(settings, record, file_sha256(record.trainer_log))
    return {"tracking_uri": mlflow_backend.redact(settings["tracking_uri"]),
            "experiment": settings.get("experiment", "lora-zh"), **out}


def log_swanlab(settings: dict, record: RunRecord) -> dict:
    from workflow_scripts.tracking import swanlab_backend

    out = swanlab_backend.log_record(settings, record)
    notes = swanlab_backend.warnings_for(settings)
    for note in notes:
        warn("swanlab", note)
    return {**out, **({"warning": "; ".join(notes)} if notes else {})}


def track(job: dict, results: Path) -> dict:
    """Log to every configured backend; the receipt's content."""
    tracking = job["tracking"]
    settings = job["settings"]
    digest = model_hash(settings["model"], Path(job["model_dir"]), results / "tracking" / "model_hashes")
    record = build_record(job, results, digest)
    receipt = {"experiment": record.experiment, "config_hash": record.config_hash,
               "run_key": record.run_key, "backends": {}}
    if tracking.get("mlflow"):
        receipt["backends"]["mlflow"] = guarded("mlflow", lambda: log_mlflow(tracking["mlflow"], record),
                                                (tracking["mlflow"]["tracking_uri"],))
    if tracking.get("swanlab"):
        receipt["backends"]["swanlab"] = guarded("swanlab", lambda: log_swanlab(tracking["swanlab"], record))
    return receipt


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser(__doc__)
    parser.add_argument("--config", required=True,
                        help="the job's JSON: experiment, settings, tracking, model_dir")
    parser.add_argument("--results", default=Path("results"), type=Path,
                        help="the results directory the experiment's files are in")
    parser.add_argument("--receipt", required=True, type=Path,
                        help="where the JSON receipt (run ids, warnings) is written")
    args = parser.parse_args(argv)
    receipt = track(json.loads(args.config), args.results)
    write_json(args.receipt, receipt)
    print(json.dumps(receipt, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()

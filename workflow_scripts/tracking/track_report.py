"""Attach the rendered report to every experiment's MLflow run named in the receipts.

    python -m workflow_scripts.tracking.track_report --receipts results/tracking/experiments/*.json \\
        --report results/report/training_report.html --out results/tracking/report.json

The report is rendered after the experiments are logged (it shows their tracking warnings),
so it is added to the runs by this separate job. Failures are warnings, as for the runs.
"""
from __future__ import annotations

import json
from pathlib import Path

from workflow_scripts.common.cli import parser as cli_parser
from workflow_scripts.common.io_utils import read_json, write_json
from workflow_scripts.tracking.track_experiment import guarded


def attach_report(tracking: dict, receipts: list[Path], reports: list[Path]) -> dict:
    from workflow_scripts.tracking import mlflow_backend

    files = {f"report/{p.name}": p for p in reports}
    out = {}
    for path in receipts:
        receipt = read_json(path)
        mlflow = receipt.get("backends", {}).get("mlflow", {})
        if tracking.get("mlflow") and mlflow.get("run_id"):
            out[receipt["experiment"]] = guarded("mlflow", lambda: (
                mlflow_backend.attach(tracking["mlflow"], mlflow["run_id"], files)
                or {"run_id": mlflow["run_id"]}), (tracking["mlflow"]["tracking_uri"],))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = cli_parser(__doc__)
    parser.add_argument("--config", required=True, help="the tracking settings as JSON")
    parser.add_argument("--receipts", nargs="*", type=Path, default=[],
                        help="track_experiment's receipts")
    parser.add_argument("--report", nargs="+", type=Path, required=True,
                        help="the report files to attach")
    parser.add_argument("--out", required=True, type=Path, help="this job's receipt")
    args = parser.parse_args(argv)
    out = attach_report(json.loads(args.config), args.receipts, args.report)
    write_json(args.out, out)
    print(json.dumps(out, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()

"""The Logs page finds Slurm job logs where the shipped Slurm profile writes them, and labels
each log by what wrote it."""
from __future__ import annotations

from pathlib import Path

import yaml

from workflow_scripts.studio.logs import log_listing

REPO = Path(__file__).resolve().parent.parent


def test_slurm_logs_of_the_shipped_profile_are_labelled_slurm(tmp_path):
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text(encoding="utf-8"))
    logs = {
        f"{profile['slurm-logdir']}/rule_train_adapter/experiment_rank-r2/41.log": "slurm",
        ".snakemake/slurm_logs/rule_evaluate/experiment_rank-r2/42.log": "slurm",
        "logs/train_adapter/rank-r2.log": "rule",
        ".snakemake/log/2026-12-06T184500.snakemake.log": "snakemake",
    }
    for name in logs:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("ok\n", encoding="utf-8")
    assert {row["name"]: row["kind"] for row in log_listing(tmp_path)} == logs

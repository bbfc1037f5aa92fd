"""The Logs page: every job log of the working directory, looked up by name only.

Rule logs are `logs/**`; Slurm job logs are `logs/slurm/**` (the shipped Slurm profile's
`slurm-logdir`) or `.snakemake/slurm_logs/**` (the Slurm plugin's default, for a profile
that sets none); Snakemake's own run logs are `.snakemake/log/*`. A log's name is its path relative to the working directory, but
a request's name is only ever matched against this table, so `../` gets nowhere.
"""
from __future__ import annotations

import time
from pathlib import Path

from workflow_scripts.studio.errors import UnknownName

LOG_ROOTS = ("logs", ".snakemake/slurm_logs", ".snakemake/log")
SLURM_LOG_DIRS = ("logs/slurm/", ".snakemake/slurm_logs/")
LOG_SUFFIXES = (".log", ".jsonl", ".out", ".err", ".txt")


def log_table(workdir: Path) -> dict[str, Path]:
    """Name -> path of every log file, newest first."""
    found: list[tuple[float, str, Path]] = []
    for root in LOG_ROOTS:
        base = workdir / root
        if not base.is_dir():
            continue
        for path in base.rglob("*"):
            if path.suffix in LOG_SUFFIXES and path.is_file() and not path.is_symlink():
                found.append((path.stat().st_mtime, path.relative_to(workdir).as_posix(), path))
    found.sort(key=lambda item: (-item[0], item[1]))
    return {name: path for _, name, path in found}


def find_log(workdir: Path, name: str) -> Path:
    table = log_table(workdir)
    if name not in table:
        raise UnknownName("log", name, table)
    return table[name]


def log_listing(workdir: Path, active_within_s: float = 30.0) -> list[dict]:
    now = time.time()
    rows = []
    for name, path in log_table(workdir).items():
        st = path.stat()
        kind = "slurm" if name.startswith(SLURM_LOG_DIRS) else (
            "snakemake" if name.startswith(".snakemake/log/") else "rule")
        rows.append({"name": name, "kind": kind, "size": st.st_size, "modified": st.st_mtime,
                     "active": now - st.st_mtime < active_within_s})
    return rows

"""Run the real workflow in a scratch directory, as a user would from the command line."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SNAKEFILE = REPO / "Snakefile"
SMOKE_CONFIG = REPO / "tests" / "configs" / "smoke.yaml"


def make_workdir(path: Path, config: Path = SMOKE_CONFIG) -> Path:
    """A working directory holding the raw data and a copy of the config as config.yaml."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "data" / "raw", path / "data" / "raw", dirs_exist_ok=True)
    shutil.copy(config, path / "config.yaml")
    return path


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Rule name -> job count that a dry run would execute ({} when nothing is to be done)."""
    proc = snakemake(workdir, "-n", "--quiet", "rules", *args)
    counts: dict[str, int] = {}
    in_table = False
    for line in (proc.stdout + proc.stderr).splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
            continue
        if in_table and len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts

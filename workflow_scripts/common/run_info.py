"""What a training job ran with: config, seed, software, code version, data and hardware.

Imports torch only inside `hardware_info`, so the module stays cheap to import.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from workflow_scripts.common.io_utils import file_sha256

PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "datasets", "tokenizers",
            "accelerate", "snakemake", "pandas")
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # workflow_scripts/
DISTRIBUTION = "lora-zh-workflow"  # pyproject.toml's project name


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed version per distribution, "not installed" when absent."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit(directory: Path = PACKAGE_DIR) -> str:
    """HEAD of the checkout holding this package; for this package installed from git, the
    commit pip recorded; "unknown" otherwise."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory,
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        result = None
    if result is not None and result.returncode == 0:
        return result.stdout.strip()
    installed = installed_vcs_info() if directory == PACKAGE_DIR else {}
    return installed.get("commit_id", "unknown")


def installed_vcs_info(distribution: str = DISTRIBUTION) -> dict[str, str]:
    """What pip recorded of `pip install git+URL@REV` (PEP 610's vcs_info: the
    requested_revision and the commit_id); {} for any other install (a checkout, an editable
    install, a wheel) or none."""
    try:
        text = metadata.distribution(distribution).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return {}
    return json.loads(text).get("vcs_info", {}) if text else {}


def memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else the machine type."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info() -> dict:
    """CPU, core count, memory and, where torch sees one, the GPU and CUDA version."""
    gpu, cuda = None, None
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        cuda = torch.version.cuda
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "memory_gb": memory_gb(),
        "gpu": gpu,
        "cuda": cuda,
    }


def collect_run_info(config_slice: dict, seed: int, data_files: list[str]) -> dict:
    """The run_info.json record of docs/artifacts.md for one job."""
    return {
        "config": config_slice,
        "seed": seed,
        "packages": package_versions(),
        "git_commit": git_commit(),
        "data_files": {str(path): file_sha256(path) for path in data_files},
        "hardware": hardware_info(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def write_run_info(out_dir: str | Path, config_slice: dict, seed: int, data_files: list,
                   extra: dict | None = None) -> dict:
    """Record the run next to the artifacts it made, as `out_dir/run_info.json`; `extra`
    adds what the job knows of its own run (processes and devices that trained)."""
    from workflow_scripts.common.io_utils import write_json

    info = collect_run_info(config_slice, seed, [str(f) for f in data_files]) | (extra or {})
    write_json(Path(out_dir) / "run_info.json", info)
    return info

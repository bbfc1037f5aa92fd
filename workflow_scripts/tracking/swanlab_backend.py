"""Log a RunRecord to SwanLab: local and offline runs are files under `logdir`, cloud runs
upload. The run id is derived from the run key, so a cloud rerun resumes the same run and a
local rerun replaces the folder it wrote before: one run per (experiment, config hash)."""
from __future__ import annotations

import hashlib
import importlib.util
import shutil
import string
from itertools import groupby
from pathlib import Path

from workflow_scripts.tracking.run_record import TAG_PREFIX, RunRecord

MODES = {"local": "local", "offline": "offline", "cloud": "online"}
ID_ALPHABET = string.ascii_lowercase + string.digits


def run_id(run_key: str) -> str:
    """21 characters, SwanLab's id shape, fixed by the run key."""
    digest = int.from_bytes(hashlib.sha256(run_key.encode()).digest(), "big")
    chars = []
    for _ in range(21):
        digest, index = divmod(digest, len(ID_ALPHABET))
        chars.append(ID_ALPHABET[index])
    return "".join(chars)


def warnings_for(settings: dict) -> list[str]:
    if settings.get("mode", "local") == "local" and importlib.util.find_spec("swanboard") is None:
        return ["swanboard is not installed: the run files are written, but `swanlab watch` "
                "needs `pip install 'swanlab[dashboard]'` to show them"]
    return []


def run_file(logdir: Path, rid: str) -> Path | None:
    """The newest run folder's `.swanlab` record file for this id, if any."""
    found = sorted(logdir.glob(f"run-*-{rid}/run-{rid}.swanlab"))
    return found[-1] if found else None


def log_record(settings: dict, record: RunRecord) -> dict:
    import swanlab

    mode = settings.get("mode", "local")
    logdir = Path(settings.get("logdir", "results/swanlog"))
    rid = run_id(record.run_key)
    before = set(logdir.glob(f"run-*-{rid}")) if mode != "cloud" else set()
    config = {**record.params, **record.tags}
    tags = [record.experiment, record.tags[TAG_PREFIX + "dataset"],
            record.tags[TAG_PREFIX + "base_model"], record.tags[TAG_PREFIX + "method"],
            record.config_hash]
    swanlab.init(mode=MODES[mode], log_dir=str(logdir),
                       project=settings.get("project", "lora-zh"), name=record.experiment, id=rid, resume="allow", config=config, tags=tags,
                       reinit=True)
    last_step = 0
    try:
        points = record.curve_points()
        for step, group in groupby(points, key=lambda p: p[1]):
            swanlab.log({name: value for name, _, value in group}, step=step)
            last_step = max(last_step, step)
        if record.final:
            swanlab.log(dict(record.final), step=last_step + 1)
    finally:
        swanlab.finish()
    for old in before:  # the folder this run key wrote before: replaced by the new one
        shutil.rmtree(old, ignore_errors=True)
    written = run_file(logdir, rid) if mode != "cloud" else None
    return {"run_id": rid, "mode": mode, "project": settings.get("project", "lora-zh"),
            "run_file": str(written) if written else None}

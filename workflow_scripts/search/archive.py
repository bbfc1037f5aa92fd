"""Each told trial's files kept in its study's own folder.

Trial names do not depend on the study (`<search>-t<k>`), so when a changed space, objective
or base starts a new study, its trials train again under the same names and replace
results/adapters/<trial>/. What the old study's trials produced stays with the old study:
when a round is told, every file of its trials' adapter folders (the adapter, trainer_log.jsonl,
train_metrics.json, run_info.json) and of their evaluations that exist by then is linked into
results/search/<search>/<key>/trials/<trial>/{adapters,eval}/. Hard links cost no space;
Snakemake removes a job's outputs before it runs, so a retrained trial writes new files and the
links keep the old ones (a copy is made where a link cannot be).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

KEPT = ("adapters", "eval")


def keep_trials(trials: list[str], results: Path, study_dir: Path) -> int:
    """Link (or copy) the trials' files under `study_dir`/trials; the number of files kept."""
    kept = 0
    for trial in trials:
        for kind in KEPT:
            source = results / kind / trial
            if not source.is_dir():
                continue
            for path in sorted(p for p in source.rglob("*") if p.is_file()):
                target = study_dir / "trials" / trial / kind / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.exists():
                    target.unlink()
                try:
                    os.link(path, target)
                except OSError:
                    shutil.copy2(path, target)
                kept += 1
    return kept

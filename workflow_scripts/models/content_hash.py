"""SHA-256 of a model directory's files, each file hashed once and then read from a cache.

A checkpoint key must change when any model or data file changes, but hashing a 15 GB model
on every start of every rank costs tens of seconds on a local disk and minutes on a network
file system. The cache keeps, per file, its digest beside its size, mtime, ctime and inode;
a file whose stat still matches is not read again. Writing a file changes its mtime and
ctime (ctime cannot be set back by a user), replacing it changes its inode, so a changed
file is hashed again. One JSON file per directory (named by a hash of its resolved path)
under the cache directory, written atomically; an exclusive lock around the check makes
concurrent ranks and jobs wait for the first one's hashing instead of repeating it.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from workflow_scripts.common.io_utils import file_sha256


def model_files(model_dir: str | Path) -> list[Path]:
    """Every file of a model directory, hidden ones (download caches) left out."""
    root = Path(model_dir)
    return sorted(p for p in root.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def stat_stamp(path: Path) -> list[int]:
    """What changes when a file's content may have changed: size, mtime, ctime, inode."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


@contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_sha256s(files: list[Path], cache_file: Path) -> dict[str, str]:
    """{path: sha256} for `files`, hashing only those whose stat differs from the cache's."""
    with locked(cache_file.with_suffix(".lock")):
        try:
            cache = json.loads(cache_file.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            cache = {}
        entries, changed = {}, False
        for path in files:
            key, stamp = str(path.resolve()), stat_stamp(path)
            known = cache.get(key)
            if known and known["stamp"] == stamp:
                entries[key] = known
            else:
                entries[key] = {"stamp": stamp, "sha256": file_sha256(path)}
                changed = True
        if changed or entries.keys() != cache.keys():
            tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(entries, indent=0), encoding="utf-8")
            os.replace(tmp, cache_file)
    return {str(p): entries[str(p.resolve())]["sha256"] for p in files}


def cache_file_for(group: str | Path, cache_dir: Path) -> Path:
    """The cache file of one directory (or group of files), named by its resolved path."""
    name = hashlib.sha256(str(Path(group).resolve()).encode()).hexdigest()[:16]
    return cache_dir / f"{name}.json"


def model_file_hashes(model_dir: str | Path, cache_dir: Path | None) -> list[tuple[str, str]]:
    """(path relative to the model directory, sha256) of every model file, sorted; through
    the cache in `cache_dir`, or hashing everything when it is None."""
    root = Path(model_dir)
    files = model_files(root)
    if cache_dir is None:
        return [(str(p.relative_to(root)), file_sha256(p)) for p in files]
    digests = cached_sha256s(files, cache_file_for(root, cache_dir))
    return [(str(p.relative_to(root)), digests[str(p)]) for p in files]


def data_file_hashes(paths: list[Path], cache_dir: Path | None) -> list[tuple[str, str]]:
    """(file name, sha256 or 'absent') of each data file, in order, through the cache."""
    present = [p for p in paths if p.exists()]
    if cache_dir is None or not present:
        digests = {str(p): file_sha256(p) for p in present}
    else:
        digests = cached_sha256s(present, cache_file_for(present[0].parent, cache_dir))
    return [(p.name, digests.get(str(p), "absent")) for p in paths]

"""The checkpoint key hashes each model file once: later starts read the digest cache, and a
changed file still changes the key."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from workflow_scripts.models import content_hash
from workflow_scripts.training.train_adapter import checkpoint_key

JOB = {"experiment": {"method": "lora"}, "seed": 1}


@pytest.fixture
def dirs(tmp_path) -> tuple[Path, list[Path], Path]:
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "model.safetensors").write_bytes(os.urandom(4096))
    (model / "config.json").write_text('{"a": 1}')
    (model / "sub" / "tokenizer.json").write_text("{}")
    (model / ".cache").mkdir()
    (model / ".cache" / "lock").write_text("x")  # hidden: not part of the model
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text('{"id": 1}\n')
    return model, [data / "train.jsonl", data / "valid.jsonl"], tmp_path / "cache"


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """Names of the files whose content gets read and hashed."""
    calls: list[str] = []
    real = content_hash.file_sha256

    def counting(path, *args, **kwargs):
        calls.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(content_hash, "file_sha256", counting)
    return calls


def test_the_cached_key_is_the_uncached_key_and_a_restart_reads_no_file(dirs, hashed):
    model, data, cache = dirs
    uncached = checkpoint_key(JOB, data, model)
    assert sorted(hashed) == ["config.json", "model.safetensors", "tokenizer.json", "train.jsonl"]
    hashed.clear()
    assert checkpoint_key(JOB, data, model, cache) == uncached
    assert len(hashed) == 4
    hashed.clear()
    assert checkpoint_key(JOB, data, model, cache) == uncached  # a second start, another rank
    assert hashed == []


def test_a_changed_file_changes_the_key_even_with_its_old_size_and_mtime(dirs, hashed):
    model, data, cache = dirs
    weights = model / "model.safetensors"
    before = checkpoint_key(JOB, data, model, cache)
    stat = weights.stat()
    weights.write_bytes(os.urandom(4096))  # same size
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old mtime
    hashed.clear()
    after = checkpoint_key(JOB, data, model, cache)
    assert after != before
    assert hashed == ["model.safetensors"]  # only the changed file is read again


def test_a_replaced_or_added_file_changes_the_key(dirs):
    model, data, cache = dirs
    before = checkpoint_key(JOB, data, model, cache)
    (model / "extra.bin").write_bytes(b"1")
    added = checkpoint_key(JOB, data, model, cache)
    (model / "extra.bin").unlink()
    assert checkpoint_key(JOB, data, model, cache) == before
    (data[1]).write_text('{"id": 2}\n')  # the absent valid split appears
    assert len({before, added, checkpoint_key(JOB, data, model, cache)}) == 3


def _tracker_hash(model: Path, cache: Path, out) -> None:
    from workflow_scripts.tracking.model_hash import model_hash
    out.put([model_hash({"source": "scratch"}, model, cache) for _ in range(20)])


def test_parallel_tracking_jobs_of_one_model_share_its_digest_cache(dirs, hashed):
    """Tracking jobs of one model run in parallel: each gets the same hash, none fails on the
    shared cache (its write once raced on one temporary file), and the model's files are
    read once."""
    import multiprocessing

    from workflow_scripts.tracking.model_hash import model_hash
    model, _, cache = dirs
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_tracker_hash, args=(model, cache, out)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    expected = model_hash({"source": "scratch"}, model, None)
    assert {h for run in results for h in run} == {expected}
    assert expected.startswith("sha256:")
    hashed.clear()
    model_hash({"source": "scratch"}, model, cache)
    assert hashed == []  # every digest came from the cache
    (model / "config.json").write_text('{"a": 2}')
    assert model_hash({"source": "scratch"}, model, cache) != expected

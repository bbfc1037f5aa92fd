"""The studio shows an experiment's exports: each file, its check, and how to run it."""
from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from random_chat_models import studio_workdir
from workflow_scripts.studio.app import StudioSettings, create_app


def exported(root: Path, name: str) -> None:
    folder = root / "results" / "exports" / name
    (folder / "gguf").mkdir(parents=True)
    (folder / "checks").mkdir()
    (folder / "vllm").mkdir()
    (folder / "gguf" / f"{name}-q8_0.gguf").write_bytes(b"G" * 2000)
    (folder / "gguf" / f"{name}-lora-f16.gguf").write_bytes(b"L" * 100)
    (folder / "gguf" / "Modelfile").write_text("FROM ./a0-q8_0.gguf\n")
    (root / "results" / "exports" / "base" / "rand").mkdir(parents=True)
    (root / "results" / "exports" / "base" / "rand" / "rand-f16.gguf").write_bytes(b"B")
    (folder / "checks" / "q8_0.json").write_text(json.dumps(
        {"agreement": 0.98, "tokens_compared": 96, "loss_difference": 0.001, "verdict": "pass"}))
    (folder / "vllm" / "serve.sh").write_text("#!/bin/sh\nvllm serve rand --enable-lora\n")


def test_the_studio_lists_exports_with_their_checks_and_commands(tmp_path):
    names = studio_workdir(tmp_path, adapters=2, trainable_tokens=False)
    exported(tmp_path, names[0])
    client = TestClient(create_app(StudioSettings(config=tmp_path / "config.yaml",
                                                  workdir=tmp_path)), base_url="http://127.0.0.1")
    body = client.get("/api/exports").json()
    assert list(body["exports"]) == ["a0"]
    rows = {r["target"]: r for r in body["exports"]["a0"]}
    assert sorted(rows) == ["lora", "ollama", "q8_0", "vllm"]
    assert rows["q8_0"] == {"target": "q8_0", "file": "results/exports/a0/gguf/a0-q8_0.gguf",
                            "size_bytes": 2000, "check": {"agreement": 0.98, "tokens_compared": 96,
                                                          "loss_difference": 0.001, "verdict": "pass"},
                            "run": "llama-cli -m results/exports/a0/gguf/a0-q8_0.gguf -cnv"}
    assert rows["lora"]["run"] == ("llama-cli -m results/exports/base/rand/rand-f16.gguf "
                                   "--lora results/exports/a0/gguf/a0-lora-f16.gguf -cnv")
    assert rows["ollama"]["run"] == ("cd results/exports/a0/gguf && ollama create a0 -f Modelfile"
                                     " && ollama run a0")
    assert rows["vllm"]["run"] == "vllm serve rand --enable-lora"
    assert client.get("/api/experiments/a0").json()["exports"] == body["exports"]["a0"]
    assert client.get("/api/experiments/a1").json()["exports"] == []
    assert 'id="exports"' in client.get("/").text

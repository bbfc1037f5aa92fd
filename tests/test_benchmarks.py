"""The benchmark scripts' own promises: the GPU check runs to its end without a GPU, the
Qwen2-0.5B shape is Qwen2-0.5B's, and the search benchmark gives its figures per method and
seed."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def bench_training():
    spec = importlib.util.spec_from_file_location("bench_training", REPO / "benchmarks/bench_training.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Tokenizer:
    """What model_config reads of a tokenizer."""
    pad_token_id, eos_token_id = 0, 1

    def __len__(self) -> int:
        return 8000


def test_the_qwen2_shape_has_qwen2_0_5b_parameters():
    from transformers import AutoModelForCausalLM

    bench = bench_training()
    config = bench.model_config(Tokenizer(), **bench.speed_shape("qwen2-0.5b", None))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == 494_032_768  # Qwen/Qwen2-0.5B
    assert config.tie_word_embeddings and config.vocab_size == 151_936
    assert bench.speed_shape("qwen2-0.5b", 2)["num_hidden_layers"] == 2
    assert bench.memory_shape("qwen2-0.5b", None, 16) == bench.speed_shape("qwen2-0.5b", None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the run without a GPU")
def test_the_gpu_check_runs_to_its_end_without_a_gpu(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"} | {"OUT": str(tmp_path)}
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "bench: skipped (no CUDA GPU" in proc.stdout
    assert "no GPU: CUDA parts skipped" in proc.stdout
    tests_log = (tmp_path / "tests.log").read_text()
    assert " skipped" in tests_log and " failed" not in tests_log and " passed" not in tests_log
    assert "devices seen: asking for 0: 0; asking for none: 0" in (tmp_path / "slots.log").read_text()
    assert (tmp_path / "environment.txt").read_text().strip()


@pytest.mark.slow
def test_the_search_benchmark_compares_tpe_random_and_grid_per_seed(tmp_path):
    """--tiny: the smoke model, 4 trainings per method, 2 seeds (about a minute)."""
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, "benchmarks/bench_search.py", "--tiny", "--work",
                           str(tmp_path / "work"), "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    fig = json.loads(out.read_text())
    rows = fig["rows"]
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("grid", None), ("tpe", 7), ("random", 7), ("tpe", 8), ("random", 8)]
    for r in rows:
        assert r["complete"] + r["pruned"] + r["failed"] == 4
        for spent in r["tokens_to"].values():
            assert spent is None or 0 < spent <= r["tokens"]
    grid = rows[0]
    assert grid["best"] == fig["grid_best"] and grid["tokens_to"] == {"1.0": grid["tokens"],
                                                                      "0.1": grid["tokens"]}
    # every training trains the same tokens unless pruned: random spends the grid's budget
    assert all(r["tokens"] == grid["tokens"] for r in rows if r["method"] == "random")
    assert all(r["tokens"] <= grid["tokens"] for r in rows if r["method"] == "tpe")
    assert set(fig["medians"]) == {"tpe", "random"}
    # a seed's tpe and random searches start from the same random trials: trained once
    assert fig["asked"] == 4 + 4 * 4 and fig["trained"] <= fig["asked"] - 2 * 2
    assert "| tpe | median |" in proc.stdout and "target (tpe within 1% of the grid's best" in proc.stdout
    assert "machine: " in proc.stdout and "load average" in proc.stdout

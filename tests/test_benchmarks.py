"""The benchmark scripts' own promises: the GPU check runs to its end without a GPU, and the
Qwen2-0.5B shape is Qwen2-0.5B's."""
from __future__ import annotations

import importlib.util
import os
import subprocess
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

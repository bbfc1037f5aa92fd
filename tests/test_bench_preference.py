"""benchmarks/bench_preference.py --quick: our DPO and TRL's train the same pairs (the same
tokens, every pair once), each run's time and whole-process peak RSS come back with the
ratios. (The benchmark's third part, a three-point beta sweep planning one reference job, is
tests/test_preference_config.py's test_a_beta_sweep_scores_its_reference_once.)"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TRL_SITE = REPO / ".venv" / "trl"


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    if not (TRL_SITE / "trl").is_dir():
        pytest.skip("TRL is not installed in .venv/trl (scripts/setup.sh --test)")
    out = tmp_path_factory.mktemp("bench") / "figures.json"
    # the sweep part is tests/test_preference_config.py's beta-sweep test, not run twice
    proc = subprocess.run([sys.executable, "benchmarks/bench_preference.py", "--quick",
                           "--parts", "speed,memory", "--json", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()) | {"stdout": proc.stdout}


def test_both_trainers_train_every_pair_once_on_the_same_tokens(figures):
    info = figures["info"]
    steps = math.ceil(info["speed"]["pairs"] / info["batch"])
    for repeat in figures["speed"]["repeats"]:
        assert repeat["ours"]["steps"] == repeat["trl"]["steps"] == steps
        assert repeat["trl"]["trl_tokens"] == info["speed"]["tokens"]
        assert repeat["reference"]["seconds"] > 0
    for clock in ("seconds", "cpu_s"):
        assert sorted(figures["speed"]["ratios"][clock]) == ["single", "sweep3", "train"]
    assert "ours / TRL tokens/s, training (reference read)" in figures["stdout"]


def test_memory_runs_report_whole_process_peaks_and_their_ratio(figures):
    runs = figures["memory"]["runs"]
    for side in ("ours", "trl"):
        assert runs[side]["process_peak_rss_mb"] >= runs[side]["loaded_rss_mb"] > 0
    ratio = runs["ours"]["process_peak_rss_mb"] / runs["trl"]["process_peak_rss_mb"]
    assert figures["memory"]["ratio"] == pytest.approx(ratio)
    assert f"ours / TRL peak RSS: {ratio:.2f}" in figures["stdout"]

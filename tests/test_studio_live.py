"""A real training runs while the studio watches: the live pushes and the Live page show its
step count growing. The training writes into a scratch working directory that borrows the
smoke run's base model and data, and is stopped when the module ends."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_studio_api import workdir  # noqa: F401  (the smoke run's working directory)
from workflow_scripts.studio.app import StudioSettings, create_app
from workflow_scripts.studio.background import BackgroundServer

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
EXPERIMENT = "rank-r2"
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def scratch(workdir, tmp_path_factory) -> Path:  # noqa: F811
    root = tmp_path_factory.mktemp("live")
    shutil.copy(workdir / "config.yaml", root / "config.yaml")
    (root / "results").mkdir()
    for part in ("models", "data"):
        (root / "results" / part).symlink_to(workdir / "results" / part)
    (root / "logs" / "train_adapter").mkdir(parents=True)
    return root


@pytest.fixture(scope="module")
def training(workdir, scratch):  # noqa: F811
    """A long training of EXPERIMENT, started the way the rule starts it."""
    job = json.loads((workdir / "results/adapters" / EXPERIMENT / "run_info.json").read_text())["config"]
    job["experiment"]["training"].update(max_steps=100_000, save_steps=100_000, logging_steps=1)
    logs = scratch / "logs" / "train_adapter"
    cmd = [sys.executable, "-m", "workflow_scripts.training.train_adapter", "--config", json.dumps(job),
           "--model-dir", "results/models/tiny", "--data-dir", "results/data/alpaca_zh",
           "--out-dir", f"results/adapters/{EXPERIMENT}",
           "--checkpoint-dir", f"results/checkpoints/{EXPERIMENT}",
           "--progress-file", f"logs/train_adapter/{EXPERIMENT}.progress.jsonl", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(logs / f"{EXPERIMENT}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=scratch, stdout=log, stderr=subprocess.STDOUT, env=env)
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def server(scratch):
    app = create_app(StudioSettings(config=scratch / "config.yaml", workdir=scratch,
                                    push_interval_s=0.3))
    with BackgroundServer(app) as running:
        yield running


def test_live_pushes_follow_the_running_training(training, server, scratch):
    import httpx2

    seen: list[dict] = []
    deadline = time.monotonic() + TIMEOUT_S
    with httpx2.Client(timeout=30) as http:
        with http.stream("GET", server.url + "/api/live/events") as response:
            for line in response.iter_lines():
                assert training.poll() is None, (scratch / "logs/train_adapter" / f"{EXPERIMENT}.log").read_text()[-3000:]
                assert time.monotonic() < deadline, f"no growing step count within {TIMEOUT_S} s: {seen[-3:]}"
                if not line.startswith("data: "):
                    continue
                runs = {r["experiment"]: r for r in json.loads(line[6:])["running"]}
                if EXPERIMENT in runs:
                    seen.append(runs[EXPERIMENT])
                if len({r["step"] for r in seen if r["step"]}) >= 3:
                    break
    steps = [r["step"] for r in seen]
    assert steps == sorted(steps) and len(set(steps)) >= 3
    last = seen[-1]
    assert last["max_steps"] == 100_000 and isinstance(last["loss"], float)
    assert last["elapsed_s"] > 0 and last["remaining_s"] > 0
    assert [p[0] for p in last["train"]] == sorted(p[0] for p in last["train"])  # the curve so far
    assert training.poll() is None  # all of this while it runs


def test_live_page_step_count_increases(training, server, tmp_path):
    from test_studio_browser import start_chromium, wait_for

    browser = start_chromium("1400,900")
    try:
        browser.get(server.url + "/live")
        step = f"document.querySelector('.live-card[data-experiment=\"{EXPERIMENT}\"] .step')"
        first = wait_for(browser, f"{step} && parseInt({step}.textContent)", TIMEOUT_S)
        later = wait_for(browser, f"parseInt({step}.textContent) > {first} && parseInt({step}.textContent)",
                         TIMEOUT_S)
        assert later > first and training.poll() is None
        assert browser.execute_script(
            f"return {step}.closest('.card').querySelector('canvas') !== null")
        shots = Path(os.environ.get("TEST_OUTPUT_DIR") or tmp_path)
        shots.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(shots / "studio_live_running.png"))
    finally:
        browser.quit()

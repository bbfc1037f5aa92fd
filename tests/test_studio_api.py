"""The studio over the smoke run's results: every page and endpoint, bad input, the official
`openai` client against a real uvicorn, load, and a client that goes away mid-answer.

Set STUDIO_TEST_WORKDIR to a finished smoke run's working directory to skip the run.
"""
from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest
from fastapi.testclient import TestClient

from workflow_scripts.studio.app import PAGES, StudioSettings, create_app
from workflow_scripts.studio.background import BackgroundServer

pytestmark = pytest.mark.slow
HELLO = [{"role": "user", "content": "你好"}]


@pytest.fixture(scope="module")
def workdir(request) -> Path:
    """The smoke run's working directory (its config is `config.yaml` there)."""
    reuse = os.environ.get("STUDIO_TEST_WORKDIR")
    return Path(reuse) if reuse else request.getfixturevalue("smoke_run").workdir


@pytest.fixture(scope="module")
def experiments(app) -> set[str]:
    """Every experiment of the smoke config (all of them ran)."""
    return set(app.state.catalog.experiments)


@pytest.fixture(scope="module")
def app(workdir):
    return create_app(StudioSettings(config=workdir / "config.yaml", workdir=workdir,
                                     max_tokens_cap=240))


@pytest.fixture(scope="module")
def client(app) -> TestClient:
    return TestClient(app, base_url="http://127.0.0.1")


@pytest.fixture(scope="module")
def server(app):
    with BackgroundServer(app) as running:
        yield running


@pytest.fixture(scope="module")
def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def loaded_model_copies() -> int:
    """Causal-LM modules alive in this process (a second copy of a base would show here)."""
    from transformers import PreTrainedModel

    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, PreTrainedModel)
               and type(o).__name__.endswith("ForCausalLM"))


def test_the_documented_command_serves_the_working_directory(workdir):
    import httpx2

    from workflow_scripts.studio.background import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "workflow_scripts.studio", "--config", "config.yaml",
                             "--port", str(port)], cwd=workdir, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the studio did not answer within 120 s"
            try:
                response = httpx2.get(f"http://127.0.0.1:{port}/api/experiments", timeout=5)
                break
            except httpx2.TransportError:
                time.sleep(0.5)
        assert response.status_code == 200
        assert {r["status"] for r in response.json()["experiments"]} == {"done"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("page", ["", *PAGES])
def test_every_page_renders(client, page):
    response = client.get(f"/{page}")
    assert response.status_code == 200
    assert f'data-page="{page or "experiments"}"' in response.text
    assert all(f'href="/{name}"' in response.text for name in PAGES)


def test_static_assets_are_served_locally_with_the_chart_licence(client):
    page = client.get("/compare").text
    assert "http://" not in page and "https://" not in page  # no CDN
    assert client.get("/static/uPlot.iife.min.js").status_code == 200
    assert "MIT" in client.get("/static/uPlot.LICENSE").text


def test_experiments_table_has_every_experiment_with_its_figures(client, experiments):
    body = client.get("/api/experiments").json()
    rows = {r["experiment"]: r for r in body["experiments"]}
    assert set(rows) == experiments and body["counts"]["done"] == len(experiments)
    r2 = rows["rank-r2"]
    assert (r2["status"], r2["method"], r2["r"], r2["alpha"], r2["steps"]) == ("done", "lora", 2, 8, 4)
    for key in ("wall_time_s", "tokens_per_s", "peak_memory_mb", "final_loss", "eval_loss", "test_loss"):
        assert isinstance(r2[key], (int, float)), key
    assert set(r2["metrics"]) >= {"bleu4", "rougeL", "chrf"}
    assert rows["lccc-qlora"]["method"] == "qlora"


def test_experiment_detail_and_an_unknown_one(client, experiments):
    body = client.get("/api/experiments/rank-r4").json()
    assert body["config"]["lora"]["r"] == 4 and len(body["curves"]["train"]) == 4
    response = client.get("/api/experiments/rank-r9")
    assert response.status_code == 404
    assert response.json()["error"]["known"] == sorted(experiments)


def test_compare_gives_curves_differences_metrics_and_predictions(client):
    body = client.get("/api/compare?e=rank-r2&e=rank-r4").json()
    assert [p[0] for p in body["curves"]["rank-r2"]["train"]] == [1, 2, 3, 4]
    assert [d["key"] for d in body["config_diff"]] == ["lora.r"]
    loss = next(m for m in body["metrics"] if m["metric"] == "test_loss")
    assert loss["diff"]["rank-r2"] == 0
    assert loss["diff"]["rank-r4"] == pytest.approx(loss["values"]["rank-r4"] - loss["values"]["rank-r2"])
    assert len(body["predictions"]) == 4
    assert all(set(p["predictions"]) == {"rank-r2", "rank-r4"} for p in body["predictions"])
    response = client.get("/api/compare?e=rank-r2&e=../../etc")
    assert response.status_code == 404 and "../../etc" in response.json()["error"]["message"]
    assert client.get("/api/compare").status_code == 422


def test_nothing_is_live_after_the_run(client):
    assert client.get("/api/live").json()["running"] == []


def test_data_page_endpoints(client):
    summary = client.get("/api/datasets/alpaca_zh").json()
    assert summary["raw"] == summary["kept"] + sum(summary["rejected"].values())
    assert sum(summary["splits"].values()) == summary["kept"]
    rejects = client.get("/api/datasets/alpaca_zh/search?where=rejects").json()["rows"]
    assert len(rejects) == summary["rejected"]["duplicate_exact"] == 8
    assert {r["reason"] for r in rejects} == {"duplicate_exact"}
    assert all(r["file"] == "data/raw/alpaca_zh_demo.json" and isinstance(r["index"], int) for r in rejects)
    first = client.get("/api/datasets/lccc/search?where=train&limit=1").json()["rows"][0]
    needle = first["messages"][-1]["content"][:6]
    found = client.get("/api/datasets/lccc/search", params={"where": "train", "q": needle}).json()
    assert found["rows"] and all(needle in str(r["messages"]) for r in found["rows"])
    assert client.get("/api/datasets/lccc/search?where=secret").status_code == 422
    assert client.get("/api/datasets/nope").status_code == 404


def test_logs_list_and_view(client):
    names = {log["name"] for log in client.get("/api/logs").json()["logs"]}
    assert {"logs/train_adapter/rank-r2.log", "logs/evaluate/rank-r2.log"} <= names
    assert any(n.startswith(".snakemake/log/") for n in names)
    body = client.get("/api/logs/view", params={"name": "logs/train_adapter/rank-r2.log"}).json()
    assert '"steps": 4' in body["text"]


def test_report_is_served(client):
    response = client.get("/report/view")
    assert response.status_code == 200 and "<html" in response.text.lower()


def test_openai_client_lists_models(oai, experiments):
    ids = {m.id for m in oai.models.list().data}
    assert ids == experiments | {"tiny"}
    with pytest.raises(openai.NotFoundError, match="rank-r9"):
        oai.models.retrieve("rank-r9")


@pytest.mark.parametrize("model", ["rank-r2", "tiny"])
def test_openai_client_completes_and_streams(oai, model):
    reply = oai.chat.completions.create(model=model, messages=HELLO, max_tokens=6,
                                        temperature=1.0, seed=3)
    assert reply.object == "chat.completion" and reply.model == model
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 6 and reply.usage.prompt_tokens > 0
    chunks = list(oai.chat.completions.create(model=model, messages=HELLO, max_tokens=6,
                                              temperature=1.0, seed=3, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == reply.choices[0].message.content  # same seed, same answer
    assert chunks[-1].usage.total_tokens == reply.usage.total_tokens
    assert sum(1 for c in chunks if c.choices and c.choices[0].finish_reason) == 1


def test_greedy_is_the_default_and_adapters_switch_per_request(oai):
    def ask(model):
        return oai.chat.completions.create(model=model, messages=HELLO, max_tokens=8).choices[0].message.content

    assert ask("rank-r4") == ask("rank-r4")
    assert ask("tiny") == ask("tiny")


def test_qlora_adapter_runs_on_its_4bit_base(app, oai):
    reply = oai.chat.completions.create(model="lccc-qlora", messages=HELLO, max_tokens=4)
    assert reply.usage.completion_tokens >= 1
    assert ("tiny", True) in app.state.pool.loaded


def test_limits_are_400_with_the_limit(app, oai):
    with pytest.raises(openai.BadRequestError, match="cap of 240"):
        oai.chat.completions.create(model="rank-r2", messages=HELLO, max_tokens=241)
    context = app.state.pool.context_length("tiny")
    long_prompt = [{"role": "user", "content": "你好" * context}]
    with pytest.raises(openai.BadRequestError, match=f"context is {context} tokens"):
        oai.chat.completions.create(model="tiny", messages=long_prompt, max_tokens=4)
    with pytest.raises(openai.NotFoundError, match="rank-r9"):
        oai.chat.completions.create(model="rank-r9", messages=HELLO)


def test_32_concurrent_streams_complete_on_one_base_copy(app, server):
    models = ["tiny", "rank-r2", "rank-r4"]

    async def one(client, i: int) -> tuple[str, int]:
        stream = await client.chat.completions.create(
            model=models[i % 3], messages=[{"role": "user", "content": f"第{i}个问题"}],
            max_tokens=8, temperature=1.0, seed=i, stream=True)
        reasons, usage = [], None
        async for chunk in stream:
            reasons += [c.finish_reason for c in chunk.choices if c.finish_reason]
            usage = chunk.usage or usage
        return reasons[0], usage.completion_tokens

    async def all_of_them():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused",
                                      max_retries=0, timeout=300) as client:
            return await asyncio.gather(*(one(client, i) for i in range(32)))

    results = asyncio.run(all_of_them())
    assert len(results) == 32 and all(r in ("stop", "length") and 1 <= n <= 8 for r, n in results)
    unquantized = [key for key in app.state.pool.loaded if key == ("tiny", False)]
    assert unquantized == [("tiny", False)]
    assert loaded_model_copies() == len(app.state.pool.loaded)


def test_a_client_that_disconnects_stops_its_generation(app, server):
    import httpx2

    body = {"model": "rank-r2", "messages": HELLO, "max_tokens": 230, "temperature": 1.0,
            "seed": 11, "stream": True}
    engines = app.state.pool.engines
    cancelled = engines[("tiny", False)].outcomes["cancelled"] if ("tiny", False) in engines else 0
    with httpx2.Client(timeout=60) as http:
        with http.stream("POST", server.url + "/v1/chat/completions", json=body) as response:
            for line in response.iter_lines():
                if '"content": "' in line and '"role"' not in line:
                    break  # the first token arrived: hang up
    deadline = time.monotonic() + 60
    while engines[("tiny", False)].outcomes["cancelled"] == cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engines[("tiny", False)].outcomes["cancelled"] == cancelled + 1

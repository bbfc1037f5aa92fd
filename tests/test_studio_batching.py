"""The studio as a shared server: requests batched across adapters, and the guards in front.

A random Qwen2 with three random LoRA adapters (random_chat_models.py), served by a real
uvicorn on a free loopback port and asked through the official `openai` client. Greedy
answers of eight requests batched together over three adapters and the base must equal the
unbatched server's, token for token (fp32, CPU).
"""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import httpx2
import openai
import pytest
import yaml
from random_chat_models import random_adapter, studio_workdir

from workflow_scripts.studio.app import StudioSettings, create_app
from workflow_scripts.studio.background import BackgroundServer
from workflow_scripts.studio.openai_api import RequestLimits

PROMPTS = ["你好", "北京今天天气怎么样？", "上海明天下雨吗？", "查询城市天气", "北京", "天气",
           "你好你好", "上海"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("batching-studio")
    studio_workdir(root, adapters=3)
    return root


def serve(workdir: Path, **settings) -> BackgroundServer:
    return BackgroundServer(create_app(StudioSettings(
        config=workdir / "config.yaml", workdir=workdir, threads=1, **settings)))


@pytest.fixture(scope="module")
def server(workdir):
    with serve(workdir, max_tokens_cap=1000,
               limits=RequestLimits(max_messages=8, max_body_bytes=1 << 20)) as running:
        yield running


def models_of(i: int) -> str:
    return ["a0", "a1", "a2", "rand"][i % 4]


async def ask_all(url: str, requests: list[dict]) -> list:
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="-", max_retries=0,
                                  timeout=120) as client:
        return await asyncio.gather(*(client.chat.completions.create(**r) for r in requests))


def request(i: int, **extra) -> dict:
    return {"model": models_of(i), "messages": [{"role": "user", "content": PROMPTS[i]}],
            "max_tokens": 48} | extra


def first_divergence_is_a_tie(workdir: Path, req: dict, batched_text: str) -> bool:
    """Whether the batched answer leaves the unbatched one where the unbatched run's top two
    logits are equal up to float rounding."""
    import torch
    from peft import PeftModel

    from workflow_scripts.models.loading import load_model, load_tokenizer
    from workflow_scripts.training.chat_tokenize import render

    tokenizer = load_tokenizer(str(workdir / "rand"))
    model = load_model(str(workdir / "rand")).eval()
    if req["model"] != "rand":
        model = PeftModel.from_pretrained(model, str(workdir / "results/adapters" / req["model"])).eval()
    ids = tokenizer(render(tokenizer, req["messages"], generation_prompt=True),
                    add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=req["max_tokens"], output_logits=True,
                             return_dict_in_generate=True, eos_token_id=None)
    tokens = out.sequences[0, ids.shape[1]:].tolist()
    for k in range(len(tokens)):
        if not batched_text.startswith(tokenizer.decode(tokens[:k + 1], skip_special_tokens=True)):
            top = out.logits[k][0].float().topk(2).values
            return bool((top[0] - top[1]).abs() <= 1e-5 * top[0].abs().clamp(min=1))
    return False


def test_batched_greedy_answers_equal_unbatched_token_for_token(workdir, server):
    requests = [request(i) for i in range(8)]
    with serve(workdir, batching=False) as unbatched:
        alone = [asyncio.run(ask_all(unbatched.url, [r]))[0] for r in requests]
    batched = asyncio.run(ask_all(server.url, requests))
    assert len({r["model"] for r in requests}) == 4
    for req, a, b in zip(requests, alone, batched):
        same = (a.choices[0].message.content == b.choices[0].message.content
                and a.usage.completion_tokens == b.usage.completion_tokens
                and a.choices[0].finish_reason == b.choices[0].finish_reason)
        assert same or first_divergence_is_a_tie(workdir, req, b.choices[0].message.content), \
            (req, a.choices[0].message.content, b.choices[0].message.content)
    assert sum(b.usage.completion_tokens for b in batched) > 8 * 3  # answers, not just an end
    # They came through the fast mixed-adapter forward (mixed_lora.py), not PEFT's.
    assert server.app.state.pool.engines[("rand", False)]._mixed is not None


def test_adapters_with_and_without_trained_tokens_share_a_batch(tmp_path):
    """PEFT can neither load a plain LoRA adapter beside ones that train tokens nor mix
    them in a batch; the studio does both, and each row answers as unbatched."""
    studio_workdir(tmp_path, adapters=2)
    random_adapter(tmp_path / "rand", tmp_path / "results/adapters/p0", seed=7, trainable_tokens=False)
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    config["experiments"]["p0"] = {"base_model": "rand", "dataset": "d"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    models = ["a0", "p0", "rand", "a1", "p0", "a0"]
    requests = [request(i, model=m) for i, m in enumerate(models)]
    with serve(tmp_path, batching=False) as unbatched:
        alone = [asyncio.run(ask_all(unbatched.url, [r]))[0] for r in requests]
    with serve(tmp_path) as batched_server:
        engine_of = batched_server.app.state.pool.engines
        asyncio.run(ask_all(batched_server.url, [request(0, model=m, max_tokens=1) for m in models]))
        engine = engine_of[("rand", False)]
        engine.outcomes.clear()
        steps, advance = [], engine._advance

        def watching(batch, logits):  # which adapters each step ran
            steps.append({row.adapter for row in batch.rows})
            advance(batch, logits)

        engine._advance = watching
        batched = asyncio.run(ask_all(batched_server.url, requests))
        plain, trained = engine.base.adapters["p0"], engine.base.adapters["a0"]
    assert any(plain in names and trained in names for names in steps)
    for req, a, b in zip(requests, alone, batched):
        same = (a.choices[0].message.content == b.choices[0].message.content
                and a.usage.completion_tokens == b.usage.completion_tokens)
        assert same or first_divergence_is_a_tie(tmp_path, req, b.choices[0].message.content), \
            (req, a.choices[0].message.content, b.choices[0].message.content)


def test_a_seed_gives_the_same_answer_whatever_else_is_in_the_batch(server):
    sampled = request(1, temperature=1.0, top_p=0.9, seed=1234)
    alone = asyncio.run(ask_all(server.url, [sampled]))[0]
    crowd = asyncio.run(ask_all(server.url, [sampled, *(request(i, temperature=1.0, seed=i)
                                                        for i in range(7))]))[0]
    assert alone.choices[0].message.content == crowd.choices[0].message.content
    assert alone.usage.completion_tokens == crowd.usage.completion_tokens


def test_max_tokens_and_stop_hold_per_row(server):
    replies = asyncio.run(ask_all(server.url, [request(3, max_tokens=2), request(7, max_tokens=40),
                                               request(5, max_tokens=1)]))
    assert replies[0].usage.completion_tokens <= 2 and replies[2].usage.completion_tokens == 1
    long = asyncio.run(ask_all(server.url, [request(7, max_tokens=40)]))[0]
    assert replies[1].choices[0].message.content == long.choices[0].message.content


def test_a_foreign_host_or_origin_is_refused(server):
    with httpx2.Client(base_url=server.url, timeout=30) as http:
        evil = http.get("/v1/models", headers={"Host": "evil.example"})
        assert evil.status_code == 400 and "evil.example" in evil.json()["error"]["message"]
        assert http.get("/", headers={"Host": "evil.example:80"}).status_code == 400
        assert http.get("/v1/models", headers={"Host": f"localhost:{server.port}"}).status_code == 200
        body = request(0, max_tokens=1)
        foreign = http.post("/v1/chat/completions", json=body, headers={"Origin": "https://evil.example"})
        assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "origin_not_allowed"
        # Another server on this machine (another port) is foreign too.
        neighbour = http.post("/v1/chat/completions", json=body,
                              headers={"Origin": f"http://127.0.0.1:{server.port + 1}"})
        assert neighbour.status_code == 403
        own = http.post("/v1/chat/completions", json=body, headers={"Origin": server.url})
        assert own.status_code == 200


def test_oversized_requests_are_refused_naming_the_limit(server):
    with httpx2.Client(base_url=server.url, timeout=60) as http:
        big = http.post("/v1/chat/completions", content=b"{" + b" " * (20 << 20) + b"}",
                        headers={"Content-Type": "application/json"})
        assert big.status_code == 413 and "max-body-bytes" in big.json()["error"]["message"]

        def chunks():
            for _ in range(40):
                yield b" " * (64 << 10)
        chunked = http.post("/v1/chat/completions", content=chunks(),
                            headers={"Content-Type": "application/json"})
        assert chunked.status_code == 413
        many = http.post("/v1/chat/completions", json={
            "model": "rand", "messages": [{"role": "user", "content": "你好"}] * 9})
        assert many.status_code == 400 and "max_messages" in many.json()["error"]["message"]
        assert many.json()["error"]["param"] == "messages"


def test_a_flood_beyond_the_queue_gets_429_with_retry_after(workdir):
    with serve(workdir, max_batch=2, queue_depth=2) as small:
        async def flood():
            async with httpx2.AsyncClient(base_url=small.url, timeout=120) as http:
                return await asyncio.gather(*(http.post("/v1/chat/completions", json=request(
                    i % 8, max_tokens=200, stream=True)) for i in range(12)))
        answers = asyncio.run(flood())
        statuses = [a.status_code for a in answers]
        assert set(statuses) <= {200, 429} and statuses.count(200) >= 4 and 429 in statuses
        refused = next(a for a in answers if a.status_code == 429)
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["code"] == "queue_full"
        assert all("[DONE]" in a.text for a in answers if a.status_code == 200)


def test_a_disconnect_mid_stream_frees_its_batch_row(tmp_path):
    studio_workdir(tmp_path, adapters=1, never_ends=True)
    # Greedy answers run to their limit, so only the disconnect can end one early.
    long = request(0, model="rand", max_tokens=1000)
    with serve(tmp_path, max_tokens_cap=1000) as server, \
            httpx2.Client(base_url=server.url, timeout=60) as http:
        assert http.post("/v1/chat/completions", json=long).json()["choices"][0]["finish_reason"] == "length"
        engine = server.app.state.pool.engines[("rand", False)]
        # The batch pauses after the row's fourth token, until the client has hung up.
        paused, resume, advance = threading.Event(), threading.Event(), engine._advance

        def pausing(batch, logits):
            advance(batch, logits)
            if batch.rows and len(batch.rows[0].tokens) == 4:
                paused.set()
                resume.wait(30)

        engine._advance = pausing
        with http.stream("POST", "/v1/chat/completions", json={**long, "stream": True}) as stream:
            lines = stream.iter_lines()  # kept: a dropped iterator closes the connection
            for line in lines:
                if '"content": "' in line and '"content": ""' not in line:
                    break
            assert paused.wait(30)
            assert http.get("/api/chat/load").json()["bases"]["rand"]["running"] == 1
            (row,) = engine.batch.rows
        deadline = time.monotonic() + 20
        while not row.cancel.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)  # the server notices the hang-up
        resume.set()
        assert row.cancel.is_set()
        while http.get("/api/chat/load").json()["bases"]["rand"]["running"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert http.get("/api/chat/load").json()["bases"]["rand"] == {
            "running": 0, "waiting": 0, "max_rows": 16, "queue_depth": 32, "device": "cpu"}
        assert engine.outcomes == {"length": 1, "cancelled": 1} and len(row.tokens) == 4


def pause_after_first_step(engine) -> tuple[threading.Event, threading.Event]:
    """The engine's worker stops after its next step until `resume` is set."""
    paused, resume, advance = threading.Event(), threading.Event(), engine._advance

    def pausing(batch, logits):
        advance(batch, logits)
        if not paused.is_set():
            paused.set()
            resume.wait(30)

    engine._advance = pausing
    return paused, resume


def test_a_failing_step_ends_every_request_and_stream_with_an_error(workdir):
    """A decoding step that raises (a CUDA out-of-memory, say) with rows running and rows
    waiting: every client gets an error (streams an error event), none waits for ever."""
    with serve(workdir) as server, httpx2.Client(base_url=server.url, timeout=60) as http:
        assert http.post("/v1/chat/completions", json=request(0, model="rand", max_tokens=1)).status_code == 200
        engine = server.app.state.pool.engines[("rand", False)]
        paused, resume = pause_after_first_step(engine)
        decode = engine._decode

        def broken():
            if resume.is_set():
                raise RuntimeError("CUDA out of memory (injected)")
            decode()

        engine._decode = broken
        answers: dict[int, httpx2.Response] = {}

        def ask(i: int, stream: bool) -> None:
            with httpx2.Client(base_url=server.url, timeout=60) as own:
                answers[i] = own.post("/v1/chat/completions",
                                      json=request(i, model="rand", stream=stream, max_tokens=40))

        clients = [threading.Thread(target=ask, args=(0, True))]
        clients[0].start()
        assert paused.wait(30)
        clients += [threading.Thread(target=ask, args=(i, i % 2 == 1)) for i in (1, 2)]
        for client in clients[1:]:
            client.start()
        deadline = time.monotonic() + 30
        while engine.load()["waiting"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        resume.set()
        for client in clients:
            client.join(60)
        assert sorted(answers) == [0, 1, 2]
        for i in (0, 1):  # streams: an error event, then the end
            assert answers[i].status_code == 200
            assert "generation failed: CUDA out of memory (injected)" in answers[i].text
            assert '"server_error"' in answers[i].text and "[DONE]" not in answers[i].text
        assert answers[2].status_code == 500 and "injected" in answers[2].json()["error"]["message"]
        engine._decode = decode
        assert http.post("/v1/chat/completions", json=request(3, model="rand")).status_code == 200


@pytest.mark.parametrize("stream", [True, False])
def test_an_answer_abandoned_unread_stops_generating(tmp_path, stream):
    """A client that asks, reads nothing and goes away while tokens keep coming: its
    generation ends then, not at `max_tokens` (a stream's writes back up, so its body's
    generator waits at a chunk it yielded; a plain answer sees tokens with no pause)."""
    studio_workdir(tmp_path, adapters=1, never_ends=True, context=8192)
    with serve(tmp_path, max_tokens_cap=8000) as server:
        engine_of = server.app.state.pool.engines
        body = json.dumps(request(0, model="rand", max_tokens=8000, stream=stream)).encode()
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((server.host, server.port))
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                         b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (server.port, len(body), body))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (
                    engine_of and engine_of[("rand", False)].batch
                    and len(engine_of[("rand", False)].batch.rows[0].tokens) > 3000):
                time.sleep(0.02)
        engine = engine_of[("rand", False)]
        while not engine.outcomes and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.outcomes == {"cancelled": 1}


def test_a_retrained_adapter_is_served_in_place_of_the_old_one(tmp_path):
    """Adapters are loaded once per set of files: a retrained one (new files) is loaded
    again; a row running on the old one finishes on it, then the old one is deleted."""
    studio_workdir(tmp_path, adapters=2)
    asked = request(1, model="a0")
    with serve(tmp_path) as server:
        before = asyncio.run(ask_all(server.url, [asked, request(2, model="a1")]))[0]
        base = server.app.state.pool.loaded[("rand", False)]
        old = base.adapters["a0"]
        paused, resume = pause_after_first_step(server.app.state.pool.engines[("rand", False)])
        answers = {}

        def ask(name: str) -> None:
            answers[name] = asyncio.run(ask_all(server.url, [asked]))[0]

        running = threading.Thread(target=ask, args=("old",))
        running.start()
        assert paused.wait(30)  # a row on the old adapter is running
        random_adapter(tmp_path / "rand", tmp_path / "results/adapters/a0", seed=999)  # retrained
        retrained = threading.Thread(target=ask, args=("new",))
        retrained.start()
        time.sleep(0.5)
        resume.set()
        running.join(60)
        retrained.join(60)
        assert answers["old"].choices[0].message.content == before.choices[0].message.content
        after = asyncio.run(ask_all(server.url, [asked, request(2, model="a1")]))[0]
        assert base.adapters["a0"] != old and old not in base.model.peft_config
        assert sorted(base.model.peft_config) == sorted(base.adapters.values())
    with serve(tmp_path, batching=False) as fresh:
        expected = asyncio.run(ask_all(fresh.url, [asked]))[0]
    assert after.choices[0].message.content == expected.choices[0].message.content
    assert answers["new"].choices[0].message.content == expected.choices[0].message.content
    assert after.choices[0].message.content != before.choices[0].message.content

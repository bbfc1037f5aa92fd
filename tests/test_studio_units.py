"""The studio's pieces on fabricated files: no model, no workflow run (seconds)."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from workflow_scripts.studio.__main__ import is_loopback, parse_args, settings_from
from workflow_scripts.studio.app import StudioSettings, create_app
from workflow_scripts.studio.catalog import Catalog, metric_interval
from workflow_scripts.studio.chat_engine import TokenStreamer
from workflow_scripts.studio.files import read_from
from workflow_scripts.studio.guard import same_origin
from workflow_scripts.studio.openai_api import LoopMailbox, StopMatcher
from workflow_scripts.studio.progress import read_progress

REPO = Path(__file__).resolve().parent.parent
SMOKE_CONFIG = REPO / "tests" / "configs" / "smoke.yaml"


def write_lines(path: Path, rows: list[dict], partial: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + partial, encoding="utf-8")


@pytest.fixture
def workdir(tmp_path) -> Path:
    shutil.copy(SMOKE_CONFIG, tmp_path / "config.yaml")
    return tmp_path


@pytest.fixture
def client(workdir) -> TestClient:
    return TestClient(create_app(StudioSettings(config=workdir / "config.yaml", workdir=workdir)),
                      base_url="http://127.0.0.1")


def test_progress_follows_a_resumed_run_and_skips_a_half_written_line(tmp_path):
    path = tmp_path / "p.jsonl"
    write_lines(path, [
        {"event": "start", "time": 100.0, "step": 0, "max_steps": 10},
        *({"event": "log", "time": 100.0 + s, "step": s, "max_steps": 10, "loss": 5.0 - s / 10,
           "learning_rate": 1e-3, "tokens_per_s": 50.0} for s in (1, 2, 3, 4)),
        {"event": "eval", "time": 104.5, "step": 4, "eval_loss": 4.7},
        # killed after step 4; resumed from the step-2 checkpoint
        {"event": "start", "time": 200.0, "step": 2, "max_steps": 10, "resumed": True},
        {"event": "log", "time": 202.0, "step": 3, "max_steps": 10, "loss": 4.6},
        {"event": "log", "time": 204.0, "step": 4, "max_steps": 10, "loss": 4.5},
    ], partial='{"event": "log", "time": 205.0, "st')
    progress = read_progress(path)
    assert progress.resumes == 1 and not progress.ended
    assert progress.train == [[1, 4.9], [2, 4.8], [3, 4.6], [4, 4.5]]
    assert progress.eval == []  # the eval at step 4 belonged to the lost steps
    timing = progress.timing(now=206.0)
    assert timing == {"elapsed_s": 6.0, "remaining_s": 12.0}  # 2 s per step, 6 steps left


def test_progress_end_means_nothing_remains(tmp_path):
    path = tmp_path / "p.jsonl"
    write_lines(path, [{"event": "start", "time": 10.0, "step": 0, "max_steps": 2},
                       {"event": "log", "time": 11.0, "step": 2, "loss": 1.0},
                       {"event": "end", "time": 12.0, "step": 2, "wall_time_s": 2.0}])
    progress = read_progress(path)
    assert progress.ended and progress.timing(now=99.0) == {"elapsed_s": 2.0, "remaining_s": 0.0}
    assert read_progress(tmp_path / "missing.jsonl") is None


@pytest.mark.parametrize("pieces, expected", [
    (["abc<st", "op>def"], "abc"),
    (["no stop <s", "here"], "no stop <shere"),
    (["x", "<stop>"], "x"),
])
def test_stop_matcher_cuts_at_a_stop_split_across_pieces(pieces, expected):
    matcher = StopMatcher(["<stop>", "END"])
    out = "".join(matcher.feed(p) for p in pieces) + matcher.flush()
    assert out == expected
    assert matcher.stopped == (expected != "no stop <shere")


def test_metric_interval_reads_each_written_form():
    assert metric_interval({"bleu4_ci": [1, 2]}, "bleu4") == [1.0, 2.0]
    assert metric_interval({"bleu4_low": 1, "bleu4_high": 3}, "bleu4") == [1.0, 3.0]
    assert metric_interval({"intervals": {"chrf": {"low": 4, "high": 5}}}, "chrf") == [4.0, 5.0]
    assert metric_interval({"bleu4": 3.0}, "bleu4") is None


class FakeTokenizer:
    """Decodes ids as UTF-8 bytes, like a byte-level BPE with one byte per token."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def test_token_streamer_holds_back_a_character_until_its_bytes_are_complete():
    import torch

    pieces: list[str] = []
    streamer = TokenStreamer(FakeTokenizer(), pieces.append)
    streamer.put(torch.tensor([[1, 2, 3]]))  # the prompt
    for byte in "a你".encode():
        streamer.put(torch.tensor([byte]))
    streamer.end()
    assert pieces == ["a", "你"]


def test_token_streamer_decodes_only_the_current_line():
    class Counting(FakeTokenizer):
        decoded = 0

        def decode(self, ids, skip_special_tokens=True):
            Counting.decoded += len(ids)
            return super().decode(ids)

    pieces: list[str] = []
    streamer = TokenStreamer(Counting(), pieces.append)
    streamer.prompt_skipped = True
    text = "第一行\n" * 200
    for byte in text.encode():
        streamer.put_ids([byte])
    streamer.end()
    assert "".join(pieces) == text
    assert Counting.decoded < 20 * len(text.encode())  # not the whole answer at every token


def test_status_of_each_stage(workdir):
    catalog = Catalog(workdir / "config.yaml", workdir, stale_after_s=60)
    now = time.time()
    logs = workdir / "logs" / "train_adapter"
    # rank-r2: running (fresh progress without an end)
    write_lines(logs / "rank-r2.progress.jsonl", [{"event": "start", "time": now, "step": 0}])
    # rank-r4: killed long ago (stale progress): incomplete
    write_lines(logs / "rank-r4.progress.jsonl", [{"event": "start", "time": now - 999, "step": 0}])
    os.utime(logs / "rank-r4.progress.jsonl", (now - 999, now - 999))
    # lccc-qlora: training failed
    (logs / "lccc-qlora.log").write_text("Traceback (most recent call last):\n  boom\n")
    statuses = {r["experiment"]: r["status"] for r in catalog.rows()}
    assert {name: statuses.pop(name) for name in ("rank-r2", "rank-r4", "lccc-qlora")} == {
        "rank-r2": "running", "rank-r4": "incomplete", "lccc-qlora": "failed"}
    assert set(statuses.values()) <= {"planned"}  # the config's other experiments
    for name in ("rank-r4", "lccc-qlora"):
        (workdir / "results/adapters" / name).mkdir(parents=True)
        (workdir / "results/adapters" / name / "train_metrics.json").write_text('{"steps": 4}')
    (workdir / "results/eval/rank-r4").mkdir(parents=True)
    (workdir / "results/eval/rank-r4/metrics.json").write_text('{"bleu4": 1.5, "bleu4_ci": [1, 2]}')
    rows = {r["experiment"]: r for r in catalog.rows()}
    assert rows["rank-r4"]["status"] == "done"
    assert rows["rank-r4"]["metrics"]["bleu4"] == 1.5 and rows["rank-r4"]["intervals"] == {"bleu4": [1.0, 2.0]}
    assert rows["lccc-qlora"]["status"] == "incomplete"  # trained, not evaluated


def test_intervals_come_from_the_metrics_table_when_metrics_json_has_none(workdir):
    catalog = Catalog(workdir / "config.yaml", workdir)
    (workdir / "results/eval/rank-r2").mkdir(parents=True)
    (workdir / "results/eval/rank-r2/metrics.json").write_text('{"bleu4": 2.0, "loss": 3.0}')
    (workdir / "results/metrics").mkdir(parents=True)
    (workdir / "results/metrics/experiments.tsv").write_text(
        "experiment\tbleu4\tbleu4_low\tbleu4_high\ttest_loss_low\ttest_loss_high\tchrf_low\tchrf_high\n"
        "rank-r2\t2.0\t1.0\t3.5\t2.9\t3.1\t\t\n")
    row = catalog.row("rank-r2")
    assert row["intervals"] == {"bleu4": [1.0, 3.5], "test_loss": [2.9, 3.1]}
    assert catalog.row("rank-r4")["intervals"] == {}


def test_planned_experiments_are_listed_before_anything_ran(client):
    body = client.get("/api/experiments").json()
    names = {r["experiment"] for r in body["experiments"]}
    assert {"lccc-qlora", "rank-r2", "rank-r4"} <= names  # the sweep expanded, too
    assert {r["status"] for r in body["experiments"]} == {"planned"}
    assert body["counts"]["planned"] == len(names)


@pytest.mark.parametrize("url", [
    "/api/logs/view?name=../config.yaml", "/api/logs/view?name=/etc/passwd",
    "/api/logs/view?name=logs/../config.yaml", "/api/logs/follow?name=../../etc/passwd",
    "/api/datasets/..%2F..%2Fetc/search", "/api/experiments/..%2Fconfig.yaml",
])
def test_names_never_reach_the_file_system(client, workdir, url):
    (workdir / "logs").mkdir()
    (workdir / "logs" / "real.log").write_text("hello\n")
    response = client.get(url)
    assert response.status_code == 404
    body = response.json()
    # Refused by the table of known names (listing them), or matching no route at all.
    assert "known" in body.get("error", {}) or body == {"detail": "Not Found"}
    assert "root:" not in response.text


def test_unknown_log_lists_the_known_ones(client, workdir):
    (workdir / "logs" / "evaluate").mkdir(parents=True)
    (workdir / "logs" / "evaluate" / "rank-r2.log").write_text("ok\n")
    response = client.get("/api/logs/view?name=nope.log")
    assert response.status_code == 404
    assert response.json()["error"]["known"] == ["logs/evaluate/rank-r2.log"]
    assert client.get("/api/logs/view?name=logs/evaluate/rank-r2.log").json()["text"] == "ok\n"


@pytest.mark.parametrize("body, field", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({"model": "rank-r2", "messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    ({"model": "rank-r2", "messages": []}, "messages"),
    ({"model": "rank-r2", "messages": [{"role": "user", "content": "hi"}], "temperature": 3}, "temperature"),
    ({"model": "rank-r2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"model": "rank-r2", "messages": [{"role": "user", "content": "hi"}], "stop": list("abcde")}, "stop"),
])
def test_invalid_chat_body_is_a_422_naming_the_field(client, body, field):
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["param"] == field


def test_a_model_not_built_yet_is_a_404_naming_it(client):
    response = client.post("/v1/chat/completions",
                           json={"model": "rank-r2", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 404
    assert "rank-r2" in response.json()["error"]["message"]
    response = client.post("/v1/chat/completions",
                           json={"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 404 and "unknown model 'gpt-4'" in response.json()["error"]["message"]


def test_token_is_checked_on_every_request(workdir):
    app = create_app(StudioSettings(config=workdir / "config.yaml", workdir=workdir, token="s3cret"))
    client = TestClient(app, base_url="http://127.0.0.1")
    for url in ("/", "/api/experiments", "/v1/models", "/static/studio.js"):
        assert client.get(url).status_code == 401, url
    assert client.get("/api/experiments", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/experiments", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/?token=s3cret").status_code == 200  # sets the cookie for the next ones
    assert client.get("/api/experiments").status_code == 200


def test_cli_refuses_a_public_address_without_a_token(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("STUDIO_TOKEN", raising=False)
    with pytest.raises(SystemExit, match="without an access token"):
        settings_from(parse_args(["--config", "config.yaml", "--host", "0.0.0.0"]))
    with pytest.raises(SystemExit, match="over plain http"):
        settings_from(parse_args(["--config", "config.yaml", "--host", "0.0.0.0", "--token", "t"]))
    insecure = settings_from(parse_args(["--config", "config.yaml", "--host", "0.0.0.0", "--token", "t",
                                         "--insecure-http"]))
    assert insecure.token == "t" and not insecure.secure_cookie
    (workdir / "cert.pem").write_text("x")
    (workdir / "key.pem").write_text("x")
    tls = settings_from(parse_args(["--config", "config.yaml", "--host", "0.0.0.0", "--token", "t",
                                    "--certfile", "cert.pem", "--keyfile", "key.pem"]))
    assert tls.secure_cookie
    with pytest.raises(SystemExit, match="go together"):
        settings_from(parse_args(["--config", "config.yaml", "--certfile", "cert.pem"]))
    monkeypatch.setenv("STUDIO_TOKEN", "from-env")
    assert settings_from(parse_args(["--config", "config.yaml", "--host", "0.0.0.0",
                                     "--insecure-http"])).token == "from-env"
    defaults = parse_args([])
    assert (defaults.host, defaults.port) == ("127.0.0.1", 8000)
    assert is_loopback("localhost") and is_loopback("::1") and not is_loopback("0.0.0.0")


def test_read_from_follows_appends_and_never_splits_a_character(tmp_path):
    path = tmp_path / "x.log"
    path.write_bytes("ab".encode() + "你".encode()[:2])
    text, offset = read_from(path, 0, 1 << 20)
    assert (text, offset) == ("ab", 2)
    with open(path, "ab") as fh:
        fh.write("你".encode()[2:] + b"\n")
    assert read_from(path, offset, 1 << 20) == ("你\n", 6)


def test_the_mailbox_delivers_a_burst_in_order_with_one_wake_up():
    """A batch step reports a token for each row from the worker thread: every item reaches
    its own queue in order, and the loop is woken once per burst, not once per item."""
    import asyncio
    import threading

    async def main():
        loop = asyncio.get_running_loop()
        box = LoopMailbox.of(loop)
        assert LoopMailbox.of(loop) is box
        queues = [asyncio.Queue() for _ in range(8)]
        wakeups, schedule = [], loop.call_soon_threadsafe

        def counting(callback, *args):
            wakeups.append(callback)
            return schedule(callback, *args)

        loop.call_soon_threadsafe = counting
        got = []
        for step in range(5):
            burst = threading.Thread(target=lambda: [box.put(q, (row, step)) for row, q in enumerate(queues)])
            burst.start()
            burst.join()  # the loop waits meanwhile, as it may while a step reports
            got.append([await q.get() for q in queues])
        del loop.call_soon_threadsafe
        assert got == [[(row, step) for row in range(8)] for step in range(5)]
        assert len(wakeups) == 5
        return box

    box = asyncio.run(main())
    with pytest.raises(RuntimeError):  # the loop is closed: the caller cancels its request
        box.put(asyncio.Queue(), "late")


def test_text_pieces_queued_together_stream_as_one_chunk():
    """When the loop falls behind the batch, the pieces waiting for a stream go out as one
    chunk (the same text, fewer events); the final chunks still follow."""
    import asyncio
    import threading

    from workflow_scripts.studio.chat_engine import Decoding, Outcome, PreparedChat, Target
    from workflow_scripts.studio.openai_api import stream_chunks

    async def main():
        queue = asyncio.Queue()
        for item in [("text", "你"), ("text", "好"), ("text", "！"), ("done", Outcome(3, 3, "length"))]:
            queue.put_nowait(item)
        chat = PreparedChat(Target("m", "m", False), [1, 2, 3], 3, Decoding())
        return [c async for c in stream_chunks(queue, threading.Event(), chat, [], "chatcmpl-1", 0, "m")]

    events = asyncio.run(main())
    assert events[-1] == "data: [DONE]\n\n"
    bodies = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    deltas = [b["choices"][0]["delta"] for b in bodies if b["choices"]]
    assert deltas[:2] == [{"role": "assistant", "content": ""}, {"content": "你好！"}]
    assert bodies[1] == {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0,
                         "model": "m", "choices": [{"index": 0, "delta": {"content": "你好！"},
                                                    "finish_reason": None, "logprobs": None}]}
    assert bodies[-2]["choices"][0]["finish_reason"] == "length"
    assert bodies[-1]["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("origin, scheme, host, allowed", [
    ("http://127.0.0.1:8000", "http", "127.0.0.1:8000", True),
    ("http://localhost:8000", "http", "127.0.0.1:8000", True),
    ("http://[::1]:8000", "http", "[::1]:8000", True),
    ("https://studio.example", "https", "studio.example", True),
    ("https://studio.example:443", "https", "studio.example", True),
    ("http://127.0.0.1:8000", "ws", "127.0.0.1:8000", True),  # a websocket from the page
    ("http://127.0.0.1:8001", "http", "127.0.0.1:8000", False),  # another server, same machine
    ("http://localhost:3000", "http", "localhost:8000", False),
    ("http://[::1]:9000", "http", "[::1]:8000", False),
    ("http://127.0.0.1", "http", "127.0.0.1:8000", False),
    ("https://127.0.0.1:8000", "http", "127.0.0.1:8000", False),
    ("http://studio.example", "https", "studio.example", False),
    ("ftp://127.0.0.1:8000", "http", "127.0.0.1:8000", False),
    ("http://evil.example:8000", "http", "127.0.0.1:8000", False),
    ("http://127.0.0.1:x", "http", "127.0.0.1:8000", False),
    ("null", "http", "127.0.0.1:8000", False),
])
def test_an_origin_is_the_studio_only_with_its_scheme_host_and_port(origin, scheme, host, allowed):
    hosts = {"127.0.0.1", "localhost", "::1", "studio.example"}
    assert same_origin(origin, scheme, host, hosts) is allowed

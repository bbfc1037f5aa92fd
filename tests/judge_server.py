"""A tiny OpenAI-compatible judge for tests: real FastAPI under a real uvicorn on a free
127.0.0.1 port, answering /v1/chat/completions by the requested model's name:

- "judge-fair": a deterministic judgment: each answer scores 2 + its length (capped at 10) on
  every criterion, the longer answer wins (equal lengths: a tie);
- "judge-garbage": every other reply is prose without JSON;
- "judge-refuses": a refusal (no content) every time;
- "judge-echo": the prompt's own format example back (a weak judge model);
- "judge-filters": a content filter (finish_reason "content_filter", no content) for the
  question 问题3, a fair judgment otherwise;
- "judge-empty": an empty reply for the question 问题3, a fair judgment otherwise;
- "judge-verbose": thinks aloud past the token limit (finish_reason "length") when asked
  for at most 512 tokens, a fair judgment when allowed more;
- "judge-cut": a reply cut at the token limit, every time;
- "judge-slow": answers after two seconds (longer than the client's timeout in the test);
- "judge-flaky": healthy for `healthy_calls` requests, then HTTP 503 until `healthy_calls`
  is raised again.

Every request is recorded (model, and the A/B answers it showed), so tests count calls at
the server. Requests without `Authorization: Bearer <key>` get 401.
"""
from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

ANSWER = re.compile(r"回答 A：\n(.*?)\n\n回答 B：\n(.*?)\n\n请分别", re.S)
QUESTION = re.compile(r"用户问题：\n(.*?)\n\n回答 A：", re.S)


def fair_scores(answer: str) -> float:
    return float(min(10, 2 + len(answer)))


def fair_reply(first: str, second: str) -> str:
    a, b = fair_scores(first), fair_scores(second)
    winner = "A" if len(first) > len(second) else "B" if len(second) > len(first) else "tie"
    scores = lambda s: f'{{"relevance": {s}, "fluency": {s}, "instruction_following": {s}}}'  # noqa: E731
    return f'好的。{{"A": {scores(a)}, "B": {scores(b)}, "winner": "{winner}"}}'


@dataclass
class JudgeServer:
    key: str
    healthy_calls: int = 10**9
    calls: list[dict] = field(default_factory=list)
    url: str = ""

    def count(self, model: str) -> int:
        return sum(c["model"] == model for c in self.calls)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def complete(request: Request):
            if request.headers.get("authorization") != f"Bearer {self.key}":
                return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
            body = await request.json()
            model = body["model"]
            prompt = body["messages"][-1]["content"]
            first, second = ANSWER.search(prompt).groups()
            question = QUESTION.search(prompt).group(1)
            self.calls.append({"model": model, "A": first, "B": second,
                               "max_tokens": body.get("max_tokens")})
            if model == "judge-slow":
                await asyncio.sleep(2)
            if model == "judge-flaky" and self.count(model) > self.healthy_calls:
                return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
            content, refusal, finish = fair_reply(first, second), None, "stop"
            if model == "judge-garbage" and self.count(model) % 2:
                content = "我觉得 A 更好，因为它更长。"
            if model == "judge-refuses":
                content, refusal = None, "I cannot judge this."
            if model == "judge-echo":
                content = prompt.rsplit("\n", 1)[-1]  # the format example, all scores 0
            if model == "judge-filters" and question == "问题3":
                content, finish = None, "content_filter"
            if model == "judge-empty" and question == "问题3":
                content = ""
            if model == "judge-verbose" and body.get("max_tokens", 0) <= 512:
                content, finish = "让我仔细想一想。" * 200, "length"
            if model == "judge-cut":
                content, finish = content[:30], "length"
            message = {"role": "assistant", "content": content, "refusal": refusal}
            return {"id": f"j{len(self.calls)}", "object": "chat.completion",
                    "created": int(time.time()), "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

        return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(server: JudgeServer) -> uvicorn.Server:
    """Serve `server` on a free loopback port in a thread; sets server.url (…/v1)."""
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(server.app(), host="127.0.0.1", port=port,
                                       log_level="warning"))
    threading.Thread(target=uv.run, daemon=True).start()
    deadline = time.time() + 30
    while not uv.started:
        if time.time() > deadline:
            raise RuntimeError("the test judge did not start")
        time.sleep(0.05)
    server.url = f"http://127.0.0.1:{port}/v1"
    return uv

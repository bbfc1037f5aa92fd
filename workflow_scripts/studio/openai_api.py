"""An OpenAI-compatible API over the base models and trained adapters.

`GET /v1/models` lists them; `POST /v1/chat/completions` answers in OpenAI's format, as
server-sent `chat.completion.chunk` events when `stream` is true (the last chunk carries the
token usage), so the official `openai` client works against the studio unchanged. Function
calling follows OpenAI's shape too (`tools`, assistant `tool_calls`, `role: tool` results;
see tool_calling.py).
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from workflow_scripts.studio.chat_engine import Decoding, ModelPool, Outcome, PreparedChat
from workflow_scripts.studio.errors import BadRequest
from workflow_scripts.studio.tool_calling import (CallSplitter, openai_calls, split_answer,
                                                  template_message, template_tools)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[dict] | None = Field(None, max_length=64)
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _has_content(self):
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant message has tool_calls")
        return self

    def as_template_message(self, index: int) -> dict:
        text = self.content if isinstance(self.content, str) or self.content is None else "".join(
            part.text for part in self.content)
        return template_message({"role": self.role, "content": text,
                                 "tool_calls": self.tool_calls}, index)


class ChatCompletionRequest(BaseModel):
    """The fields of OpenAI's request the studio honours; others are ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1)
    tools: list[dict] | None = Field(None, max_length=128)
    tool_choice: Literal["auto", "none"] | None = None  # "required" and named: not supported

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value):
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return stops

    @field_validator("messages")
    @classmethod
    def _has_a_turn(cls, value):
        if all(m.role in ("system", "developer") for m in value):
            raise ValueError("needs at least one user or assistant message")
        return value

    def decoding(self) -> Decoding:
        return Decoding(max_tokens=self.max_completion_tokens or self.max_tokens,
                        temperature=self.temperature, top_p=self.top_p, seed=self.seed)

    def template_tools(self) -> list[dict] | None:
        """The tools to show the model: none when `tool_choice` is "none"."""
        return None if self.tool_choice == "none" else template_tools(self.tools)


@dataclass(frozen=True)
class RequestLimits:
    """What one chat request may ask for; over a limit is a 400 (413 for the body) naming it."""

    max_body_bytes: int = 4 << 20
    max_messages: int = 256
    max_prompt_chars: int = 200_000
    max_tools_bytes: int = 64 << 10

    def check(self, body: "ChatCompletionRequest") -> None:
        if len(body.messages) > self.max_messages:
            raise BadRequest(f"{len(body.messages)} messages; this studio takes at most "
                             f"{self.max_messages} (max_messages)", param="messages")
        chars = sum(len(m.content) if isinstance(m.content, str) else
                    sum(len(p.text) for p in m.content or []) for m in body.messages)
        if chars > self.max_prompt_chars:
            raise BadRequest(f"the messages hold {chars} characters; this studio takes at most "
                             f"{self.max_prompt_chars} (max_prompt_chars)", param="messages")
        if body.tools:
            size = len(json.dumps(body.tools, ensure_ascii=False).encode())
            if size > self.max_tools_bytes:
                raise BadRequest(f"the tool schemas take {size} bytes as JSON; this studio takes "
                                 f"at most {self.max_tools_bytes} (max_tools_bytes)", param="tools")


class StopMatcher:
    """Cuts streamed text at the first stop sequence, holding back only a tail that could
    still become one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.buffer, self.stopped = "", False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        self.buffer += text
        hits = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buffer, self.stopped = self.buffer[:min(hits)], "", True
            return out
        hold = max((k for s in self.stops for k in range(1, len(s))
                    if self.buffer.endswith(s[:k])), default=0)
        out = self.buffer[:len(self.buffer) - hold]
        self.buffer = self.buffer[len(self.buffer) - hold:]
        return out

    def flush(self) -> str:
        out, self.buffer = ("" if self.stopped else self.buffer), ""
        return out


class LoopMailbox:
    """Hands items from worker threads to queues of one event loop, waking the loop once
    per burst rather than once per item: a batch step reports a token for every row, and
    each wake-up is a write to the loop's self-pipe and a switch of threads."""

    _boxes: dict[int, "LoopMailbox"] = {}
    _boxes_lock = threading.Lock()

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue, Any]] = []

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> "LoopMailbox":
        with cls._boxes_lock:
            box = cls._boxes.get(id(loop))
            if box is None or box.loop is not loop:
                for key in [k for k, b in cls._boxes.items() if b.loop.is_closed()]:
                    del cls._boxes[key]
                box = cls._boxes[id(loop)] = cls(loop)
            return box

    def put(self, queue: asyncio.Queue, item: Any) -> None:
        """Raises RuntimeError when the loop is closed."""
        with self._lock:
            self._pending.append((queue, item))
            if len(self._pending) > 1:  # a wake-up is already on its way
                return
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:
            with self._lock:
                self._pending.clear()
            raise

    def _deliver(self) -> None:
        with self._lock:
            items, self._pending = self._pending, []
        for queue, item in items:
            queue.put_nowait(item)


def start_generation_sync(pool: ModelPool, chat: PreparedChat, cancel: threading.Event,
                          loop: asyncio.AbstractEventLoop) -> asyncio.Queue:
    """Hand the chat to the pool (its batch, or a worker thread when unbatched), loading
    the model first if needed (blocking: call it off the event loop). The queue gets
    ("text", piece)... then ("done", Outcome) or ("error", exception). Raises Overloaded,
    with nothing started, when the base's queue is full."""
    queue: asyncio.Queue = asyncio.Queue()
    mailbox = LoopMailbox.of(loop)

    def put(kind: str, value: Any) -> None:
        try:
            mailbox.put(queue, (kind, value))
        except RuntimeError:  # the loop is gone: nobody is listening any more
            cancel.set()

    pool.submit(chat, cancel, put)
    return queue


async def start_generation(pool: ModelPool, chat: PreparedChat,
                           cancel: threading.Event) -> asyncio.Queue:
    """start_generation_sync off the event loop; a request cancelled meanwhile cancels the
    generation it may have started."""
    try:
        return await asyncio.to_thread(start_generation_sync, pool, chat, cancel,
                                       asyncio.get_running_loop())
    except asyncio.CancelledError:
        cancel.set()
        raise


class GenerationStream(StreamingResponse):
    """A streamed answer whose generation is cancelled however the response ends. The body's
    own `finally` is not enough: it runs only once its generator has started and is closed,
    and a response cancelled before its first chunk, or while its generator waits at a
    `yield`, leaves that to the garbage collector."""

    def __init__(self, content, cancel: threading.Event, **kwargs: Any):
        super().__init__(content, **kwargs)
        self.cancel = cancel

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.cancel.set()


def openai_error(status: int, message: str, kind: str, param: str | None = None,
                 code: str | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param,
                                   "code": code, **extra}}, status_code=status)


def usage(outcome: Outcome) -> dict:
    return {"prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens,
            "total_tokens": outcome.prompt_tokens + outcome.completion_tokens}


def finish_reason(outcome: Outcome, stopped: bool) -> str:
    return "stop" if stopped or outcome.finish_reason != "length" else "length"


def splitter(chat: PreparedChat) -> CallSplitter | None:
    return CallSplitter(chat.call_format) if chat.call_format else None


def build_router(pool: ModelPool, limits: RequestLimits | None = None) -> APIRouter:
    limits = limits or RequestLimits()
    router = APIRouter(prefix="/v1")

    def model_card(model_id: str, target) -> dict:
        return {"id": model_id, "object": "model", "created": 0,
                "owned_by": "experiment" if target.experiment else "base-model",
                "base_model": target.base_model, "quantized": target.quantized}

    @router.get("/models")
    def list_models() -> dict:
        return {"object": "list", "data": [model_card(m, t) for m, t in pool.available().items()]}

    @router.get("/models/{model_id}")
    def get_model(model_id: str) -> dict:
        return model_card(model_id, pool.resolve(model_id))

    @router.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        limits.check(body)
        messages = [m.as_template_message(i) for i, m in enumerate(body.messages)]
        chat = await asyncio.to_thread(pool.prepare, body.model, messages, body.decoding(),
                                       body.template_tools())
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            cancel = threading.Event()
            queue = await start_generation(pool, chat, cancel)
            events = stream_chunks(queue, cancel, chat, body.stop or [], completion_id, created, body.model)
            return GenerationStream(events, cancel, media_type="text/event-stream",
                                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await complete(pool, chat, body.stop or [], request, completion_id, created, body.model)

    return router


async def complete(pool: ModelPool, chat: PreparedChat, stops: list[str], request: Request,
                   completion_id: str, created: int, model: str) -> JSONResponse:
    cancel, matcher, pieces = threading.Event(), StopMatcher(stops), []
    queue = await start_generation(pool, chat, cancel)
    getter, checked = None, time.monotonic()
    try:
        while True:
            getter = getter or asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter}, timeout=0.5)
            if time.monotonic() - checked >= 0.5:  # every half second, tokens coming or not
                checked = time.monotonic()
                if await request.is_disconnected():
                    cancel.set()
            if not done:
                continue
            (kind, value), getter = getter.result(), None
            if kind == "text":
                pieces.append(matcher.feed(value))
                if matcher.stopped:
                    cancel.set()
            elif kind == "error":
                return openai_error(500, f"generation failed: {value}", "server_error")
            else:
                break
    finally:
        cancel.set()
        if getter is not None:
            getter.cancel()
    pieces.append(matcher.flush())
    message, reason = {"role": "assistant", "content": "".join(pieces)}, finish_reason(value, matcher.stopped)
    if chat.call_format:
        content, calls = split_answer(chat.call_format, message["content"])
        if calls:
            message["content"], message["tool_calls"] = content, openai_calls(calls)
            reason = "tool_calls"
    return JSONResponse({
        "id": completion_id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": reason, "logprobs": None}],
        "usage": usage(value),
    })


async def stream_chunks(queue: asyncio.Queue, cancel: threading.Event, chat: PreparedChat,
                        stops: list[str], completion_id: str, created: int,
                        model: str) -> AsyncIterator[str]:
    """Server-sent chunks of a started generation; leaving early (the client went away)
    cancels it."""
    matcher, calls_reader = StopMatcher(stops), splitter(chat)

    def content(text: str) -> str:
        """What of the answer's text may go out now (a possible call is held back)."""
        return calls_reader.feed(text) if calls_reader else text

    def chunk(delta: dict, reason: str | None = None, **extra: Any) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": [{"index": 0, "delta": delta,
                                             "finish_reason": reason, "logprobs": None}], **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    # A text chunk is this chunk's JSON around its delta: built once, not per token.
    head, tail = chunk({"content": ""}).split('{"content": ""}')

    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            kind, value = await queue.get()
            while kind == "text" and not queue.empty():  # pieces that came in meanwhile
                following = queue.get_nowait()  # go out as one chunk
                if following[0] != "text":
                    queue.put_nowait(following)  # read next; nothing else is queued after it
                    break
                value += following[1]
            if kind == "text":
                text = content(matcher.feed(value))
                if matcher.stopped:
                    cancel.set()
                if text:
                    yield head + json.dumps({"content": text}, ensure_ascii=False) + tail
            elif kind == "error":
                error = {"error": {"message": f"generation failed: {value}", "type": "server_error"}}
                yield f"data: {json.dumps(error)}\n\n"
                return
            else:
                rest, calls = content(matcher.flush()), None
                if calls_reader:
                    held, calls = calls_reader.finish()
                    rest += held
                if rest:
                    yield chunk({"content": rest})
                for index, call in enumerate(openai_calls(calls or [])):
                    yield chunk({"tool_calls": [{"index": index, **call}]})
                yield chunk({}, "tool_calls" if calls else finish_reason(value, matcher.stopped))
                final = {"id": completion_id, "object": "chat.completion.chunk",
                         "created": created, "model": model, "choices": [], "usage": usage(value)}
                yield f"data: {json.dumps(final)}\n\n"
                break
        yield "data: [DONE]\n\n"
    finally:
        cancel.set()

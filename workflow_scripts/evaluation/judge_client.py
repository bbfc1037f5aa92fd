"""Calls to an OpenAI-compatible judge, retried with back-off, and a disk cache of its replies.

The client is the official `openai` package pointed at any `base_url` (a hosted model, a
local vLLM, this project's studio at /v1). Its key is read from the environment variable the
config names and lives only in the client object: it is never printed, logged or written.
Replies are cached one file per key under the cache directory, written atomically, so
parallel judge jobs share the cache safely and a failed job keeps every reply it got.

A call ends in a `Reply`: the judge's text (with `cut` when it stopped at the token limit),
or a refusal (a content filter, an explicit refusal, an empty reply) with its reason. A
refusal is the judge's answer for that item, not a failure of the judge: only errors of the
endpoint (timeouts, connection errors, HTTP errors) fail the job.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RETRIED_STATUS = {408, 409, 429}  # and every 5xx: timeouts, overload, server errors
MAX_TOKENS = 512  # the asked JSON takes about 150 tokens


@dataclass(frozen=True)
class Reply:
    """What one call returned: `text`, or None and the `refused` reason; `cut` when the
    reply stopped at the token limit (finish_reason "length")."""

    text: str | None
    refused: str = ""
    cut: bool = False


class JudgeError(RuntimeError):
    """The judge could not be reached or kept refusing; the message names the endpoint."""


def read_key(api_key_env: str) -> str:
    key = os.environ.get(api_key_env)
    if not key:
        raise JudgeError(f"the judge's key: environment variable {api_key_env} (judge.api_key_env)"
                         " is not set (any value for a server without authentication)")
    return key


class ReplyCache:
    """Judge replies on disk, one JSON file per key (sha256 of the judge's endpoint and
    model, the prompt template, the question and both answers in their order)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    @staticmethod
    def key(*parts: str) -> str:
        return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self.path(key)
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def put(self, key: str, record: dict) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False,
                                         suffix=".tmp") as fh:
            json.dump(record, fh, ensure_ascii=False)
        os.replace(fh.name, path)


class Judge:
    """One judge endpoint: `reply(messages)` returns its Reply, after retrying timeouts,
    overloads, server errors and empty replies `attempts` times with doubling waits; an
    explicit refusal (a content filter, the `refusal` field) is returned at once, and an
    empty reply that stays empty is returned as a refusal too."""

    def __init__(self, base_url: str, model: str, api_key_env: str, attempts: int = 4,
                 backoff_s: float = 2.0, timeout_s: float = 120.0):
        from openai import OpenAI

        self.base_url, self.model = base_url, model
        self.attempts, self.backoff_s = attempts, backoff_s
        self.client = OpenAI(base_url=base_url, api_key=read_key(api_key_env),
                             timeout=timeout_s, max_retries=0)

    def where(self) -> str:
        return f"judge {self.model!r} at {self.base_url}"

    def reply(self, messages: list[dict], max_tokens: int = MAX_TOKENS) -> Reply:
        last: Reply | str = ""
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                last = self._once(messages, max_tokens)
            except _Retry as err:
                last = str(err)
                continue
            if last.refused != EMPTY:  # an empty reply may be a hiccup: asked again
                return last
        if isinstance(last, Reply):
            return last  # empty every time: the judge's answer for this item
        raise JudgeError(f"{self.where()} failed {self.attempts} times; last: {last}")

    def _once(self, messages: list[dict], max_tokens: int) -> Reply:
        """The Reply of one call; raises _Retry for a retryable error."""
        import openai

        try:
            response = self.client.chat.completions.create(
                model=self.model, messages=messages, temperature=0, max_tokens=max_tokens)
        except (openai.APITimeoutError, openai.APIConnectionError) as err:
            raise _Retry(type(err).__name__) from None
        except openai.APIStatusError as err:
            if err.status_code in RETRIED_STATUS or err.status_code >= 500:
                raise _Retry(f"HTTP {err.status_code}") from None
            raise JudgeError(f"{self.where()} answered HTTP {err.status_code}: "
                             f"{str(err.message)[:300]}") from None
        choice = response.choices[0] if response.choices else None
        if choice is None:
            return Reply(None, EMPTY)
        refusal = getattr(choice.message, "refusal", None)
        if refusal or choice.finish_reason == "content_filter":
            return Reply(None, str(refusal or choice.finish_reason))
        if not choice.message.content:
            return Reply(None, EMPTY)
        return Reply(choice.message.content, cut=choice.finish_reason == "length")


EMPTY = "empty reply"  # no choices or no content: retried, then taken as a refusal


class _Retry(Exception):
    """A retryable failure of one call."""

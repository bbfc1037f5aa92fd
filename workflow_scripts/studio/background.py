"""Serve the studio from a background thread on a free loopback port (tests, benchmarks)."""
from __future__ import annotations

import socket
import threading
import time

import uvicorn
from fastapi import FastAPI


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class BackgroundServer:
    """A real uvicorn serving `app` until the `with` block ends; `url` is its base address."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int | None = None):
        self.app, self.host, self.port = app, host, port or free_port(host)
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning",
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="studio-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the studio did not start on {self.url}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        stopping = getattr(self.app.state, "stopping", None)
        if stopping is not None:  # ends the studio's live pushes
            stopping.set()
            time.sleep(self.app.state.settings.push_interval_s + 0.5)
        self.server.should_exit = True
        self.thread.join(timeout=10)

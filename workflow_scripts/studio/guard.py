"""What every request must pass before the app sees it: an allowed `Host`, no foreign
`Origin` on a request that changes something, and a body under the size limit.

The Host check closes DNS rebinding: a web page on `evil.example` that re-points its name
at 127.0.0.1 reaches the studio from the user's own browser, but its requests still say
`Host: evil.example`. The Origin check refuses a POST that a foreign page's script or form
sends to the studio's real address: a page is foreign unless its scheme, host and port are
the studio's own (another server on this machine, on another port, is foreign). The body
limit is checked on `Content-Length` before anything is read, and again while a body
without one arrives, so no request is buffered beyond it (a refused body is read to its end
and dropped, up to DRAIN_BYTES, so the client sees the 413).
"""
from __future__ import annotations

import ipaddress
import json
import socket
from typing import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARDS = ("0.0.0.0", "::", "")
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
DEFAULT_PORTS = {"http": 80, "https": 443}
# A refused body up to this size is still read (and dropped, never kept), so that a client
# still sending it gets the 413 instead of a closed connection; a larger one is cut off.
DRAIN_BYTES = 64 << 20


def host_name(value: str) -> str:
    """The name part of a Host header or an address, lower case, without port or brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value[1:]
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def host_port(value: str) -> int | None:
    """The port of a Host header (None when it names none)."""
    value = value.strip()
    tail = value[value.find("]") + 1:] if value.startswith("[") else value
    if tail.count(":") != 1:
        return None
    port = tail.rsplit(":", 1)[1]
    return int(port) if port.isdigit() else None


def same_origin(origin: str, scheme: str, host: str, hosts: set[str]) -> bool:
    """Whether a page's `Origin` is the studio as this request reached it: the request's
    scheme, an allowed name, and the port of its `Host` header (or the scheme's default),
    so that another server on the same machine (another port) is foreign too."""
    scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    default = DEFAULT_PORTS.get(scheme)
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:  # a malformed port
        return False
    return (default is not None and parts.scheme == scheme
            and (parts.hostname or "").rstrip(".") in hosts
            and (port or default) == (host_port(host) or default))


def allowed_hosts(bind: str, extra: Iterable[str] = ()) -> set[str]:
    """Names a request's Host may carry: the bound address (and for the loopback its
    usual names; for a wildcard bind this machine's name and addresses) and `extra`."""
    names = {host_name(bind), *(host_name(e) for e in extra)}
    try:
        loopback = ipaddress.ip_address(host_name(bind)).is_loopback
    except ValueError:
        loopback = host_name(bind) == "localhost"
    if loopback:
        names.update(LOOPBACK_NAMES)
    if host_name(bind) in WILDCARDS:
        names.discard(host_name(bind))
        names.update(LOOPBACK_NAMES)
        names.update(_this_machine())
    return {n for n in names if n}


def _this_machine() -> set[str]:
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    try:
        names.update(info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None))
    except socket.gaierror:
        pass
    return names


def _error(status: int, message: str, kind: str, code: str) -> tuple[int, bytes]:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return status, json.dumps(body).encode()


class RequestGuard:
    """ASGI middleware: Host allow-list, Origin check on unsafe methods, body size limit."""

    def __init__(self, app, hosts: set[str], max_body_bytes: int):
        self.app, self.hosts, self.max_body_bytes = app, hosts, max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is None and scope["type"] == "http" and scope["method"] in UNSAFE_METHODS:
            refusal, receive = await self._bounded_body(headers, receive)
        if refusal is not None:
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            return await _send_json(send, *refusal)
        return await self.app(scope, receive, send)

    def _refusal(self, scope, headers: dict[str, str]) -> tuple[int, bytes] | None:
        host = host_name(headers.get("host", ""))
        if host not in self.hosts:
            return _error(400, f"Host {headers.get('host', '')!r} is not one this studio serves "
                               f"({', '.join(sorted(self.hosts))}); start it with --allowed-host "
                               f"NAME to add one", "invalid_request_error", "host_not_allowed")
        origin = headers.get("origin")
        if origin is not None and scope.get("method") in UNSAFE_METHODS | {None}:
            if not same_origin(origin, scope.get("scheme", "http"), headers.get("host", ""), self.hosts):
                return _error(403, f"requests from the page at {origin!r} are refused: only the "
                                   f"studio's own pages (same scheme, allowed host and port) may "
                                   f"send them", "permission_error", "origin_not_allowed")
        return None

    async def _bounded_body(self, headers: dict[str, str], receive):
        """The body read up to the limit (413 past it), and a `receive` that replays it."""
        limit = self.max_body_bytes
        too_big = _error(413, f"the request body is over this studio's limit of {limit} bytes "
                              f"(--max-body-bytes)", "invalid_request_error", "body_too_large")
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max(limit, DRAIN_BYTES):
            return too_big, receive  # not worth reading: the connection closes instead
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return None, _replay([], message, receive)
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > limit:
                chunks = []  # nothing more is kept; the rest is read and dropped
                if size > max(limit, DRAIN_BYTES):
                    return too_big, receive
            else:
                chunks.append(chunk)
        if size > limit:
            return too_big, receive
        return None, _replay(chunks, None, receive)


def _replay(chunks: list[bytes], pending: dict | None, receive) -> Callable[[], Awaitable[dict]]:
    """A `receive` that first gives the body already read, then defers to the real one."""
    state = {"sent": False}

    async def replay() -> dict:
        if not state["sent"]:
            state["sent"] = True
            if pending is not None:
                return pending
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        return await receive()

    return replay


async def _send_json(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})

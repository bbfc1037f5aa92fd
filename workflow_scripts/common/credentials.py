"""Credentials in URIs: found in a config before any job starts, removed from any text written.

A URI's user information (`scheme://user:password@host`) travels wherever the URI does: job
command lines (and so Snakemake's log), config snapshots, receipts, the report, a tracker's
params, and the messages of errors raised while using it. The config refuses it
(`credential_problems`); text that could still hold it, such as an exception's message, goes
through `redact` before it is written.
"""
from __future__ import annotations

import re
import urllib.parse
from typing import Any, Iterable, Iterator

# scheme://userinfo@ (the userinfo cannot hold '/', '?', '#' or '@' unencoded)
USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s'\"<>]*)@")
HIDDEN = "***"


def userinfo(uri: str) -> str | None:
    """The user information of `uri` (`user` or `user:password`), None when it has none."""
    match = USERINFO.match(uri.strip())
    return match.group("userinfo") if match else None


def without_userinfo(uri: str) -> str:
    """`uri` with its user information left out."""
    return USERINFO.sub(lambda m: m.group("scheme"), uri)


def secrets_of(uris: Iterable[str]) -> list[str]:
    """The pieces of these URIs' user information that must never be written: the whole
    userinfo, the password, both as given and percent-decoded."""
    pieces = set()
    for uri in uris:
        info = userinfo(uri or "")
        if not info:
            continue
        _, _, password = info.partition(":")
        for piece in (info, password):
            pieces.update(p for p in (piece, urllib.parse.unquote(piece)) if p)
    return sorted(pieces, key=len, reverse=True)  # longest first: a part never splits a whole


def redact(text: str, uris: Iterable[str] = ()) -> str:
    """`text` with every URI's user information replaced by *** and every piece of the given
    URIs' credentials removed wherever it appears (error messages quote them without their
    scheme: `nonnumeric port: 'password@host'`)."""
    text = USERINFO.sub(lambda m: f"{m.group('scheme')}{HIDDEN}@", text)
    for piece in secrets_of(uris):
        text = text.replace(piece, HIDDEN)
    return text


# Keys whose URIs take no user name either, and where their credentials go instead.
CREDENTIAL_HOMES = {
    "tracking.mlflow.tracking_uri": (
        "a tracking server reads them from the environment variables MLFLOW_TRACKING_USERNAME "
        "and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN), a database store from its "
        "driver's own environment or password file (PostgreSQL: PGUSER, PGPASSWORD, ~/.pgpass); "
        "docs/tracking.md"),
    "judge.base_url": "the judge's key goes in the environment variable judge.api_key_env names",
}


def _strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, f"{path}[{i}]")
    elif isinstance(value, str):
        yield path, value


def credential_problems(config: dict) -> list[str]:
    """One line per config value that holds credentials in a URI, naming its key and never
    its value: a password anywhere, any user information under CREDENTIAL_HOMES' keys."""
    lines = []
    for key, value in _strings(config):
        info = userinfo(value)
        if info is None or (":" not in info and key not in CREDENTIAL_HOMES):
            continue
        home = CREDENTIAL_HOMES.get(key, "give them through the jobs' environment")
        lines.append(f"{key}: the URI holds a user name or password (user:password@), which "
                     f"would be written to job logs, Snakemake's log, receipts and the report; "
                     f"give the URI without it: {home}")
    return lines

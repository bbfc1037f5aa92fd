"""Errors the studio turns into HTTP answers."""
from __future__ import annotations

from typing import Iterable


class UnknownName(LookupError):
    """A name that is not in the table of known experiments, models, datasets or logs (404)."""

    def __init__(self, kind: str, name: str, known: Iterable[str], reason: str = ""):
        self.kind, self.name, self.known = kind, name, sorted(known)
        shown = ", ".join(self.known[:50]) + (" ..." if len(self.known) > 50 else "")
        why = reason or f"unknown {kind}"
        super().__init__(f"{why} {name!r}; known: {shown or '(none)'}")


class BadRequest(ValueError):
    """A well-formed request the studio cannot serve, e.g. over a limit (400)."""

    def __init__(self, message: str, param: str | None = None):
        self.param = param
        super().__init__(message)

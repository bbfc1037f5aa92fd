"""A chat template's rendering of one conversation *shape*, with the message texts left as holes.

`chat_tokenize` renders every conversation 1 + 2 x (assistant turns) times to find where the
replies are. Those renders depend on the texts only if the template looks at them; most
templates only write them out. For a shape (the roles, every field but the text, whether each
text is empty, the tools) this module renders the conversation once with each non-empty text
replaced by a tracked placeholder that refuses every operation but being concatenated with `+`
and written out (`{{ ... }}`). A render that completes without touching a placeholder
therefore produced the same characters around the texts for every conversation of that shape,
and the real rendering is the skeleton with the texts put back. The renders are also made the
ordinary way (`apply_chat_template` with the placeholders as plain strings) and must match.

What makes a template unusable here (then `chat_tokenize` renders every record of the shape):
a template that inspects a text (its methods, `==`, `in`, slicing, `~`, `'%s' %`, or passing
it to any filter, test other than a type test, or function), captures output (`{% set %}`
blocks, macros, `{% call %}`, `{% generation %}`, filter blocks, whose results could be
inspected afterwards), puts anything but a constant or a field other than `content` left of
`in` (`text in 'abc'` is read in C), or reads the clock (`strftime_now`).
"""
from __future__ import annotations

import dis
import functools
import re
import sys
from dataclasses import dataclass
from typing import Any

# Placeholder k: private-use delimiters, and characters that any escaping (JSON, HTML) or
# trimming would change, so a placeholder that was transformed is never found intact.
_MARK = " <&\"'\\\n\tAz中 "
_PLACEHOLDER = re.compile("\ue000(\\d+)\ue002" + re.escape(_MARK) + "\ue001")
_DELIMITERS = re.compile("[\ue000\ue001\ue002]")
_OUTPUT_OPCODES = frozenset({"CALL", "PRECALL", "CALL_FUNCTION"})  # `yield str(x)`, by Python version


def placeholder(index: int) -> str:
    return f"\ue000{index}\ue002{_MARK}\ue001"


class ContentInspected(Exception):
    """The template did something with a message's text other than writing it out."""


def _refuse(self, *args, **kwargs):
    raise ContentInspected("a message's text was inspected")


def _written_out() -> bool:
    """Whether `str()` is being called by a template's `{{ ... }}` (compiled `yield str(x)`), not by
    a filter or `'%s' % x`, whose result the template could inspect."""
    frame = sys._getframe(2)
    if frame.f_code.co_filename != "<template>":
        return False
    return dis.opname[frame.f_code.co_code[frame.f_lasti]] in _OUTPUT_OPCODES


class TrackedText(str):
    """A placeholder for a non-empty message text: `+` with strings and output only."""

    __slots__ = ()

    def __getattribute__(self, name: str) -> Any:
        if name == "__class__":
            return str.__getattribute__(self, name)
        raise ContentInspected(f"a message's text was read through .{name}")

    def __bool__(self) -> bool:
        return True  # only non-empty texts are tracked; emptiness is part of the shape

    def __add__(self, other: Any) -> Any:
        if isinstance(other, str):
            return TrackedText(str.__add__(self, other))
        return NotImplemented

    def __radd__(self, other: Any) -> Any:
        if isinstance(other, str):
            return TrackedText(str.__add__(other, self))
        return NotImplemented

    def __str__(self) -> str:
        if not _written_out():
            raise ContentInspected("a message's text was converted outside an output statement")
        return str.__str__(self)

    __len__ = __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __hash__ = _refuse
    __contains__ = __getitem__ = __iter__ = __mod__ = __rmod__ = __mul__ = __rmul__ = _refuse
    __format__ = __repr__ = __reduce__ = __reduce_ex__ = __getnewargs__ = __sizeof__ = _refuse


_CAPTURES = ("Macro", "CallBlock", "AssignBlock", "FilterBlock")
# Tests that depend on a value's type only, which is `str` for every text.
_TYPE_TESTS = frozenset({"defined", "undefined", "none", "string", "mapping", "number", "integer",
                         "float", "boolean", "true", "false", "callable", "sameas"})


@functools.lru_cache(maxsize=16)
def template_problem(environment, source: str) -> str | None:
    """Why a template cannot be rendered as a skeleton, or None."""
    from jinja2 import nodes

    tree = environment.parse(source)
    for name in _CAPTURES:
        if next(tree.find_all(getattr(nodes, name)), None) is not None:
            return f"template captures output ({name})"
    if any(node.name == "strftime_now" for node in tree.find_all(nodes.Name)):
        return "template reads the clock (strftime_now)"
    for compare in tree.find_all(nodes.Compare):
        # `text in 'literal'` reads the text in C, past the placeholder's guards: only a
        # constant or a field other than `content` may stand left of `in`
        if any(op.op in ("in", "notin") for op in compare.ops) and not _plain_operand(compare.expr):
            return "template tests whether a value is `in` another"
    return None


def _plain_operand(node) -> bool:
    from jinja2 import nodes

    if isinstance(node, nodes.Const):
        return True
    if isinstance(node, nodes.Getattr):
        return node.attr != "content"
    if isinstance(node, nodes.Getitem):
        return isinstance(node.arg, nodes.Const) and node.arg.value != "content"
    return False


def _holds_text(args: tuple, kwargs: dict) -> bool:
    return any(isinstance(a, TrackedText) for a in args) or any(
        isinstance(v, TrackedText) for v in kwargs.values())


def _guarded(fn):
    """`fn` (a filter, test or global), refusing a placeholder among its arguments: filters
    such as `wordcount`, `int` or `safe` read a string in C, past the placeholder's methods."""
    @functools.wraps(fn)  # keeps Jinja's pass_context marks
    def guarded(*args, **kwargs):
        if _holds_text(args, kwargs):
            raise ContentInspected(f"a message's text went to {getattr(fn, '__name__', fn)}")
        return fn(*args, **kwargs)
    return guarded


@functools.lru_cache(maxsize=16)
def tracked_template(compiled, source: str):
    """`source` compiled again in an overlay of `compiled`'s environment whose filters, tests
    and calls refuse placeholders (the environment `apply_chat_template` uses is left alone)."""
    environment = compiled.environment.overlay()
    environment.filters = {k: _guarded(f) for k, f in compiled.environment.filters.items()}
    environment.tests = {k: f if k in _TYPE_TESTS else _guarded(f)
                         for k, f in compiled.environment.tests.items()}
    call = environment.call

    def guarded_call(context, obj, *args, **kwargs):
        if _holds_text(args, kwargs):
            raise ContentInspected("a message's text went to a function or method")
        return call(context, obj, *args, **kwargs)

    environment.call = guarded_call
    return environment.from_string(source)


@dataclass(frozen=True)
class Boundary:
    """A character position in a rendering: `chars` template characters plus the lengths of the
    texts of `texts` (message indices, one per placeholder before it)."""

    chars: int
    texts: tuple[int, ...]

    def offset(self, contents: list[str]) -> int:
        return self.chars + sum([len(contents[i]) for i in self.texts])


@dataclass(frozen=True)
class Skeleton:
    """One shape's rendering: template text and message indices, and the reply spans."""

    parts: tuple[str | int, ...]
    spans: tuple[tuple[Boundary, Boundary], ...]

    def text(self, contents: list[str]) -> str:
        return "".join(p if isinstance(p, str) else contents[p] for p in self.parts)


def split_placeholders(rendered: str) -> tuple[str | int, ...] | None:
    """The rendering as template text and message indices; None if a placeholder was altered."""
    parts: list[str | int] = []
    last = 0
    for match in _PLACEHOLDER.finditer(rendered):
        parts += [rendered[last:match.start()], int(match.group(1))]
        last = match.end()
    parts.append(rendered[last:])
    if any(isinstance(p, str) and _DELIMITERS.search(p) for p in parts):
        return None
    return tuple(parts)


def boundary(rendered_prefix: str) -> Boundary:
    """The position at the end of `rendered_prefix` (a rendering that ends between placeholders)."""
    parts = split_placeholders(rendered_prefix) or ()
    texts = tuple(p for p in parts if isinstance(p, int))
    chars = sum(len(p) for p in parts if isinstance(p, str))
    return Boundary(chars, texts)

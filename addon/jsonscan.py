"""The top-level members of a JSON object, found without building the object.

Deciding whether to ask a stream for its usage (injection.py) needs two members of a request
that may be tens of MB (a base64 image is most of it). ``json.loads`` would build every value:
memory up to ~25x the body for one made of small containers, and time while the event loop
waits. This walks the bytes instead: strings are skipped with ``bytes.find`` (a memchr), the
structure between them with one compiled expression, and only the members asked for are
returned, as byte spans of the body. Extra memory is constant. Each C call scans at most
``_WINDOW`` bytes, so no single step holds the interpreter long; the Python work is bounded by
``budget`` (strings and brackets seen), past which the body is reported unreadable.

Exact for valid JSON; for invalid JSON it may return anything or raise ``Unreadable``, and the
provider refuses such a body anyway.
"""

from __future__ import annotations

import json
import re

_WINDOW = 1 << 20
_NEXT = re.compile(rb'["\[\]{}]')  # what changes the structure: a string or a bracket
_BLANK = re.compile(rb"[ \t\n\r]*+")  # JSON's whitespace, and only it
_SCALAR = re.compile(rb"[^,\]}\s]++")  # a number, true, false or null
_ESCAPES = re.compile(rb'(?:[^"\\]++|\\.)*+', re.S)
_MAX_SCALAR = 1024
_MAX_KEY = 128  # the longest name asked for, each character escaped as \uXXXX, fits
_MEMBER_COST = 10  # a top-level member costs the Python work of about ten strings or brackets


class Unreadable(ValueError):
    """The body is not a JSON object this scan can read; the text says why, for the call's row."""


def members(body: bytes, wanted: frozenset[str], budget: int) -> tuple[int, list[tuple[str, int, int]]]:
    """(where the object's first member may go, [(name, value start, value end)] of the wanted
    members, in order, duplicates included). Raises Unreadable."""
    scan = _Scan(body, budget)
    at = scan.blank(0)
    if body[at:at + 1] != b"{":
        raise Unreadable("the request body is not a JSON object")
    opening = at + 1
    found: list[tuple[str, int, int]] = []
    at = scan.blank(opening)
    if body[at:at + 1] == b"}":
        return opening, found
    while True:
        if body[at:at + 1] != b'"':
            raise Unreadable("the request body is not valid JSON")
        end = scan.string(at)
        name = _name(body[at:end]) if end - at <= _MAX_KEY else None
        at = scan.blank(end)
        if body[at:at + 1] != b":":
            raise Unreadable("the request body is not valid JSON")
        start = scan.blank(at + 1)
        end = scan.value(start)
        if name in wanted:
            found.append((name, start, end))
        scan.spend(_MEMBER_COST)
        at = scan.blank(end)
        if body[at:at + 1] == b"}":
            if scan.blank(at + 1) != len(body):
                raise Unreadable("the request body is not valid JSON")
            return opening, found
        if body[at:at + 1] != b",":
            raise Unreadable("the request body is not valid JSON")
        at = scan.blank(at + 1)


def _name(raw: bytes) -> str | None:
    if b"\\" not in raw:
        return raw[1:-1].decode("utf-8", "replace")
    try:
        name = json.loads(raw)
    except ValueError:
        return None
    return name if isinstance(name, str) else None


class _Scan:
    __slots__ = ("body", "budget", "size")

    def __init__(self, body: bytes, budget: int):
        self.body, self.budget, self.size = body, budget, len(body)

    def spend(self, steps: int = 1) -> None:
        self.budget -= steps
        if self.budget < 0:
            raise Unreadable("the request body holds too many JSON values to read")

    def blank(self, at: int) -> int:
        """The first position from ``at`` that is not whitespace."""
        while True:
            stop = min(self.size, at + _WINDOW)
            end = _BLANK.match(self.body, at, stop).end()  # type: ignore[union-attr]  # it always matches
            if end < stop or stop == self.size:
                return end
            at = end

    def string(self, at: int) -> int:
        """The end of the string that opens at ``at``."""
        self.spend()
        body = self.body
        close = body.find(b'"', at + 1)
        if close < 0:
            raise Unreadable("the request body is cut short")
        if body.find(b"\\", at + 1, close) < 0:  # no escapes: one memchr each way
            return close + 1
        at += 1
        while True:
            stop = min(self.size, at + _WINDOW)
            end = _ESCAPES.match(body, at, stop).end()  # type: ignore[union-attr]
            if end < self.size and body[end] == 0x22:  # '"'
                return end + 1
            if end == at or end >= self.size:
                raise Unreadable("the request body is cut short")
            at = end  # the window ended, possibly inside an escape

    def value(self, at: int) -> int:
        """The end of the value that starts at ``at``."""
        first = self.body[at:at + 1]
        if first == b'"':
            return self.string(at)
        if first in (b"{", b"["):
            return self._container(at)
        found = _SCALAR.match(self.body, at, min(self.size, at + _MAX_SCALAR))
        if found is None or found.end() - at >= _MAX_SCALAR:
            raise Unreadable("the request body is not valid JSON")
        return found.end()

    def _container(self, at: int) -> int:
        body, depth = self.body, 0
        while True:
            stop = min(self.size, at + _WINDOW)
            found = _NEXT.search(body, at, stop)
            if found is None:
                if stop == self.size:
                    raise Unreadable("the request body is cut short")
                at = stop
                continue
            at = found.start()
            char = body[at]
            if char == 0x22:  # '"'
                at = self.string(at)
                continue
            self.spend()
            depth += 1 if char in b"[{" else -1
            at += 1
            if depth == 0:
                return at

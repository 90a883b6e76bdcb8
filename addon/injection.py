"""Reported usage on every OpenAI-style chat stream, even when the client did not ask for it.

A chat-completions stream carries usage only when the request says
``stream_options.include_usage=true``, and LangChain (with a base_url), LiteLLM and the Agents
SDK do not say it. Without it we could only estimate (no cache reads, no reasoning tokens). So,
for providers that accept the field, the proxy adds it to what goes upstream, and gives the
client back exactly the stream it asked for: the usage-only chunk is dropped and the
``"usage":null`` member the provider then puts in every other chunk is removed, so the client
receives the bytes a direct call without ``include_usage`` would have (decoded: when we must
rewrite a compressed stream, it goes to the client uncompressed). A client that asked for usage
itself gets everything untouched. What the request asks is read from its parsed top-level
``stream`` and ``stream_options`` members (jsonscan.py), never from a pattern in its bytes.
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple

from . import jsonscan

# Bodies are read up to the largest request a provider that takes the field accepts: OpenAI takes
# up to 50 MB of images in one request (platform.openai.com/docs/guides/images-vision, "Image input
# requirements"), which base64 makes ~67 MB, plus the text. (Anthropic's own limit is 32 MB,
# docs.anthropic.com/en/api/overview, "Request size limits"; it is never asked: its streams carry
# usage anyway.) A larger body goes upstream as sent, and its row says why usage was not asked for.
MAX_PARSED_BODY = 80 * 1024 * 1024
# Strings and brackets read per body at most (~0.3 s of one idle core; off the event loop for a
# large body): a chat request with thousands of messages and tools has tens of thousands.
MAX_JSON_VALUES = 500_000
_MAX_OPTIONS = 64 * 1024  # a stream_options object is a few flags; larger is not one
_WANTED = frozenset({"stream", "stream_options"})
_ASK = {"include_usage": True}
_USAGE_NULL = re.compile(rb',\s*"usage"\s*:\s*null(?=\s*[,}])|"usage"\s*:\s*null\s*,')
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_NO_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')


class UsageRequest(NamedTuple):
    body: bytes | None = None  # what goes upstream instead of the client's body; None: the body as sent
    reason: str | None = None  # why usage could not be asked for, should the call need it


def with_usage_requested(body: bytes | None) -> UsageRequest:
    """The request body with ``stream_options.include_usage=true``, when it is a stream request
    that does not already ask for usage. Decided from the parsed ``stream`` and ``stream_options``
    members only, and every other byte stays the client's."""
    if not body:
        return UsageRequest()
    if len(body) > MAX_PARSED_BODY:
        return UsageRequest(reason=f"the request body is {len(body):,} bytes, more than the {MAX_PARSED_BODY:,} "
                                   f"the proxy reads")
    if b"stream" not in body and b"\\u" not in body:  # not even as a name written with escapes
        return UsageRequest()
    try:
        opening, found = jsonscan.members(body, _WANTED, MAX_JSON_VALUES)
    except jsonscan.Unreadable as exc:
        return UsageRequest(reason=str(exc))
    if not any(_value(body[start:end]) is True for name, start, end in found if name == "stream"):
        return UsageRequest()
    options = [(start, end) for name, start, end in found if name == "stream_options"]
    if not options:
        # The one member goes in front; the client's bytes stay as they were after it.
        return UsageRequest(body[:opening] + b'"stream_options":{"include_usage":true},' + body[opening:])
    # Every occurrence is made to ask: with a name given twice, providers differ on which counts.
    edits: list[tuple[int, int, bytes]] = []
    for start, end in options:
        asked = _asking(body[start:end])
        if isinstance(asked, str):
            return UsageRequest(reason=asked)
        if asked is not None:
            edits.append((start, end, asked))
    out = body
    for start, end, value in reversed(edits):  # from the end, so that earlier offsets hold
        out = out[:start] + value + out[end:]
    return UsageRequest(out if edits else None)


def _asking(raw: bytes) -> bytes | str | None:
    """A ``stream_options`` value that asks for usage (None: this one asks already), or why
    there is none to give."""
    if len(raw) > _MAX_OPTIONS:
        return f"stream_options is larger than {_MAX_OPTIONS // 1024} KB"
    names_seen_twice = []

    def pairs(items: list[tuple[str, object]]) -> dict:
        if len({name for name, _ in items}) < len(items):
            names_seen_twice.append(True)
        return dict(items)

    try:
        options = json.loads(raw, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return "stream_options is not valid JSON"
    if options is None:
        options = {}
    if not isinstance(options, dict):
        return "stream_options is not an object"  # the provider refuses the call, and says why
    if options.get("include_usage") is True and not names_seen_twice:
        return None
    return json.dumps({**options, **_ASK}, ensure_ascii=False, separators=(",", ":")).encode()


def _value(raw: bytes) -> object:
    if len(raw) > 16:
        return None  # not true, false or null
    try:
        return json.loads(raw)
    except ValueError:
        return None


class UsageStripper:
    """Feed the decoded bytes of a stream whose usage we asked for; get back what a stream
    without it carries. Works on whole events (split at blank lines, linear in the stream), so
    a chunk boundary inside an event only delays that event until its end arrives."""

    __slots__ = ("_parts", "_separator", "_tail")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._separator: bytes | None = None
        self._tail = b""  # the last bytes held, for a separator split across pieces (\r, \n, \r\n)

    def feed(self, data: bytes) -> bytes:
        if not data:
            return b""
        if not self._parts and self._separator is not None and data.endswith(self._separator):
            return _whole_events(data, self._separator)  # the common case
        self._parts.append(data)
        if self._separator is None:
            if b"\n" not in data:
                return b""
            # Decided by the stream's first line end: LF, or CRLF (then every line ends so).
            seen = b"".join(self._parts)
            newline = seen.index(b"\n")
            self._separator = b"\r\n\r\n" if newline and seen[newline - 1:newline] == b"\r" else b"\n\n"
            self._parts = [seen]
        else:
            edge = self._tail + data[:len(self._separator) - 1]  # a separator begun in the pieces before
            self._tail = (self._tail + data)[1 - len(self._separator):]
            if self._separator not in data and self._separator not in edge:
                return b""
        blocks = b"".join(self._parts).split(self._separator)
        tail = blocks.pop()
        self._parts, self._tail = ([tail], tail[1 - len(self._separator):]) if tail else ([], b"")
        return b"".join(_without_usage(block, self._separator) for block in blocks)

    def close(self) -> bytes:
        """End of stream: whatever is left, a last event without its blank line included."""
        rest, self._parts, self._tail = b"".join(self._parts), [], b""
        if not rest:
            return b""
        if self._separator is None:
            return _without_usage(rest, b"")
        *blocks, last = rest.split(self._separator)
        return b"".join(_without_usage(block, self._separator) for block in blocks) + \
            (_without_usage(last, b"") if last else b"")


def _whole_events(data: bytes, separator: bytes) -> bytes:
    """Events that end within ``data``: most need nothing, the rest lose their "usage": null, and
    the usage-only event is cut out where it sits. One scan of the chunk in the common case:
    on a chunk of a few KB each search costs microseconds, and this runs for every chunk."""
    at = data.find(b'"usage"')
    if at < 0:
        return data
    cuts: list[tuple[int, int]] = []
    other = False  # a "usage" that is not an object: the null we must remove
    while at >= 0:
        found = _USAGE_OBJECT.match(data, at)
        if found is None:
            other = True
        else:
            start = data.rfind(separator, 0, at)
            start = 0 if start < 0 else start + len(separator)
            end = data.find(separator, found.end()) + len(separator)  # found: data ends with one
            if _is_usage_only(data[start:end]) and (not cuts or cuts[-1][0] != start):
                cuts.append((start, end))
        at = data.find(b'"usage"', at + 7)
    out = data
    for start, end in reversed(cuts):  # from the end, so that earlier offsets hold
        out = out[:start] + out[end:]
    return _drop_usage_null(out) if other else out


def _usage_objects(data: bytes):
    # str.find then a match where it points: a search with the expression scans ~4x slower.
    at = data.find(b'"usage"')
    while at >= 0:
        found = _USAGE_OBJECT.match(data, at)
        if found:
            yield found
        at = data.find(b'"usage"', at + 7)


def _without_usage(block: bytes, separator: bytes) -> bytes:
    if b'"usage"' not in block:
        return block + separator
    if next(_usage_objects(block), None) and _is_usage_only(block):
        return b""  # the extra chunk include_usage adds: a direct call never has it
    return _drop_usage_null(block) + separator


def _drop_usage_null(data: bytes) -> bytes:
    # The compact form providers send is removed with a plain replace (several times faster
    # than the expression, which catches the spaced and leading forms).
    data = data.replace(b',"usage":null', b"")
    return _USAGE_NULL.sub(b"", data) if b'"usage"' in data else data


def _is_usage_only(block: bytes) -> bool:
    # The event has a "usage" object; the one include_usage adds is the one with no choices.
    # (Quotes inside generated text are escaped, so neither pattern can match text.)
    return _NO_CHOICES.search(block) is not None

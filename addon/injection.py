"""Reported usage on every OpenAI-style chat stream, even when the client did not ask for it.

A chat-completions stream carries usage only when the request says
``stream_options.include_usage=true``, and LangChain (with a base_url), LiteLLM and the Agents
SDK do not say it. Without it we could only estimate (no cache reads, no reasoning tokens). So,
for providers that accept the field, the proxy adds it to what goes upstream, and gives the
client back exactly the stream it asked for: the usage-only chunk is dropped and the
``"usage":null`` member the provider then puts in every other chunk is removed, so the client
receives the bytes a direct call without ``include_usage`` would have (decoded: when we must
rewrite a compressed stream, it goes to the client uncompressed). A client that asked for usage
itself gets everything untouched.
"""

from __future__ import annotations

import json
import re

from .providers.base import loads

# Deciding needs the request's JSON, parsed on the event loop (~2 ms a MB): a larger stream
# request goes upstream as sent, and its usage is estimated.
MAX_PARSED_BODY = 1024 * 1024
_ASKED = re.compile(rb'"include_usage"\s*:\s*true')
_USAGE_NULL = re.compile(rb',\s*"usage"\s*:\s*null(?=\s*[,}])|"usage"\s*:\s*null\s*,')
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_NO_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')


def with_usage_requested(body: bytes | None) -> bytes | None:
    """The request body with ``stream_options.include_usage=true`` added, or None when there is
    nothing to add: not a JSON stream request, or the client asked for usage itself."""
    if not body or len(body) > MAX_PARSED_BODY or b'"stream"' not in body or _ASKED.search(body):
        return None
    request = loads(body)
    if request is None or request.get("stream") is not True:
        return None
    options = request.get("stream_options")
    if options is None and "stream_options" not in request:
        # The one member goes in front; the client's bytes stay as they were after it.
        start = body.index(b"{") + 1
        return body[:start] + b'"stream_options":{"include_usage":true},' + body[start:]
    if not isinstance(options, dict):
        return None  # not ours to correct: the provider will say what is wrong with it
    request["stream_options"] = {**options, "include_usage": True}
    return json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode()


class UsageStripper:
    """Feed the decoded bytes of a stream whose usage we asked for; get back what a stream
    without it carries. Works on whole events (split at blank lines, linear in the stream), so
    a chunk boundary inside an event only delays that event until its end arrives."""

    __slots__ = ("_parts", "_separator")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._separator: bytes | None = None

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
        elif self._separator not in data and not (len(self._parts) > 1 and self._ends_across()):
            return b""
        blocks = b"".join(self._parts).split(self._separator)
        tail = blocks.pop()
        self._parts = [tail] if tail else []
        return b"".join(_without_usage(block, self._separator) for block in blocks)

    def close(self) -> bytes:
        """End of stream: whatever is left, a last event without its blank line included."""
        rest, self._parts = b"".join(self._parts), []
        return _without_usage(rest, b"") if rest else b""

    def _ends_across(self) -> bool:
        # The separator may be split between the previous piece and this one.
        edge = self._parts[-2][-3:] + self._parts[-1][:3]
        return self._separator is not None and self._separator in edge


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

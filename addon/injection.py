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
            # The common case: whole events. Most chunks need nothing; the rest one substitution.
            if b'"usage"' not in data:
                return data
            if not _USAGE_OBJECT.search(data):
                return _drop_usage_null(data)
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
        return self._separator in edge


def _without_usage(block: bytes, separator: bytes) -> bytes:
    if b'"usage"' not in block:
        return block + separator
    if _USAGE_OBJECT.search(block) and _is_usage_only(block):
        return b""  # the extra chunk include_usage adds: a direct call never has it
    return _drop_usage_null(block) + separator


def _drop_usage_null(data: bytes) -> bytes:
    # The compact form providers send is removed with a plain replace (several times faster
    # than the expression, which catches the spaced and leading forms).
    data = data.replace(b',"usage":null', b"")
    return _USAGE_NULL.sub(b"", data) if b'"usage"' in data else data


def _is_usage_only(block: bytes) -> bool:
    for line in block.splitlines():
        if line.startswith(b"data:"):
            chunk = loads(line[5:])
            return chunk is not None and chunk.get("choices") == [] and isinstance(chunk.get("usage"), dict)
    return False

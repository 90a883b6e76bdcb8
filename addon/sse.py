"""Incremental server-sent-events decoding, for chunks cut at arbitrary byte boundaries."""

from __future__ import annotations

# A pending event longer than this is not a real provider event; stop buffering it.
MAX_EVENT_BYTES = 16 * 1024 * 1024


class EventTooLarge(ValueError):
    """One event grew past MAX_EVENT_BYTES without ending: no provider sends such a thing."""


class SSEDecoder:
    """Feed raw (already content-decoded) bytes; get back complete ``(event, data)`` pairs.

    ``event`` is the ``event:`` field or None; ``data`` is the joined ``data:`` lines as bytes
    (json.loads takes bytes, and most events are never decoded at all). Runs once per chunk
    on the proxy's event loop, so it splits whole events with bytes methods, not line by line,
    and its cost is linear in the stream: pieces of an unfinished event are kept in a list and
    joined once, when the event ends (re-joining them per chunk made a 4 MB event in 1 KB chunks
    take seconds). Lines may end in LF or CRLF; a bare CR, which no provider sends inside a
    stream, is not a line end here, but a CR the stream ends on is: ``close`` takes the event it
    ends (an SDK that saw "data: [DONE]\\r\\n\\r" closes there: CallMeter.saw_the_end).
    """

    __slots__ = ("_parts", "_size", "_cr")

    def __init__(self) -> None:
        self._parts: list[bytes] = []  # the unfinished event, CRLFs already made LFs
        self._size = 0
        self._cr = False  # the last chunk ended in CR: its LF may start the next one

    def feed(self, chunk: bytes) -> list[tuple[str | None, bytes]]:
        if not self._parts and not self._cr and chunk.endswith(b"\n\n") \
                and chunk.find(b"\n\n") == len(chunk) - 2 and b"\r" not in chunk:
            event = _parse(chunk[:-2])  # the common case: exactly one whole event per chunk
            return [event] if event is not None else []
        if self._cr:
            chunk, self._cr = b"\r" + chunk, False
        if b"\r" in chunk:
            if chunk.endswith(b"\r"):
                chunk, self._cr = chunk[:-1], True
            chunk = chunk.replace(b"\r\n", b"\n")
        ends_here = b"\n\n" in chunk or (chunk[:1] == b"\n" and self._parts and self._parts[-1][-1:] == b"\n")
        if not ends_here:
            if chunk:
                self._parts.append(chunk)
                self._size += len(chunk)
                if self._size > MAX_EVENT_BYTES:
                    self._parts, self._size = [], 0
                    raise EventTooLarge(f"an event longer than {MAX_EVENT_BYTES // (1024 * 1024)} MB")
            return []
        self._parts.append(chunk)
        blocks = b"".join(self._parts).split(b"\n\n")
        tail = blocks.pop()
        self._parts, self._size = ([tail], len(tail)) if tail else ([], 0)
        return [event for block in blocks if (event := _parse(block)) is not None]

    def close(self) -> list[tuple[str | None, bytes]]:
        """End of stream: a final event without its blank line still counts."""
        tail = b"".join(self._parts).rstrip(b"\r\n")
        self._parts, self._size, self._cr = [], 0, False
        event = _parse(tail) if tail else None
        return [event] if event is not None else []


def _parse(block: bytes) -> tuple[str | None, bytes] | None:
    event, data = None, []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line.startswith(b"event:"):
            event = (line[7:] if line[6:7] == b" " else line[6:]).decode("utf-8", "replace")
    if not data:
        return None  # comments, keep-alives, and events without data dispatch nothing
    return event, data[0] if len(data) == 1 else b"\n".join(data)

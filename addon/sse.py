"""Incremental server-sent-events decoding, for chunks cut at arbitrary byte boundaries."""

from __future__ import annotations

# A pending event longer than this is not a real provider event; stop buffering it.
MAX_EVENT_BYTES = 16 * 1024 * 1024


class SSEDecoder:
    """Feed raw (already content-decoded) bytes; get back complete ``(event, data)`` pairs.

    ``event`` is the ``event:`` field or None; ``data`` is the joined ``data:`` lines as bytes
    (json.loads takes bytes, and most events are never decoded at all). Runs once per chunk
    on the proxy's event loop, so it splits whole events with bytes methods, not line by line.
    Lines may end in LF or CRLF (a bare CR, which no provider sends, is not a line end here).
    """

    __slots__ = ("_tail", "overflowed")

    def __init__(self) -> None:
        self._tail = b""
        self.overflowed = False

    def feed(self, chunk: bytes) -> list[tuple[str | None, bytes]]:
        if not self._tail and chunk.endswith(b"\n\n") and chunk.find(b"\n\n") == len(chunk) - 2 \
                and b"\r" not in chunk:
            event = _parse(chunk[:-2])  # the common case: exactly one whole event per chunk
            return [event] if event is not None else []
        buffer = self._tail + chunk if self._tail else chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")  # a CR at the very end waits in the tail for its LF
        blocks = buffer.split(b"\n\n")
        self._tail = blocks.pop()
        if len(self._tail) > MAX_EVENT_BYTES:
            self._tail, self.overflowed = b"", True
        return [event for block in blocks if (event := _parse(block)) is not None]

    def close(self) -> list[tuple[str | None, bytes]]:
        """End of stream: a final event without its blank line still counts."""
        tail, self._tail = self._tail.replace(b"\r\n", b"\n").rstrip(b"\r\n"), b""
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

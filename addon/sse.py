"""Incremental server-sent-events decoding, for chunks cut at arbitrary byte boundaries."""

from __future__ import annotations

# A line longer than this without a newline is not a real provider event; stop buffering it.
MAX_LINE_BYTES = 16 * 1024 * 1024


class SSEDecoder:
    """Feed raw (already content-decoded) bytes; get back complete ``(event, data)`` pairs.

    ``event`` is the ``event:`` field or None; ``data`` is the joined ``data:`` lines as bytes
    (json.loads takes bytes, and most events are never decoded at all).
    """

    __slots__ = ("_tail", "_event", "_data", "overflowed")

    def __init__(self) -> None:
        self._tail = b""
        self._event: str | None = None
        self._data: list[bytes] = []
        self.overflowed = False

    def feed(self, chunk: bytes) -> list[tuple[str | None, bytes]]:
        lines = (self._tail + chunk).split(b"\n") if self._tail else chunk.split(b"\n")
        self._tail = lines.pop()
        if len(self._tail) > MAX_LINE_BYTES:
            self._tail, self.overflowed = b"", True
        out: list[tuple[str | None, bytes]] = []
        for line in lines:
            self._line(line[:-1] if line.endswith(b"\r") else line, out)
        return out

    def close(self) -> list[tuple[str | None, bytes]]:
        """End of stream: a final event without its blank line still counts."""
        out: list[tuple[str | None, bytes]] = []
        if self._tail:
            self._line(self._tail.rstrip(b"\r"), out)
            self._tail = b""
        self._line(b"", out)
        return out

    def _line(self, line: bytes, out: list) -> None:
        if not line:
            if self._data:
                out.append((self._event, b"\n".join(self._data)))
            self._event, self._data = None, []
            return
        if line[0:1] == b":":
            return  # comment / keep-alive
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")

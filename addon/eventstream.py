"""AWS's event-stream framing (``application/vnd.amazon.eventstream``), decoded incrementally.

Bedrock streams (InvokeModelWithResponseStream, ConverseStream) send binary messages::

    total length (4) | headers length (4) | prelude CRC (4) | headers | payload | message CRC (4)

Each header is a name (1-byte length), a type byte and a value. ``feed`` takes the bytes as they
arrive (a chunk may end mid-message; the rest waits in a buffer no larger than one message) and
yields ``(event, payload)`` per complete message, like ``sse.SSEDecoder``: ``event`` is the
``:event-type`` header (``chunk``, ``metadata``, ...), or ``exception:<type>`` for an error message.
The CRCs are the client's to check: the proxy only reads along.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from .sse import EventTooLarge

# AWS caps an event-stream message at 16 MiB; past this a stream is not read any further.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024 + 1024
_PRELUDE = 12
_CRC = 4
# The fixed sizes of the header value types 0-9 (None: a 2-byte length, then the value).
_VALUE_SIZES = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 6: None, 7: None, 8: 8, 9: 16}


class FramingError(ValueError):
    """Bytes that are not AWS event-stream messages."""


class EventStreamDecoder:
    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[str | None, bytes]]:
        self._buffer += data
        buffer = self._buffer
        while len(buffer) >= _PRELUDE:
            total, headers_length = struct.unpack_from(">II", buffer)
            if total > MAX_MESSAGE_BYTES:
                raise EventTooLarge(f"an event-stream message of {total:,} bytes (limit {MAX_MESSAGE_BYTES:,})")
            if total < _PRELUDE + headers_length + _CRC:
                raise FramingError("an event-stream message shorter than its headers")
            if len(buffer) < total:
                return
            headers = _headers(bytes(buffer[_PRELUDE:_PRELUDE + headers_length]))
            payload = bytes(buffer[_PRELUDE + headers_length:total - _CRC])
            del buffer[:total]
            if headers.get(":message-type") == "exception":
                yield f"exception:{headers.get(':exception-type', 'unknown')}", payload
            else:
                yield headers.get(":event-type"), payload

    def close(self) -> Iterator[tuple[str | None, bytes]]:
        """The end of the body: a message cut short is never complete, so nothing more comes."""
        self._buffer.clear()
        return iter(())


def _headers(raw: bytes) -> dict[str, str]:
    """The string-valued headers (the only ones Bedrock sends); other values are skipped."""
    found: dict[str, str] = {}
    at = 0
    while at < len(raw):
        name_length = raw[at]
        name = raw[at + 1:at + 1 + name_length].decode("utf-8", "replace")
        at += 1 + name_length
        if at >= len(raw) or raw[at] not in _VALUE_SIZES:
            raise FramingError("an event-stream header of an unknown type")
        kind, size = raw[at], _VALUE_SIZES[raw[at]]
        at += 1
        if size is None:
            (size,) = struct.unpack_from(">H", raw, at)
            at += 2
            if kind == 7:
                found[name] = raw[at:at + size].decode("utf-8", "replace")
        at += size
    return found

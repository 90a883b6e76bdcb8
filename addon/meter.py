"""Per-call bookkeeping while a response passes through: the stream tap and what it saw.

The tap runs on the proxy's event loop for every chunk, so it hands the chunk back
unchanged, does no I/O, and swallows its own failures: a call is never broken by metering.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

from .decoding import BodyDecoder, DecodeError
from .providers import Provider, StreamParser
from .sse import SSEDecoder

log = logging.getLogger(__name__)

# Past these sizes a response is still forwarded in full; we just stop reading along.
MAX_DECODED_BYTES = 64 * 1024 * 1024
MAX_BUFFERED_BODY = 8 * 1024 * 1024
_EDGE = 256 * 1024  # head and tail kept of a larger body: model sits near the start, usage at the end


@dataclass
class BodyBuffer:
    """A JSON body as read so far; beyond MAX_BUFFERED_BODY only its head and tail are kept."""

    head: bytearray = field(default_factory=bytearray)
    tail: bytearray = field(default_factory=bytearray)
    truncated: bool = False

    def add(self, data: bytes) -> None:
        if not self.truncated:
            self.head += data
            if len(self.head) > MAX_BUFFERED_BODY:
                self.truncated = True
                self.tail = self.head[-_EDGE:]
                del self.head[_EDGE:]
            return
        self.tail += data
        if len(self.tail) > 2 * _EDGE:
            del self.tail[:-_EDGE]


class CallMeter:
    """What one call looked like. Built in the request hook, finished in response/error."""

    def __init__(self, provider: Provider, path: str, key_id: int, customer_id: str | None,
                 feature: str | None, started_at: float, request_body: bytes | None,
                 request_encoding: str):
        self.id = uuid.uuid4()
        self.provider = provider
        self.path = path
        self.key_id = key_id
        self.customer_id = customer_id
        self.feature = feature
        self.started_at = started_at
        self.request_body = request_body if provider.metered(path) else None
        self.request_encoding = request_encoding
        self.stream = False
        self.status: int | None = None
        self.first_byte_at: float | None = None
        self.finished_at: float | None = None
        self.outcome = "completed"
        self.error: str | None = None
        self.read_failure: str | None = None  # why we stopped reading along (the client is unaffected)
        self.parser: StreamParser | None = None
        self.body: BodyBuffer | None = None
        self._decoder: BodyDecoder | None = None
        self._sse: SSEDecoder | None = None

    def start_response(self, status: int, content_type: str, content_encoding: str) -> None:
        self.status = status
        self.stream = content_type.lower().startswith("text/event-stream")
        if not self.provider.metered(self.path):
            return
        try:
            self._decoder = BodyDecoder(content_encoding, MAX_DECODED_BYTES)
        except DecodeError as exc:
            self.read_failure = str(exc)
            return
        if self.stream:
            self._sse = SSEDecoder()
            self.parser = self.provider.stream_parser(self.path)
        else:
            self.body = BodyBuffer()

    def tap(self, chunk: bytes) -> bytes:
        """mitmproxy's ``flow.response.stream`` callable: b"" marks the end of the body."""
        if chunk and self.first_byte_at is None:
            self.first_byte_at = time.time()
        if self._decoder is not None:
            try:
                self._read(chunk)
            except DecodeError as exc:
                self._stop_reading(str(exc))
            except Exception as exc:  # never let bookkeeping break the call
                # Only the type: an exception's text could quote the body.
                self._stop_reading(f"unexpected {type(exc).__name__}")
        return chunk

    def _read(self, chunk: bytes) -> None:
        data = self._decoder.feed(chunk) if chunk else b""
        if self._sse is not None:
            events = self._sse.feed(data) if chunk else self._sse.close()
            for event, payload in events:
                self.parser.feed(event, payload)
        elif data:
            self.body.add(data)

    def _stop_reading(self, reason: str) -> None:
        self.read_failure = reason
        self._decoder = None
        log.warning("stopped reading the response of call %s: %s", self.id, reason)

    def finish(self, status: int | None, outcome: str, error: str | None) -> None:
        self.finished_at = time.time()
        if status is not None:
            self.status = status
        self.outcome = outcome
        self.error = error

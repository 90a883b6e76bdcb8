"""Per-call bookkeeping while a response passes through: the stream tap and what it saw.

Server-sent-event responses are streamed to the client chunk by chunk; the tap runs on the
proxy's event loop for every chunk, so it hands the chunk back unchanged, does no I/O, and
swallows its own failures: a call is never broken by metering. Other responses are complete
JSON documents that mitmproxy buffers as it would anyway; their bytes are kept by reference
and read on the writer thread.
"""

from __future__ import annotations

import logging
import time
import uuid
from time import perf_counter_ns

from mitmproxy.http import Headers

from .decoding import BodyDecoder, DecodeError
from .eventstream import EventStreamDecoder, FramingError
from .injection import UsageStripper
from .providers import Provider, StreamParser
from .providers.base import METERED, BatchCall
from .results import LineTooLong, ResultsReader
from .sse import EventTooLarge, SSEDecoder

log = logging.getLogger(__name__)

# Past this size a stream is still forwarded in full; we just stop reading along.
MAX_DECODED_BYTES = 64 * 1024 * 1024
MAX_RESULTS_BYTES = 64 * 1024 * 1024 * 1024  # a batch's results (JSON lines): gigabytes are normal
EVENT_STREAM = "application/vnd.amazon.eventstream"


class CallMeter:
    """What one call looked like. Built in the request hook, finished in response/error."""

    def __init__(self, provider: Provider, path: str, key_id: int, customer_id: str | None,
                 feature: str | None, started_at: float, request_body: bytes | None,
                 request_encoding: str, method: str = "POST", request_type: str = "",
                 batch: BatchCall | None = None, upgrade: bool = False):
        self.id = uuid.uuid4()
        self.provider = provider
        self.path = path
        self.key_id = key_id
        self.customer_id = customer_id
        self.feature = feature
        self.started_at = started_at
        self.billing = provider.billing(method, path, upgrade)  # METERED, UNMETERED or FREE
        self.request_body = request_body if self.billing == METERED else None
        self.request_encoding = request_encoding
        self.request_type = request_type  # its content-type: JSON, or multipart (an upload)
        self.stream = False
        self.status: int | None = None
        self.answered: int | None = None  # the upstream's own status, kept when the client was told another
        self.first_byte_at: float | None = None
        self.finished_at: float | None = None
        self.outcome = "completed"
        self.error: str | None = None
        self.read_failure: str | None = None  # why we stopped reading along (the client is unaffected)
        self.parser: StreamParser | None = None
        self.content_encoding = ""
        self.body: bytes | None = None  # a non-streamed response's raw (still encoded) body
        self._decoder: BodyDecoder | None = None
        self._identity = False  # no content-encoding: skip the decoder on every chunk
        self._sse: SSEDecoder | EventStreamDecoder | None = None
        self.response_headers: Headers | None = None  # kept by reference: a provider may report usage in them (Bedrock)
        self.usage_injected = False  # we asked upstream for the usage the client did not ask for
        self.usage_not_requested: str | None = None  # why we could not ask for it, when we could not
        self.guarded = False  # the request's headers name a guardrail billed apart (Provider.guardrail_in_headers)
        self._stripper: UsageStripper | None = None
        self.batch = batch  # a call of a batch API (addon/batches.py)
        self.results: ResultsReader | None = None  # a batch's results, read along as they stream
        self.hooks_ns: int | None = None  # time in our hooks (overhead.take), None when they were not timed
        self.tap_ns = 0  # time in the tap, over every chunk

    def start_response(self, status: int, content_type: str, content_encoding: str) -> bool:
        """Called with the response headers; True when the body should stream through the tap."""
        self.status = self.answered = status
        self.content_encoding = content_encoding
        kind = content_type.lower()
        framed = kind.startswith(EVENT_STREAM)  # AWS's binary event stream (Bedrock)
        self.stream = framed or kind.startswith("text/event-stream")
        if self.batch is not None and self.batch.action == "results" and status == 200:
            return self._read_results(content_encoding)
        if not self.stream:
            # Audio is never read, and may be long: it passes through as it arrives.
            return kind.startswith("audio/") or (self.provider.streams_binary(self.path)
                                                 and not kind.startswith(("application/json", "text/")))
        if self.provider.metered(self.path):
            try:
                self._decoder = BodyDecoder(content_encoding, MAX_DECODED_BYTES)
            except DecodeError as exc:
                self.read_failure = str(exc)
            else:
                self._identity = content_encoding.strip().lower() in ("", "identity")
                self._sse = EventStreamDecoder() if framed else SSEDecoder()
                self.parser = self.provider.stream_parser(self.path)
                if self.usage_injected and status == 200:
                    self._stripper = UsageStripper()
        return True

    def _read_results(self, content_encoding: str) -> bool:
        """A batch's results stream through too (they can be gigabytes), read along line by line."""
        try:
            self._decoder = BodyDecoder(content_encoding, MAX_RESULTS_BYTES)
        except DecodeError as exc:
            self.read_failure = str(exc)
            return True
        self._identity = content_encoding.strip().lower() in ("", "identity")
        self.results = ResultsReader(self.provider)
        return True

    @property
    def rewrites_body(self) -> bool:
        """The client gets the stream rewritten (and so decoded): its length and encoding change."""
        return self._stripper is not None

    def tap(self, chunk: bytes) -> bytes | list[bytes]:
        """mitmproxy's ``flow.response.stream`` callable: b"" marks the end of the body."""
        started = perf_counter_ns()
        try:
            return self._tap(chunk)
        finally:
            self.tap_ns += perf_counter_ns() - started

    def _tap(self, chunk: bytes) -> bytes | list[bytes]:
        if self.first_byte_at is None and chunk:
            self.first_byte_at = time.time()
        if self._sse is None and self._stripper is None and self.results is None:
            return chunk
        decoder = self._decoder
        try:
            data = chunk if self._identity or not chunk or decoder is None else decoder.feed(chunk)
        except DecodeError as exc:
            self._stop_reading(str(exc))
            self._stripper = None  # a stream that cannot be decoded is broken for a direct client too
            return chunk
        if self._sse is not None:
            self._read(data, end=not chunk)
        elif self.results is not None:
            self._read_lines(data, end=not chunk)
        return self._strip(data, end=not chunk) if self._stripper is not None else chunk

    def _read(self, data: bytes, end: bool) -> None:
        sse, parser = self._sse, self.parser
        if sse is None or parser is None:
            return
        try:
            feed = parser.feed
            for event, payload in (sse.close() if end else sse.feed(data)):
                feed(event, payload)
        except (EventTooLarge, FramingError) as exc:
            self._stop_reading(str(exc))
        except Exception as exc:  # never let bookkeeping break the call
            # Only the type: an exception's text could quote the body.
            self._stop_reading(f"unexpected {type(exc).__name__}")

    def _read_lines(self, data: bytes, end: bool) -> None:
        results = self.results
        assert results is not None
        try:
            if end:
                results.close()
            else:
                results.feed(data)
        except LineTooLong as exc:
            self._stop_reading(str(exc))
        except Exception as exc:  # never let bookkeeping break the call
            self._stop_reading(f"unexpected {type(exc).__name__}")

    def _strip(self, data: bytes, end: bool) -> bytes | list[bytes]:
        stripper = self._stripper
        if stripper is None:
            return data
        try:
            out = stripper.close() if end else stripper.feed(data)
            # An empty chunk would end a chunked response early; an empty list sends nothing.
            return out if out or end else []
        except Exception as exc:  # the rest goes to the client as the provider sent it
            log.warning("stopped removing injected usage from call %s: unexpected %s", self.id, type(exc).__name__)
            self._stripper = None
            return data

    def _stop_reading(self, reason: str) -> None:
        self.read_failure = reason
        self._sse = None
        self.results = None
        log.warning("stopped reading the response of call %s: %s", self.id, reason)

    def saw_the_end(self) -> bool:
        """Whether a stream's terminal event ([DONE], message_stop, response.completed, ...) passed.
        For a stream cut off: an event the decoder still holds for want of a line end is read first
        (SSE takes a lone CR as one; an SDK has [DONE] there, and closes)."""
        if self._sse is not None:
            self._read(b"", end=True)
            self._sse = None  # nothing more comes: the flow is over
        return self.stream and self.parser is not None and self.parser.observed.complete

    @property
    def proxy_us(self) -> int | None:
        """Microseconds the call spent in our hooks and tap (docs/architecture.md, "What the proxy adds")."""
        return None if self.hooks_ns is None else (self.hooks_ns + self.tap_ns + 500) // 1000

    def finish(self, status: int | None, outcome: str, error: str | None, body: bytes | None = None) -> None:
        """``body``: a buffered response's raw content (None for streams, or when there was none)."""
        self.finished_at = time.time()
        if status is not None:
            self.status = status
        self.outcome = outcome
        self.error = error
        if not self.stream and (self.provider.metered(self.path) or self.batch is not None):
            self.body = body

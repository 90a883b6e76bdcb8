"""Realtime sessions: OpenAI's Realtime API over a WebSocket, one row per ``response.done``.

The upgrade request (``GET /v1/realtime?model=...``) goes through the Gate and Quotas like any
call: our headers removed, the key, tags, limits and budgets checked, a 429 before the upgrade.
Once upstream answers 101, the ``AiSpendTrack`` addon hands the call's meter to a
``RealtimeSession`` instead of storing a row for the handshake; from then on this addon reads the
frames in ``websocket_message`` and stores a row for each response the server finishes.

Every frame goes on unchanged: the hook only reads, and then empties
``flow.websocket.messages``, where mitmproxy would otherwise keep every frame of the session (a
long voice session is many megabytes of audio). A response the socket closes before its
``response.done`` is stored as partial, unpriced, with the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from urllib.parse import parse_qs

from mitmproxy import http

from . import overhead
from .meter import CallMeter
from .providers import Observed, StreamParser
from .providers import openai_realtime as wire
from .providers.base import InvalidUsage

log = logging.getLogger(__name__)

SESSION = "aispendtrack_realtime"  # flow.metadata key of a flow's RealtimeSession
# A frame larger than this is passed on without being read (a response.done is a few kB).
MAX_READ_FRAME = 4 * 1024 * 1024
_HEAD = 4096  # of a frame too large to read: where its type is looked for


class _Seen(StreamParser):
    """What a realtime response told us, in the form the row builder reads (record.py)."""

    def feed(self, event: str | None, data: bytes) -> None:  # pragma: no cover - never streamed
        raise NotImplementedError


class RealtimeSession:
    """One upgraded WebSocket: who it is for (from the upgrade's meter), its model, the response
    under way."""

    def __init__(self, handshake: CallMeter, query: str):
        self.handshake = handshake
        model = (parse_qs(query).get("model") or [""])[0]
        self.model: str | None = model if 0 < len(model) <= 200 else None
        self.response_started: float | None = None  # response.created seen, response.done not yet
        self._warned: set[str] = set()

    def read(self, frame: bytes, from_client: bool) -> CallMeter | None:
        """A finished response's meter, for the writer; None for every other frame."""
        if from_client:  # the model is the server's: OpenAI refuses a session.update naming another
            return None
        if len(frame) > MAX_READ_FRAME:
            return self._too_large(frame)
        kind = wire.event_of_interest(frame)
        if kind is None:
            return None
        event = wire.decode(frame)
        if event is None:
            self.warn_once("json", f"a {kind} frame that is not a JSON event was skipped")
            return None
        if event.get("type") != kind:  # the name was a nested object's
            return None
        if kind.startswith("session."):
            self.model = wire.session_model(event) or self.model
        elif kind == "response.created":
            self.response_started = time.time()
        else:
            return self._finished(event)
        return None

    def _too_large(self, frame: bytes) -> CallMeter | None:
        """A frame past MAX_READ_FRAME is not decoded; if its head says it ends a response, that
        response is stored unpriced, with why."""
        self.warn_once("large", f"a frame of {len(frame):,} bytes was passed on without being read "
                                 f"(more than {MAX_READ_FRAME:,})")
        if wire.event_of_interest(frame[:_HEAD]) != "response.done":
            return None
        meter = self._meter(self.response_started or time.time())
        self.response_started = None
        meter.finish(101, "completed", f"usage unreadable: a response.done of {len(frame):,} bytes "
                                       f"(more than {MAX_READ_FRAME:,}) was not read")
        return meter

    def _finished(self, event: dict) -> CallMeter:
        meter = self._meter(self.response_started or time.time())
        self.response_started = None
        observed = meter.parser.observed  # type: ignore[union-attr]
        try:
            observed.usage = wire.response_usage(event)
        except InvalidUsage as exc:
            observed.invalid_usage = str(exc)
        status = wire.response_status(event)
        observed.complete = True
        meter.finish(101, "completed", None if status in (None, "completed") else f"response {status}")
        return meter

    def closed(self, by_client: bool | None, code: int | None) -> CallMeter | None:
        """At the end of the socket: the meter of a response cut off before its response.done."""
        by = "the client" if by_client else "the server" if by_client is False else "the network"
        return self.cut("client_disconnected" if by_client else "upstream_failed",
                        f"the WebSocket closed before response.done (closed by {by}, code {code})")

    def cut(self, outcome: str, why: str) -> CallMeter | None:
        """The meter of the response under way, if one is, ended without its usage."""
        if self.response_started is None:
            return None
        meter = self._meter(self.response_started)
        self.response_started = None
        meter.finish(101, outcome, f"no usage: {why}")
        return meter

    def _meter(self, started_at: float) -> CallMeter:
        h = self.handshake
        meter = CallMeter(h.provider, h.path, h.key_id, h.customer_id, h.feature, started_at, None, "", "GET")
        meter.stream = True
        meter.parser = _Seen(observed=Observed(model=self.model))
        return meter

    def warn_once(self, what: str, message: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("realtime session of call %s: %s", self.handshake.id, message)


def is_session(handshake: CallMeter) -> bool:
    """Whether an upgraded call is a realtime session (other WebSockets keep their one row)."""
    return handshake.provider.name == "openai" and handshake.path == wire.PATH


class RealtimeSessions:
    """The addon: reads the frames of upgraded realtime calls; ``submit`` stores a finished meter."""

    def __init__(self, submit: Callable[[CallMeter], None]) -> None:
        self.submit = submit
        self._open: dict[str, RealtimeSession] = {}  # by flow id: the sessions still connected

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        session: RealtimeSession | None = flow.metadata.get(SESSION)
        if session is not None:
            self._open[flow.id] = session

    def done(self) -> None:
        """Runs before AiSpendTrack's (make_addons), while the writer still takes rows."""
        for session in self._open.values():
            meter = session.cut("proxy_stopped", "the proxy stopped before response.done")
            if meter is not None:
                self.submit(meter)
        self._open.clear()

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        session: RealtimeSession | None = flow.metadata.get(SESSION)
        ws = flow.websocket
        if session is None or ws is None:
            return
        messages, ws.messages = ws.messages, []  # mitmproxy would keep them all for the session's life
        for message in messages:
            try:
                meter = session.read(message.content, message.from_client)
            except Exception as exc:  # bookkeeping must never stop a frame
                session.warn_once("error", f"unexpected {type(exc).__name__} while reading a frame")
                continue
            if meter is not None:
                meter.hooks_ns = overhead.take(flow)  # the session's frames since its previous response
                self.submit(meter)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        session: RealtimeSession | None = flow.metadata.pop(SESSION, None)
        self._open.pop(flow.id, None)
        ws = flow.websocket
        if session is None or ws is None:
            return
        meter = session.closed(ws.closed_by_client, ws.close_code)
        if meter is not None:
            meter.hooks_ns = overhead.take(flow)
            self.submit(meter)

"""Realtime sessions: OpenAI's Realtime API over a WebSocket, one row per ``response.done``.

The upgrade request (``GET /v1/realtime?model=...``) goes through the Gate and Quotas like any
call: our headers removed, the key, tags, limits and budgets checked, a 429 before the upgrade.
Once upstream answers 101, the ``AiSpendTrack`` addon hands the call's meter to a
``RealtimeSession`` instead of storing a row for the handshake; from then on this addon reads the
frames in ``websocket_message`` and stores a row for each response the server finishes, and for
each transcription of the user's audio (another model's, billed apart).

Every frame goes on unchanged: the hook only reads, and then empties
``flow.websocket.messages``, where mitmproxy would otherwise keep every frame of the session (a
long voice session is many megabytes of audio). Each response the socket closes before its
``response.done`` is stored as partial, unpriced, with the reason (several can be under way: one
of the conversation and out-of-band ones, each done by its id).
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
from .state import ProxyState

log = logging.getLogger(__name__)

SESSION = "aispendtrack_realtime"  # flow.metadata key of a flow's RealtimeSession
# A frame larger than this is passed on without being read (a response.done is a few kB).
MAX_READ_FRAME = 4 * 1024 * 1024
_HEAD = 4096  # of a frame too large to read: where its type is looked for
# Responses under way, and committed audio waiting for its transcription, kept per session: a
# server that never finishes them cannot make a session hold more.
MAX_PENDING = 1000


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
        self.transcriber: str | None = None  # the model transcribing the user's audio, if the session asks
        self.under_way: dict[str, float] = {}  # response id -> when its response.created came; done not yet
        self.committed: dict[str, float] = {}  # item id -> when its audio was committed; transcription not yet
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
            self.transcriber = wire.transcription_model(event) or self.transcriber
        elif kind == "response.created":
            _keep(self.under_way, wire.response_id(event))
        elif kind == wire.COMMITTED:
            _keep(self.committed, wire.item_of(event))
        elif kind == wire.TRANSCRIBED:
            return self._transcribed(event)
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
        meter = self._meter(self._started(None))  # its id is not read
        meter.finish(101, "completed", f"usage unreadable: a response.done of {len(frame):,} bytes "
                                       f"(more than {MAX_READ_FRAME:,}) was not read")
        return meter

    def _started(self, response: str | None) -> float:
        """When the response ``response`` (an id) began, no longer under way; one whose id is not among
        those under way (or not known) is taken for the one under way the longest, so that no response
        is left waiting to be stored as cut off at the end."""
        if response not in self.under_way:
            response = next(iter(self.under_way), None)
        return self.under_way.pop(response) if response is not None else time.time()

    def _transcribed(self, event: dict) -> CallMeter:
        """The row of a transcription of the user's audio, by the session's transcription model
        (unpriced when the session never named it)."""
        meter = self._meter(self.committed.pop(wire.item_of(event), time.time()), self.transcriber)
        observed = meter.parser.observed  # type: ignore[union-attr]
        try:
            observed.usage = wire.transcription_usage(event)
        except InvalidUsage as exc:
            observed.invalid_usage = str(exc)
        observed.complete = True
        meter.finish(101, "completed", None)
        return meter

    def _finished(self, event: dict) -> CallMeter:
        meter = self._meter(self._started(wire.response_id(event)))
        observed = meter.parser.observed  # type: ignore[union-attr]
        try:
            observed.usage = wire.response_usage(event)
        except InvalidUsage as exc:
            observed.invalid_usage = str(exc)
        status = wire.response_status(event)
        observed.complete = True
        meter.finish(101, "completed", None if status in (None, "completed") else f"response {status}")
        return meter

    def closed(self, by_client: bool | None, code: int | None) -> list[CallMeter]:
        """At the end of the socket: the meters of the responses cut off before their response.done."""
        by = "the client" if by_client else "the server" if by_client is False else "the network"
        return self.cut("client_disconnected" if by_client else "upstream_failed",
                        f"the WebSocket closed before response.done (closed by {by}, code {code})")

    def cut(self, outcome: str, why: str) -> list[CallMeter]:
        """The meters of the responses under way, ended without their usage. (Audio committed and not
        yet transcribed is not counted: its transcription may not have been asked for.)"""
        meters = []
        for started_at in self.under_way.values():
            meter = self._meter(started_at)
            meter.finish(101, outcome, f"no usage: {why}")
            meters.append(meter)
        self.under_way.clear()
        return meters

    def _meter(self, started_at: float, model: str | None = None) -> CallMeter:
        """A row's meter for the session's model, or ``model``."""
        h = self.handshake
        meter = CallMeter(h.provider, h.path, h.key_id, h.customer_id, h.feature, started_at, None, "", "GET",
                          upgrade=True)  # a response of the session the handshake's upgrade opened
        meter.stream = True
        meter.parser = _Seen(observed=Observed(model=model or self.model))
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

    def __init__(self, submit: Callable[[CallMeter], None], state: ProxyState | None = None) -> None:
        self.submit, self.state = submit, state
        self._open: dict[str, RealtimeSession] = {}  # by flow id: the sessions still connected

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        session: RealtimeSession | None = flow.metadata.get(SESSION)
        if session is not None:
            self._open[flow.id] = session

    def done(self) -> None:
        """Runs before AiSpendTrack's (make_addons), while the writer still takes rows."""
        for session in self._open.values():
            for meter in session.cut("proxy_stopped", "the proxy stopped before response.done"):
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
        if self.state is not None and self.state.cutting:  # closed by a stop, not by either end
            meters = session.cut("proxy_stopped", "the proxy stopped before response.done")
        else:
            meters = session.closed(ws.closed_by_client, ws.close_code)
        for n, meter in enumerate(meters):
            meter.hooks_ns = overhead.take(flow) if n == 0 else None  # the frames timed once
            self.submit(meter)


def _keep(pending: dict[str, float], name: str) -> None:
    """When ``name`` started, in a session's bounded record of what it waits for (MAX_PENDING: the
    oldest goes first)."""
    if len(pending) >= MAX_PENDING:
        del pending[next(iter(pending))]
    pending[name] = time.time()

"""What one client connection may take from the proxy: bytes of headers, time, and a slot.

mitmproxy reads a request head without any size limit and keeps a connection that sends
nothing for up to ``tcp_timeout`` (10 minutes), so one hostile client could take gigabytes or
every file descriptor. This addon adds the bounds a front-line HTTP server has:

- a request head (request line and headers) larger than MAX_HEADER_BYTES is answered with 431
  and the connection closed, whatever the number of lines (so the count is bounded too);
- a connection must send a complete request head within ``aispendtrack_client_timeout_s`` of
  connecting or of its previous response (slowloris, idle keep-alives), and a request body
  within BODY_TIMEOUT_FACTOR times that; a call in flight is bounded by the upstream timeout;
- at most ``aispendtrack_max_connections`` client connections at once (and never more than the
  process's file descriptors allow); one more is closed at once.

Each refusal is logged once per burst, then counted in a summary line (addon/core/burstlog.py).
The header limit wraps one mitmproxy method (pinned to <13 in pyproject.toml); tests/test_bounds.py
fails if it stops working.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time

from mitmproxy import ctx, http
from mitmproxy.connection import Client
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.utils.asyncio_utils import create_task

from . import settings
from .core.burstlog import BurstLog

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024  # twice what the providers' own front ends accept (32 KB)
BODY_TIMEOUT_FACTOR = 5
_FDS_PER_CONNECTION = 2  # the client's socket and its upstream's
_FDS_KEPT = 64  # for the database, spill files, the web port and logs


_oversized = BurstLog("refused request heads over the size limit")
_original_read_headers = _http1.Http1Server.read_headers


def _bounded_read_headers(self, event: events.ConnectionEvent):
    if isinstance(event, events.ConnectionClosed):
        # mitmproxy would log the partial head verbatim, keys and all.
        self.buf = _http1.ReceiveBuffer()
    yield from _original_read_headers(self, event)
    if isinstance(event, events.DataReceived) and self.state == self.read_headers and len(self.buf) > MAX_HEADER_BYTES:
        _oversized.refused(f"{len(self.buf):,} bytes from {self.conn.peername[0] if self.conn.peername else '?'}")
        body = (f"Request headers larger than {MAX_HEADER_BYTES // 1024} KB are refused by AiSpendTrack.\n").encode()
        yield commands.SendData(self.conn, http1.assemble_response(http.Response.make(
            431, body, {"content-type": "text/plain", "connection": "close"})))
        yield commands.CloseConnection(self.conn)
        self.buf = _http1.ReceiveBuffer()
        self.state = self.done


def install() -> None:
    """Idempotent: the addon may be loaded more than once in a process (tests, script reloads)."""
    _http1.Http1Server.read_headers = _bounded_read_headers  # type: ignore[method-assign]  # on purpose


def descriptor_budget() -> int:
    """How many client connections the file descriptor limit allows, after raising it to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = 65_536 if hard == resource.RLIM_INFINITY else min(hard, 65_536)
        if wanted > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
                soft = wanted
            except (ValueError, OSError):
                pass
    return max(1, (soft - _FDS_KEPT) // _FDS_PER_CONNECTION)


class ConnectionBounds:
    def __init__(self) -> None:
        self.max_connections = 1024
        self.timeout = 60.0
        self._open: set[str] = set()  # client ids
        self._in_flight: dict[str, int] = {}  # client id -> calls under way (several with HTTP/2)
        self._waiting: dict[str, tuple[float, str]] = {}  # client id -> (deadline, what for)
        self._over = BurstLog("refused connections over the limit")
        self._slow = BurstLog("closed connections that sent no complete request in time")
        self._ticker: asyncio.Task | None = None
        install()

    def load(self, loader) -> None:
        settings.add_options(loader, "ConnectionBounds")

    def configure(self, updated: set[str]) -> None:
        settings.check(ctx.options, updated, "ConnectionBounds")
        if "aispendtrack_max_connections" in updated:
            budget = descriptor_budget()
            self.max_connections = min(ctx.options.aispendtrack_max_connections, budget)
            if self.max_connections < ctx.options.aispendtrack_max_connections:
                log.warning("serving at most %d connections at once: the file descriptor limit allows no more "
                            "(raise it with `ulimit -n`)", self.max_connections)
        if "aispendtrack_client_timeout_s" in updated:
            self.timeout = float(ctx.options.aispendtrack_client_timeout_s)

    def running(self) -> None:
        if self._ticker is None:
            self._ticker = create_task(self._tick(), name="aispendtrack connection bounds", keep_ref=True)

    def done(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    def client_connected(self, client: Client) -> None:
        if len(self._open) >= self.max_connections:
            self._over.refused(f"{self.max_connections} open (aispendtrack_max_connections)")
            client.error = f"AiSpendTrack serves at most {self.max_connections} connections at once."
            return
        self._open.add(client.id)
        self._waiting[client.id] = (time.monotonic() + self.timeout, "request headers")

    def client_disconnected(self, client: Client) -> None:
        self._open.discard(client.id)
        self._waiting.pop(client.id, None)
        self._in_flight.pop(client.id, None)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        client_id = flow.client_conn.id
        self._in_flight[client_id] = self._in_flight.get(client_id, 0) + 1
        self._waiting[client_id] = (time.monotonic() + self.timeout * BODY_TIMEOUT_FACTOR, "request body")

    def request(self, flow: http.HTTPFlow) -> None:
        self._waiting.pop(flow.client_conn.id, None)  # in flight: the upstream timeout applies

    def response(self, flow: http.HTTPFlow) -> None:
        self._next_request(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._next_request(flow)

    def _next_request(self, flow: http.HTTPFlow) -> None:
        client_id = flow.client_conn.id
        left = self._in_flight.get(client_id, 1) - 1
        self._in_flight[client_id] = max(left, 0)
        if left <= 0 and client_id in self._open:
            self._waiting[client_id] = (time.monotonic() + self.timeout, "request headers")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1)
            self._close_late(time.monotonic())
            for burst in (self._over, self._slow, _oversized):
                burst.summarise()

    def _close_late(self, now: float) -> None:
        late = {cid: what for cid, (deadline, what) in self._waiting.items() if deadline <= now}
        if not late:
            return
        server = ctx.master.addons.get("proxyserver")
        for client_id, what in late.items():
            self._waiting.pop(client_id, None)
            handler = server.connections.get(client_id) if server is not None else None
            if handler is None:
                continue
            self._slow.refused(f"no complete {what} within the limit (aispendtrack_client_timeout_s)")
            create_task(handler.on_timeout(), name="aispendtrack client timeout", keep_ref=False)

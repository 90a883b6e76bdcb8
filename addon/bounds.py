"""What one client connection may take from the proxy: bytes of headers, time, and a slot.

mitmproxy reads a request head without any size limit and keeps a connection that sends
nothing for up to ``tcp_timeout`` (10 minutes), so one hostile client could take gigabytes or
every file descriptor. This addon adds the bounds a front-line HTTP server has:

- a request head (request line and headers) larger than MAX_HEADER_BYTES is answered with 431
  and the connection closed, whatever the number of lines (so the count is bounded too);
- a connection must send a complete request, head and body, within ``aispendtrack_client_timeout_s``
  of connecting or of its previous response (slowloris, slow bodies, idle keep-alives); over
  HTTP/2 each stream's request within that of its headers, whatever its neighbours do. A call in
  flight is bounded by the upstream timeout;
- at most ``aispendtrack_max_connections`` client connections at once (by default, and never more
  than, what the process's file descriptors allow). One more is told so: its request is answered
  503 with ``retry-after`` and the connection closed. Past refusal_slots() such connections (as many
  as the descriptors left allow, at least an eighth of the cap), one more is closed at once; one
  that sends no request is closed at the client timeout.

A burst of connections is queued, not reset: mitmproxy listens with asyncio's default backlog of
100, so while the event loop was busy the 101st connection at once was dropped, and with SYN
cookies reset. Its listening sockets get the kernel's maximum (``net.core.somaxconn``) instead.

Each refusal is logged once per burst, then counted in a summary line (addon/core/burstlog.py).
With ``--workers`` the same wrapper also listens with SO_REUSEPORT (share_ports).
The header limit and the backlog each wrap one mitmproxy method (pinned to <13 in pyproject.toml);
tests/test_bounds.py fails if either stops working.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import socket
import time

from mitmproxy import ctx, http
from mitmproxy.connection import Client
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, events, mode_servers
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.utils.asyncio_utils import create_task

from . import settings
from .core import metrics
from .core.burstlog import BurstLog

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024  # twice what the providers' own front ends accept (32 KB)
RETRY_AFTER_S = 1
_AFTER_STOP = "aispendtrack.after_stop"  # flow.metadata: its request began once the proxy was stopping
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


_listen = mode_servers.AsyncioServerInstance.listen
_share_port = False  # `aispendtrack proxy --workers N`: N processes accept on each listening port


def share_ports() -> None:
    """Listen with SO_REUSEPORT, so that the kernel spreads the connections of one port over this
    process and its sibling workers (cli/workers.py). Only sockets of the same user can join."""
    global _share_port
    _share_port = True


async def _listen_with_full_backlog(self, host: str, port: int):
    if _share_port and port and self.mode.transport_protocol in ("tcp", "both"):
        # What mitmproxy's listen does for TCP, with the option it has no way to pass. A reverse mode to
        # https:// (every provider's) is "both": mitmproxy would also bind UDP for HTTP/3 to the proxy,
        # a socket that cannot share the port, so the second worker could not start. Workers serve TCP.
        return [await asyncio.start_server(self.handle_stream, host, port, reuse_port=True,
                                           backlog=socket.SOMAXCONN)]
    servers = await _listen(self, host, port)
    for server in servers:
        for sock in getattr(server, "sockets", ()):  # TCP servers' (a UDP server has none)
            with sock.dup() as listening:  # listen() again on the same socket: only its backlog changes
                listening.listen(socket.SOMAXCONN)
    return servers


def install() -> None:
    """Idempotent: the addon may be loaded more than once in a process (tests, script reloads)."""
    _http1.Http1Server.read_headers = _bounded_read_headers  # type: ignore[method-assign]  # on purpose
    mode_servers.AsyncioServerInstance.listen = _listen_with_full_backlog  # type: ignore[method-assign]


def descriptor_budget() -> int:
    """How many client connections the file descriptor limit allows, after raising it to the hard limit.

    A served connection takes two descriptors (its socket and its upstream's); each one over the cap
    that waits for its 503 takes one, and up to refusal_slots() of them may."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = 65_536 if hard == resource.RLIM_INFINITY else min(hard, 65_536)
        if wanted > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
                soft = wanted
            except (ValueError, OSError):
                pass
    return max(1, (soft - _FDS_KEPT - 16) * 8 // 17)  # 2 * n + refusal_slots(n) <= soft - _FDS_KEPT


def refusal_slots(max_connections: int) -> int:
    """Connections over the cap that may wait for their 503: the descriptors the served ones leave, so a
    cap set below the descriptor limit refuses every connection past it with an answer, never a reset."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 65_536
    return max(max_connections // 8 + 16, soft - _FDS_KEPT - 2 * max_connections)


class ConnectionBounds:
    def __init__(self) -> None:
        self.max_connections = 1024
        self._fd_bound = False  # the file descriptor limit, not the option, sets max_connections
        self._refusal_slots = refusal_slots(self.max_connections)
        self.timeout = 60.0
        self._open: set[str] = set()  # client ids served
        self._refusing: set[str] = set()  # client ids over the cap, to be answered 503
        self._in_flight: dict[str, int] = {}  # client id -> calls under way (several with HTTP/2)
        # client id -> {"" (the next request) or a flow id (its body): (deadline, what)}
        self._deadlines: dict[str, dict[str, tuple[float, str]]] = {}
        # Set by a stop (cli/proxy.py): a request begun after it, on a connection kept alive, is
        # answered 503 and the connection closed; one begun before is served (the drain waits for it).
        self.stopping = False
        self.answered: set[str] = set()  # client ids whose latest request's response hook ran (_Stop)
        self._over = BurstLog("refused connections over the limit")
        self._slow = BurstLog("closed connections that sent no complete request in time")
        self._ticker: asyncio.Task | None = None
        install()

    def load(self, loader) -> None:
        settings.add_options(loader, "ConnectionBounds")

    def configure(self, updated: set[str]) -> None:
        settings.check(ctx.options, updated, "ConnectionBounds")
        if "aispendtrack_max_connections" in updated:
            budget, asked = descriptor_budget(), ctx.options.aispendtrack_max_connections
            self.max_connections = min(asked or budget, budget)
            self._fd_bound = asked > budget
            self._refusal_slots = refusal_slots(self.max_connections)
        if "aispendtrack_client_timeout_s" in updated:
            self.timeout = float(ctx.options.aispendtrack_client_timeout_s)

    def running(self) -> None:
        if self._fd_bound:
            log.warning("serving at most %d connections at once: the file descriptor limit allows no more "
                        "(raise it with `ulimit -n`)", self.max_connections)
        else:
            log.info("serving at most %d connections at once", self.max_connections)
        metrics.watch_connections(self.stats)
        if self._ticker is None:
            self._ticker = create_task(self._tick(), name="aispendtrack connection bounds", keep_ref=True)

    def done(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    def stats(self) -> dict[str, int]:
        """Read from the metrics thread: len() of a set another thread changes is safe under the GIL."""
        return {"served": len(self._open), "refused": len(self._refusing), "max": self.max_connections}

    def client_connected(self, client: Client) -> None:
        if len(self._open) < self.max_connections:
            self._open.add(client.id)
        elif len(self._refusing) < self._refusal_slots:
            self._refusing.add(client.id)  # its request gets a 503: an answer, not a reset
            self._over.refused(f"{self.max_connections} open (aispendtrack_max_connections)")
        else:
            self._over.refused(f"{self.max_connections} open (aispendtrack_max_connections)")
            client.error = f"AiSpendTrack serves at most {self.max_connections} connections at once."
            return
        self._deadlines[client.id] = {"": (time.monotonic() + self.timeout, "request")}

    def client_disconnected(self, client: Client) -> None:
        self._open.discard(client.id)
        self._refusing.discard(client.id)
        self._deadlines.pop(client.id, None)
        self._in_flight.pop(client.id, None)
        self.answered.discard(client.id)

    def tls_clienthello(self, data) -> None:
        """A tunnel the forward mode does not open (forward.py, whose hook runs first) carries another
        host's bytes for as long as they flow: no request deadline, mitmproxy's idle timeout only."""
        if data.ignore_connection:
            self._deadlines.pop(data.context.client.id, None)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if self.stopping:
            flow.metadata[_AFTER_STOP] = True
        client_id = flow.client_conn.id
        self.answered.discard(client_id)
        self._in_flight[client_id] = self._in_flight.get(client_id, 0) + 1
        deadlines = self._deadlines.setdefault(client_id, {})
        # The request's clock started when the connection began to wait for it (HTTP/1, and a first
        # HTTP/2 stream); a stream opened beside calls in flight starts its own.
        deadline, _ = deadlines.pop("", (time.monotonic() + self.timeout, ""))
        deadlines[flow.id] = (deadline, "request body")

    def request(self, flow: http.HTTPFlow) -> None:
        client_id = flow.client_conn.id
        self._deadlines.get(client_id, {}).pop(flow.id, None)  # in flight: the upstream timeout applies
        if flow.response is not None:
            return
        if client_id in self._refusing:
            body = _busy_body(self.max_connections)
        elif flow.metadata.get(_AFTER_STOP):  # forwarded now, it would be billed and then cut at the drain's end
            body = _error_body("aispendtrack_stopping", "AiSpendTrack is stopping and takes no new call on this "
                                                        "connection; retry (another replica, or this one once "
                                                        "restarted). The call was not forwarded.")
        else:
            return
        flow.response = http.Response.make(503, body, {
            "content-type": "application/json", "retry-after": str(RETRY_AFTER_S), "connection": "close"})

    def requests_under_way(self) -> int:
        """Requests whose headers came and whose response hook has not run: those still sending their
        body too, which a stop's drain waits for as it does for the calls forwarded."""
        return sum(self._in_flight.values())

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is None:  # a websocket's frames go on long after: not an answer to send out
            self.answered.add(flow.client_conn.id)
        self._next_request(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._next_request(flow)

    def _next_request(self, flow: http.HTTPFlow) -> None:
        client_id = flow.client_conn.id
        deadlines = self._deadlines.get(client_id)
        if deadlines is None:
            return  # disconnected
        deadlines.pop(flow.id, None)  # a stream that ended before its body did
        left = max(self._in_flight.get(client_id, 1) - 1, 0)
        self._in_flight[client_id] = left
        if left == 0 and flow.websocket is None:  # an upgraded connection carries frames, never another request
            deadlines[""] = (time.monotonic() + self.timeout, "request")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1)
            self._close_late(time.monotonic())
            for burst in (self._over, self._slow, _oversized):
                burst.summarise()

    def _close_late(self, now: float) -> None:
        late = {client_id: what for client_id, deadlines in self._deadlines.items()
                for deadline, what in deadlines.values() if deadline <= now}
        if not late:
            return
        server = ctx.master.addons.get("proxyserver")
        for client_id, what in late.items():
            self._deadlines[client_id] = {}
            handler = server.connections.get(client_id) if server is not None else None
            if handler is None:
                continue
            self._slow.refused(f"no complete {what} within the limit (aispendtrack_client_timeout_s)")
            create_task(handler.on_timeout(), name="aispendtrack client timeout", keep_ref=False)


def _busy_body(max_connections: int) -> bytes:
    return _error_body("aispendtrack_over_capacity",
                       f"AiSpendTrack is serving its maximum of {max_connections} connections at once; retry in "
                       f"{RETRY_AFTER_S} s. An operator can raise --max-connections or the file descriptor limit "
                       f"(ulimit -n).")


def _error_body(code: str, message: str) -> bytes:
    """In both SDK families' error shapes at once: OpenAI's reads error.message, Anthropic's type and error."""
    return json.dumps({"type": "error", "error": {"type": "overloaded_error", "code": code,
                                                  "message": message}}).encode()

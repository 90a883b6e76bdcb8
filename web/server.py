"""The web port's HTTP server: waitress, with the bounds a public port needs.

Waitress reads requests and writes answers on one event loop and runs the app on a fixed pool of
THREADS, so a slow client holds a socket, never a thread (docs/operations.md has the measurement
that chose it over Werkzeug's thread-per-connection server). On top of it:

- at most MAX_CONNECTIONS connections at once; one more gets a 503 at once, not a wait in the
  listen queue;
- a request's line and headers must arrive within HEAD_TIMEOUT seconds, also between two
  requests on a kept-alive connection; a connection silent for READ_TIMEOUT is closed;
- the access log (logger ``aispendtrack.web``) shows method, path and status, never the query
  string (it can carry a customer id or a token);
- each refusal is logged once per burst, not once per connection.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

from addon.core.burstlog import BurstLog

log = logging.getLogger("aispendtrack.web")
# Waitress warns "Task queue depth is N" for every request that waits for a thread: under load, a
# line per request. Requests waiting is what a pool is for; the refusals above are what matters.
logging.getLogger("waitress.queue").setLevel(logging.ERROR)

MAX_CONNECTIONS = 128
THREADS = 8
HEAD_TIMEOUT = 30.0
READ_TIMEOUT = 30.0
OUTPUT_WATERMARK = 256 * 1024
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
         b"Retry-After: 1\r\nContent-Length: 52\r\n\r\nAiSpendTrack web: too many connections; try again.\n")


class _Channel(HTTPChannel):
    head_started = 0.0  # when the first byte of the request now being read arrived

    def received(self, data: bytes) -> bool:
        if self.request is None and data:
            self.head_started = time.time()
        return super().received(data)

    def late(self, now: float) -> bool:
        """No complete request head within HEAD_TIMEOUT (of its first byte, or of the last answer)."""
        if self.requests or (self.request is not None and self.request.headers_finished):
            return False  # being served, or its body is arriving: no head limit then
        since = self.head_started if self.request is not None else self.last_activity
        return now - since > HEAD_TIMEOUT


class WebServer(TcpWSGIServer):
    channel_class = _Channel

    def __init__(self, host: str, port: int, app: Callable) -> None:
        adj = Adjustments(host=host, port=port, threads=THREADS, channel_timeout=READ_TIMEOUT, cleanup_interval=1,
                          # Room to accept (and refuse with a 503) what comes over MAX_CONNECTIONS.
                          connection_limit=MAX_CONNECTIONS + 64, ident="AiSpendTrack", expose_tracebacks=False,
                          # Waitress moves an answer a client is slow to take into a clear-text file in
                          # /tmp past outbuf_overflow: never. A streamed answer (an export, sealed in
                          # its spool until sent) pauses past the watermark instead, so what waits in
                          # memory is one piece of it per connection.
                          outbuf_overflow=sys.maxsize, outbuf_high_watermark=OUTPUT_WATERMARK,
                          # Forwarding headers are the app's to judge, by the peer (web/security.py).
                          clear_untrusted_proxy_headers=False)
        dispatcher = ThreadedTaskDispatcher()
        dispatcher.set_thread_count(THREADS)
        super().__init__(_access_logged(app), map={}, dispatcher=dispatcher, adj=adj)
        self.server_port = int(self.effective_port)
        self.busy = BurstLog("web: refused connections over the limit")
        self.slow = BurstLog("web: closed connections that sent no complete request in time")
        self._done = threading.Event()

    def handle_accept(self) -> None:
        if len(self.active_channels) < MAX_CONNECTIONS:
            return super().handle_accept()
        try:
            accepted = self.accept()
        except OSError:
            return
        if accepted is None:
            return
        conn = accepted[0]
        self.busy.refused(f"{MAX_CONNECTIONS} open")
        try:  # never blocking the event loop: a fresh socket's buffer holds these 150 bytes
            conn.setblocking(False)
            conn.send(_BUSY)
        except OSError:
            pass
        finally:
            conn.close()

    def maintenance(self, now: float) -> None:  # the event loop calls this every cleanup_interval
        super().maintenance(now)
        for channel in list(self.active_channels.values()):
            if isinstance(channel, _Channel) and not channel.will_close and channel.late(now):
                self.slow.refused(f"no complete request within {HEAD_TIMEOUT:.0f} s")
                channel.will_close = True
        self.busy.summarise()
        self.slow.summarise()

    def serve_forever(self) -> None:
        try:
            self.run()
        finally:
            self._done.set()

    def shutdown(self) -> None:
        """Stop serving (from another thread): the loop closes every socket, then the pool stops."""
        self.trigger.pull_trigger(lambda: self.asyncore.close_all(self._map))
        self._done.wait(10)
        self.task_dispatcher.shutdown(timeout=5)

    def server_close(self) -> None:
        if not self._done.is_set():
            self.shutdown()


def _access_logged(app: Callable) -> Callable:
    """One line per answer: method, path (no query string), status, bytes."""
    def logged(environ: dict, start_response: Callable) -> Iterable[bytes]:
        status = ["-"]

        def starting(code: str, headers, exc_info=None):
            status[0] = code.split(" ", 1)[0]
            return start_response(code, headers, exc_info)

        sent = 0
        answer = app(environ, starting)
        try:
            for chunk in answer:
                sent += len(chunk)
                yield chunk
        finally:
            if hasattr(answer, "close"):
                answer.close()  # Flask's teardown (and a streamed export's cleanup) runs here
            log.info('"%s %s" %s %s', environ.get("REQUEST_METHOD", "-"), environ.get("PATH_INFO", "-"), status[0],
                     sent)
    return logged


def serve_in_thread(home, host: str, port: int, trusted_proxies: Sequence[str] = ()) -> threading.Thread:
    """The web app beside the proxy, in the same process (``aispendtrack proxy --web-port``)."""
    from . import create_app

    server = WebServer(host, port, create_app(home, trusted_proxies=trusted_proxies))
    thread = threading.Thread(target=server.serve_forever, name="aispendtrack-web", daemon=True)
    thread.start()
    return thread

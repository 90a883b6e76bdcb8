"""The web port's HTTP server: waitress, with the bounds a public port needs.

Waitress reads requests and writes answers on one event loop and runs the app on a fixed pool of
THREADS, so a slow client holds a socket, never a thread (docs/operations.md has the measurement
that chose it over Werkzeug's thread-per-connection server). On top of it:

- at most MAX_CONNECTIONS connections at once; one more gets a 503 at once, not a wait in the
  listen queue;
- a whole request (line, headers and body) must arrive within REQUEST_TIMEOUT seconds of its first
  byte, or of the previous answer on a kept-alive connection, however steadily it drips; a
  connection silent for READ_TIMEOUT is closed;
- the access log (logger ``aispendtrack.web``) shows method, path and status, never the query
  string (it can carry a customer id or a token);
- each refusal is logged once per burst, not once per connection.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from waitress import wasyncore
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
REQUEST_TIMEOUT = 30.0
READ_TIMEOUT = 30.0
OUTPUT_WATERMARK = 256 * 1024
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
         b"Retry-After: 1\r\nContent-Length: 52\r\n\r\nAiSpendTrack web: too many connections; try again.\n")


class _Channel(HTTPChannel):
    request_started = 0.0  # when the first byte of the request now being read arrived

    def received(self, data: bytes) -> bool:
        if self.request is None and data:
            self.request_started = time.time()
        return super().received(data)

    def late(self, now: float) -> bool:
        """No complete request, body included, within REQUEST_TIMEOUT (of its first byte, or of the last
        answer). A body dripped a byte at a time keeps the connection active, so the read timeout
        alone would let it hold its slot for ever."""
        if self.requests:
            return False  # complete and being served
        since = self.request_started if self.request is not None else self.last_activity
        return now - since > REQUEST_TIMEOUT


class WebServer(TcpWSGIServer):
    channel_class = _Channel

    def __init__(self, host: str, port: int, app: Callable, sock: socket.socket | None = None,
                 access_log: bool = True) -> None:
        """``sock``: a socket already listening (one the proxy's parent bound and handed on), else one
        bound here to ``host``:``port``. ``access_log``: a line per answer (``_access_logged``)."""
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
        handed = {} if sock is None else {"_sock": sock, "bind_socket": False,
                                          "sockinfo": (sock.family, sock.type, sock.proto, sock.getsockname())}
        super().__init__(_access_logged(app) if access_log else app, map={}, dispatcher=dispatcher, adj=adj,
                         **handed)
        self.server_port = int(self.effective_port)
        self.busy = BurstLog("web: refused connections over the limit")
        self.slow = BurstLog("web: closed connections that sent no complete request in time")
        self._done = threading.Event()
        # The trigger is a pipe that worker threads write to; once closed, its descriptor number may
        # belong to another file. Every write and the close hold this lock.
        self._trigger_lock = threading.Lock()
        self._trigger_closed = False

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
                self.slow.refused(f"no complete request within {REQUEST_TIMEOUT:.0f} s")
                channel.will_close = True
        self.busy.summarise()
        self.slow.summarise()

    def pull_trigger(self, thunk: Callable[[], None] | None = None) -> None:
        """Wake the event loop (worker threads do, when an answer is ready), and run ``thunk`` in it."""
        with self._trigger_lock:
            if not self._trigger_closed:
                self.trigger.pull_trigger(thunk)

    def serve_forever(self) -> None:
        try:
            self.run()
        finally:
            self._close_trigger()
            self._done.set()

    def shutdown(self) -> None:
        """Stop serving (from another thread), in an order that never writes to a closed descriptor:
        the loop closes the listening socket and every connection but keeps running; the worker
        threads stop; then the loop lets go of the trigger, ends, and closes it (serve_forever)."""
        self.pull_trigger(self._close_sockets)
        self.task_dispatcher.shutdown(timeout=5)
        self.pull_trigger(self.trigger.del_channel)  # an empty map ends the loop
        self._done.wait(10)

    def _close_sockets(self) -> None:
        self.close()
        for channel in list(self.active_channels.values()):
            channel.handle_close()  # also wakes a worker waiting to write to it

    def close(self) -> None:
        """Stop listening. Waitress calls this on an unexpected error in the accept handler too; the
        trigger stays open for shutdown() and closes when the loop ends (waitress closed it here)."""
        wasyncore.dispatcher.close(self)

    def _close_trigger(self) -> None:
        with self._trigger_lock:
            self._trigger_closed = True
            self.trigger.close()

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


def serve_in_thread(home, host: str, port: int, trusted_proxies: Sequence[str] = (),
                    sock: socket.socket | None = None) -> WebServer:
    """The web app beside the proxy, in the same process (``aispendtrack proxy --web-port``; under
    ``--workers N``, embedded, in the owner of the data, on the socket the parent bound)."""
    from . import create_app

    server = WebServer(host, port, create_app(home, trusted_proxies=trusted_proxies), sock)
    threading.Thread(target=server.serve_forever, name="aispendtrack-web", daemon=True).start()
    return server

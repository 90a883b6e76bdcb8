"""The web port's HTTP server: Werkzeug's threaded server with the bounds a public port needs.

- at most MAX_CONNECTIONS connections at once (one thread each); one more gets a 503 at once;
- a request's line and headers must arrive within HEAD_TIMEOUT seconds, also between two
  requests on a kept-alive connection; any single read waits at most READ_TIMEOUT seconds;
- the access log shows method, path and status, never the query string (it can carry a
  customer id or a token);
- each refusal is logged once per burst, not once per connection.
"""

from __future__ import annotations

import logging
import socket
import threading
from urllib.parse import urlsplit

from flask import Flask
from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from addon.core.burstlog import BurstLog

log = logging.getLogger("werkzeug")

MAX_CONNECTIONS = 128
HEAD_TIMEOUT = 30.0
READ_TIMEOUT = 30.0
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
         b"Retry-After: 1\r\nContent-Length: 52\r\n\r\nAiSpendTrack web: too many connections; try again.\n")


class _Handler(WSGIRequestHandler):
    timeout = READ_TIMEOUT
    server: BoundedServer

    def handle_one_request(self) -> None:
        self._deadline = threading.Timer(HEAD_TIMEOUT, self._give_up)
        self._deadline.daemon = True
        self._deadline.start()
        try:
            super().handle_one_request()
        finally:
            self._deadline.cancel()

    def parse_request(self) -> bool:
        parsed = super().parse_request()  # reads the headers
        self._deadline.cancel()  # the head is in; the body and the answer have no such limit
        return parsed

    def _give_up(self) -> None:
        self.server.slow.refused(f"no complete request within {HEAD_TIMEOUT:.0f} s")
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def log_request(self, code="-", size="-") -> None:
        path = urlsplit(self.path).path if getattr(self, "path", None) else "-"
        self.log("info", '"%s %s" %s %s', getattr(self, "command", "-"), path, getattr(code, "value", code), size)


class BoundedServer(ThreadedWSGIServer):
    def __init__(self, host: str, port: int, app: Flask):
        super().__init__(host, port, app, handler=_Handler)
        self.daemon_threads = True
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._admitted: set[int] = set()
        self.busy = BurstLog("web: refused connections over the limit")
        self.slow = BurstLog("web: closed connections that sent no complete request in time")

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.busy.refused(f"{MAX_CONNECTIONS} open")
            try:
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        self._admitted.add(id(request))
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        try:
            super().shutdown_request(request)
        finally:
            if id(request) in self._admitted:
                self._admitted.discard(id(request))
                self._slots.release()

    def service_actions(self) -> None:  # called by serve_forever about twice a second
        self.busy.summarise()
        self.slow.summarise()


def serve_in_thread(home, host: str, port: int) -> threading.Thread:
    """The web app beside the proxy, in the same process (``aispendtrack proxy --web-port``)."""
    from . import create_app

    server = BoundedServer(host, port, create_app(home))
    thread = threading.Thread(target=server.serve_forever, name="aispendtrack-web", daemon=True)
    thread.start()
    return thread

"""Connections this process makes on its own (alert webhooks and mail, the providers' usage
APIs), each bounded by one deadline for the whole exchange: connecting, the answer's headers and
its body.

The standard library's ``timeout`` bounds each wait for a byte, so a server that sends one byte
every few seconds never trips it. Here a timer shuts the connection's socket down when the
deadline passes, whatever the exchange is waiting for (``deadline``), and an HTTP answer is read
up to a size bound (``fetch``). A redirect is answered as its status, not followed: urllib sent the
headers on (a webhook's signature, a usage API's admin key) to whatever host it named, and turned a
webhook's POST into a GET without its body that counted as delivered. urllib's other behaviour
(proxies from the environment, TLS checks) is kept.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from email.message import Message


class NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is refused (answered as its HTTP status): it would carry the request's credentials
    to whatever host it names (also the price fetch's: pricing/snapshots.py)."""

    def redirect_request(self, *args, **kwargs) -> None:
        return None


class DeadlineExceeded(TimeoutError):
    """No complete answer within the deadline."""


class AnswerTooLarge(ValueError):
    """The answer's body passed the size bound."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[_Watch]:
    """The sockets given to ``watch(lambda: sock)`` inside are shut down once ``seconds`` pass;
    what that makes the exchange raise comes out as DeadlineExceeded."""
    watch = _Watch(seconds)
    try:
        with watch:
            yield watch
    except (OSError, ValueError, http.client.HTTPException):
        if watch.fired:  # whatever the cut socket raised, the reason is the deadline
            raise DeadlineExceeded(f"no complete answer within {seconds:g} s") from None
        raise


def fetch(request: urllib.request.Request, seconds: float, max_bytes: int) -> tuple[int, Message, bytes]:
    """(status, headers, body) of ``request`` within ``seconds``; an HTTP error status is returned
    like any other. Raises DeadlineExceeded, AnswerTooLarge, or urllib's errors (URLError, ...)."""
    with deadline(seconds) as watch:
        opener = urllib.request.build_opener(_HTTPHandler(watch), _HTTPSHandler(watch), NoRedirects)
        try:
            response = opener.open(request, timeout=seconds)
        except urllib.error.HTTPError as exc:
            response = exc
        with response:
            body = response.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise AnswerTooLarge(f"the answer passed {max_bytes:,} bytes")
    return response.status or 0, response.headers, body


class _Watch:
    """The sockets of one exchange, shut down together when its deadline passes."""

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._sockets: list[Callable[[], socket.socket | None]] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True

    def __enter__(self) -> _Watch:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()

    def __call__(self, current: Callable[[], socket.socket | None]) -> None:
        """Watch the socket ``current()`` gives at the deadline (a TLS layer may replace it)."""
        with self._lock:
            self._sockets.append(current)

    def connection(self, base: type[http.client.HTTPConnection]):
        """A factory of ``base`` connections that this watch can cut (for urllib's do_open)."""
        def make(*args, **kwargs) -> http.client.HTTPConnection:
            made = base(*args, **kwargs)
            self(lambda: made.sock)
            return made
        return make

    def _cut(self) -> None:
        with self._lock:
            self.fired = True
            sockets = [current() for current in self._sockets]
        for sock in sockets:
            try:  # the plain socket's shutdown, under any TLS layer: the blocked read returns at once
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # type: ignore[arg-type]
            except (OSError, TypeError):  # not connected yet (bounded by the socket timeout), or closed
                pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, watch: _Watch) -> None:
        super().__init__()
        self._watch = watch

    def http_open(self, req):
        return self.do_open(self._watch.connection(http.client.HTTPConnection), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, watch: _Watch) -> None:
        super().__init__()
        self._watch = watch

    def https_open(self, req):
        return self.do_open(self._watch.connection(http.client.HTTPSConnection), req,
                            context=self._context)

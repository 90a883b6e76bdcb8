"""What the caller sees when the upstream fails: a 502 or 504 in its SDK's error shape.

mitmproxy answers a failed upstream with an HTML page from ``_http1.make_error_response`` and
offers no hook to change it, nor any upstream response timeout. Two small pieces close that gap:

* ``error`` (our addon hook) decides the reply and parks it in a context variable. mitmproxy runs
  the error hook and then renders the error page in the same asyncio task, so the wrapped renderer
  finds the reply there and sends it instead of the HTML page. Errors of flows that are not ours
  (no parked reply) and clients' protocol errors get mitmproxy's message as plain text.
* ``UpstreamWatch`` keeps each upstream connection's task (the hook that opens a connection runs
  in the task that later reads it) and a timer per call. When no response headers arrived in
  time, it cancels that task: mitmproxy then reports the upstream as gone and the call ends with
  our 504. With HTTP/1.1 upstreams a connection carries one call at a time, so nothing else is hit.

Both depend on mitmproxy internals, pinned to <13 in pyproject.toml; tests/test_faults.py fails if
either stops working.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging

from mitmproxy import http
from mitmproxy.net.http import http1
from mitmproxy.proxy.layers.http import _http1

log = logging.getLogger(__name__)

_REPLY: contextvars.ContextVar[tuple[int, bytes] | None] = contextvars.ContextVar("aispendtrack_reply", default=None)


def _render(status_code: int, message: str = "") -> bytes:
    reply = _REPLY.get()
    # Only upstream failures (mitmproxy's 502) are ours to answer in the SDK's shape; a client's own
    # protocol error (a 400) is answered as plain text even if a reply was parked for its flow.
    if reply is None or status_code != 502:
        return _plain(status_code, message)
    _REPLY.set(None)
    status, body = reply
    response = http.Response.make(status, body, {"content-type": "application/json", "connection": "close"})
    return http1.assemble_response(response)


def _plain(status_code: int, message: str) -> bytes:
    """mitmproxy's own errors (a malformed request line, a request without a destination on the
    forward port, a flow not ours whose upstream failed) as one line of text: its page was HTML
    and named mitmproxy's version in a Server header."""
    reason = http.status_codes.RESPONSES.get(status_code, "Error")
    text = f"AiSpendTrack proxy: {status_code} {reason}: {message}\n"
    response = http.Response.make(status_code, text, {"content-type": "text/plain; charset=utf-8",
                                                      "connection": "close"})
    return http1.assemble_response(response)


def install() -> None:
    """Idempotent: the addon may be loaded more than once in a process (tests, script reloads)."""
    _http1.make_error_response = _render


def reply_with(status: int, body: bytes) -> None:
    """From the error hook: what mitmproxy sends the client in place of its HTML error page."""
    _REPLY.set((status, body))


class UpstreamWatch:
    """Times out calls whose upstream sends no response headers within ``timeout`` seconds."""

    def __init__(self) -> None:
        self.timeout = 600.0
        self._tasks: dict[str, asyncio.Task] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.timed_out: set[str] = set()

    def connecting(self, server_id: str) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks[server_id] = task

    def disconnected(self, server_id: str) -> None:
        self._tasks.pop(server_id, None)

    def start(self, flow: http.HTTPFlow) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # hooks driven without a proxy (unit tests): there is no connection to watch
            return
        self._timers[flow.id] = loop.call_later(self.timeout, self._expire, flow)

    def answered(self, flow: http.HTTPFlow) -> None:
        timer = self._timers.pop(flow.id, None)
        if timer is not None:
            timer.cancel()

    def finished(self, flow: http.HTTPFlow) -> bool:
        """True when the call ended because we timed it out."""
        self.answered(flow)
        if flow.id in self.timed_out:
            self.timed_out.discard(flow.id)
            return True
        return False

    def _expire(self, flow: http.HTTPFlow) -> None:
        self._timers.pop(flow.id, None)
        task = self._tasks.get(flow.server_conn.id)
        if flow.response is not None or task is None or task.done():
            return
        log.warning("upstream %s sent no response in %.0f s; answering 504", flow.request.host, self.timeout)
        self.timed_out.add(flow.id)
        task.cancel("aispendtrack: upstream timeout")

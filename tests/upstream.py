"""A fake provider: a real HTTP server on 127.0.0.1 speaking OpenAI's and Anthropic's wire formats.

Payloads are the documented ones in docs/provider-usage.md. A test picks a
scenario with the ``x-test-scenario`` request header (it passes through the proxy like any
header of the caller's), and can read back every request the upstream received.
"""

from __future__ import annotations

import functools
import http.client
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from . import payloads


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.time)  # when it arrived (the usage API fake buckets by it)


class LocalServer:
    """A fake's HTTP server on 127.0.0.1, in a thread of its own while a ``with`` block runs; HTTPS
    with ``ssl_context`` (``serving_context``). Each fake subclasses it with its handler."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], ssl_context: ssl.SSLContext | None = None) -> None:
        self.received: list = []
        self.server = _Server(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        if ssl_context is not None:
            self.server.socket = ssl_context.wrap_socket(self.server.socket, server_side=True)
            self.url = f"https://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def last(self):
        return self.received[-1]


class FakeHandler(BaseHTTPRequestHandler):
    """HTTP/1.1, quiet, and ``receive()``: the request as a fake records it."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def receive(self) -> Received:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        return Received(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)


def send_json(handler: BaseHTTPRequestHandler, status: int, document: object, headers: dict | None = None,
              content_type: str = "application/json") -> None:
    """One JSON answer with its length, and any ``headers`` a fake adds."""
    data = json.dumps(document).encode()
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("content-type", content_type)
    handler.send_header("content-length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def serving_context(certs: dict[str, Path]) -> ssl.SSLContext:
    """A server's TLS context with the leaf tests/certs.py made."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs["cert"], certs["key"])
    return context


class FakeProvider(LocalServer):
    def __init__(self, ssl_context=None) -> None:
        self.usage_api = None  # a tests.usage_api.UsageApi: then this provider answers its usage API too
        self.batches = None  # a tests.batch_api.BatchApi: then this provider answers its batch APIs too
        self.media = None  # a tests.media_upstream.MediaProvider: then this one answers the images and audio APIs too
        self.gate = threading.Event()  # a "gated" stream waits on this after its first event
        self.stream_abandoned = threading.Event()  # set when a client went away mid-stream
        super().__init__(_handler(self), ssl_context)
        self.received: list[Received] = []

    def __enter__(self) -> FakeProvider:
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        self.gate.set()
        super().__exit__(*exc)

    def last(self) -> Received:
        return self.received[-1]


class _Server(ThreadingHTTPServer):
    request_queue_size = 2048  # a provider's front end takes bursts of thousands of connections


def _handler(provider: FakeProvider):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            if provider.usage_api is not None and self.path.startswith("/v1/organization"):
                from .usage_api import answer
                answer(provider.usage_api, self)
                return
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def _handle(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            provider.received.append(Received(self.command, self.path, headers, body))
            if provider.batches is not None and provider.batches.handles(self.command, self.path):
                from .batch_api import answer
                answer(provider.batches, self, provider.url, body)
                return
            if provider.media is not None:
                from . import media_upstream
                if media_upstream.handles(self.path):
                    media_upstream.answer(provider.media, self, body)
                    return
            scenario = self.headers.get("x-test-scenario", "")
            if scenario == "hang":  # accepts the call, then says nothing until the proxy gives up
                provider.gate.wait(30)
                self.close_connection = True
                return
            if scenario == "gzip_bomb":
                self._send_bomb()
                return
            try:
                request = json.loads(body) if body else {}
            except ValueError:
                request = {}
            reply = payloads.azure_refusal(self.path, request) or payloads.reply_for(self.path.split("?")[0], scenario,
                                                                                    request)
            if reply.events is None:
                self._send_body(reply)
            else:
                self._send_stream(reply)

        def _send_body(self, reply: payloads.Reply) -> None:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

        def _send_bomb(self) -> None:
            """A small gzip body that inflates to 256 MB of JSON: only a careless reader blows up."""
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-encoding", "gzip")
            self.send_header("content-length", str(len(_bomb())))
            self.end_headers()
            self.wfile.write(_bomb())

        def _send_stream(self, reply: payloads.Reply) -> None:
            self.send_response(reply.status)
            self.send_header("content-type", "text/event-stream; charset=utf-8")
            self.send_header("cache-control", "no-cache")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.gzip:
                self.send_header("content-encoding", "gzip")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            compressor = _GzipMembers() if reply.gzip_members else _GzipStream() if reply.gzip else None
            if reply.die_after == 0:  # the headers alone
                self.wfile.flush()
                self._die()
                return
            try:
                for n, piece in enumerate(reply.pieces()):
                    data = compressor.compress(piece) if compressor else piece
                    self._chunk(data)
                    if reply.gated and n == 0:
                        provider.gate.wait(10)
                    if reply.delay:
                        time.sleep(reply.delay)
                    if reply.die_after is not None and n + 1 >= reply.die_after:
                        self._die()
                        return
                if compressor:
                    self._chunk(compressor.flush())
                if reply.linger:  # as real servers do: the body ends a moment after the last event
                    time.sleep(reply.linger)
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                provider.stream_abandoned.set()

        def _chunk(self, data: bytes) -> None:
            if data:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        def _die(self) -> None:
            """The upstream falls over mid-stream: the connection closes with no final chunk."""
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

    return Handler


# Python's parser stops at 100 header fields; real providers take far more, and so must the fake.
http.client._MAXHEADERS = 10_000


@functools.cache
def _bomb() -> bytes:
    import zlib
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b" " * (1 << 20)
    parts = [z.compress(b'{"usage": {"prompt_tokens": 1, "pad": "')]
    parts += [z.compress(block) for _ in range(256)]
    parts.append(z.compress(b'"}}') + z.flush())
    return b"".join(parts)



class _GzipMembers:
    def compress(self, data: bytes) -> bytes:
        import gzip
        return gzip.compress(data, mtime=0)

    def flush(self) -> bytes:
        return b""


class _GzipStream:
    def __init__(self) -> None:
        import zlib
        self._z = zlib.compressobj(6, zlib.DEFLATED, 31)

    def compress(self, data: bytes) -> bytes:
        import zlib
        return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)

    def flush(self) -> bytes:
        return self._z.flush()


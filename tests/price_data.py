"""genai-prices' data.json as its publisher serves it, made from the installed package's own bundled
data (so every model a test prices is there), and a server for it on 127.0.0.1.

    doc = bundled_document()                 # the list of providers, as JSON values
    doc = with_model(doc, "openai", "gpt-9-test", input_mtok=3, output_mtok=15)
    with PriceServer(doc) as server:          # server.url serves it; server.serve(b"...") changes it,
        server.hold()                         # server.hold() keeps requests waiting until server.release()
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import functools
import json
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from genai_prices import data_snapshot
from genai_prices.types import ModelPrice

_RENAMED = {"or_": "or", "and_": "and"}  # fields whose JSON key is a Python keyword


def _json(value):
    if isinstance(value, ModelPrice):
        return {k: _json(v) for k, v in vars(value).items() if not k.startswith("_") and v is not None}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {_RENAMED.get(f.name, f.name): _json(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not f.name.startswith("_") and getattr(value, f.name) is not None}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    return value


@functools.cache
def _bundled_text() -> str:
    return json.dumps(_json(data_snapshot._bundled_snapshot().providers))


def bundled_document() -> list:
    return json.loads(_bundled_text())


def with_model(doc: list, provider: str, model: str, **prices: float) -> list:
    """``doc`` and one more model of ``provider``, matched by its exact name."""
    doc = copy.deepcopy(doc)
    found = next(p for p in doc if p["id"] == provider)
    found["models"].insert(0, {"id": model, "match": {"equals": model}, "prices": prices})
    return doc


class PriceServer:
    """Serves one document at /data.json; ``serve`` replaces it (bytes, as sent)."""

    def __init__(self, doc: list | bytes) -> None:
        self.body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        self.requests = 0
        self.received: list[dict[str, str]] = []  # each request's headers
        self.status, self.extra_headers = 200, {}  # what ``answer`` sets
        self.holding = threading.Event()
        self.holding.set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                outer.requests += 1
                outer.received.append({"path": self.path, **dict(self.headers.items())})
                outer.holding.wait()  # a server that accepted the request and says nothing until released
                body = outer.body
                self.send_response(outer.status)
                for name, value in outer.extra_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/data.json"

    def serve(self, doc: list | bytes) -> None:
        self.body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()

    def answer(self, status: int, **headers: str) -> None:
        """Answer every request with ``status`` (and ``headers``), the body as before."""
        self.status, self.extra_headers = status, headers

    def hold(self) -> None:
        """Keep every request waiting, answered only after ``release``."""
        self.holding.clear()

    def release(self) -> None:
        self.holding.set()

    def __enter__(self) -> PriceServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

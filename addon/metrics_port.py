"""``--metrics-port``: the proxy's metrics at ``/metrics``, and nothing else, for a Prometheus scraper.

Unauthenticated, as scrapers expect, so it listens on 127.0.0.1 whatever the proxy's ``--host``,
unless ``--metrics-host`` says otherwise: labels name models, key ids and, with --metrics-tags, customers.
It runs on the web port's server (web/server.py), with the same connection bounds.
"""

from __future__ import annotations

import threading

from addon.core import metrics


def _app(environ, start_response):
    if environ.get("PATH_INFO") != "/metrics" or environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"Only /metrics here.\n"]
    body = metrics.current().exposition()
    start_response("200 OK", [("Content-Type", metrics.CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
    return [body]


def serve(host: str, port: int):
    """Start serving in a daemon thread; returns the server (``shutdown()`` stops it)."""
    from web.server import WebServer

    # No line per scrape: a worker's port is read by the proxy's parent every 5 s (cli/workers.py), a
    # Prometheus server's every 15 s or so; those lines were most of the proxy's log.
    server = WebServer(host or "127.0.0.1", port, _app, access_log=False)
    threading.Thread(target=server.serve_forever, name="aispendtrack-metrics", daemon=True).start()
    return server

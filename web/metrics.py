"""``/metrics`` on the web port: this process's metrics in the Prometheus text format, to admins.

In ``aispendtrack proxy --web-port`` that is the proxy's own metrics (addon/core/metrics.py). A
separate ``aispendtrack web`` process records no calls: scrape the proxy (``--metrics-port``, or
its ``--web-port``) for them. Labels name models, keys and customers, hence an admin token
(Prometheus: ``authorization: {credentials: ...}``); ``--metrics-port`` serves them without one, on
the proxy's own address.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from addon.core import metrics as proxy_metrics

from .api import current_principal

metrics = Blueprint("metrics", __name__)


@metrics.get("/metrics")
def exposition():
    principal = current_principal()
    if principal is None or not principal.is_admin:
        return jsonify(error={"code": "unauthorized", "message": "Send `Authorization: Bearer` with an admin "
                                                                 "token from `aispendtrack admin create-token`."}), 401
    try:
        body = proxy_metrics.current().exposition()
    except OSError as exc:  # under --workers N: the parent, which merges the workers' metrics, is stopping
        return jsonify(error={"code": "metrics_unavailable",
                              "message": f"The proxy's metrics cannot be read now ({exc}); try again."}), 503
    return Response(body, content_type=proxy_metrics.CONTENT_TYPE_LATEST)

"""What every response of the web app carries, and what every state-changing request must show.

- A POST from another site's page is refused (its ``Origin`` is not ours), whatever cookie it has.
- Pages and API answers forbid framing, sniffing and foreign scripts (CSP), and are not cached.
- The session cookie is ``Secure`` whenever the request came over TLS.
"""

from __future__ import annotations

from flask import Flask, jsonify, request
from flask.sessions import SecureCookieSessionInterface

HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # no-referrer would make browsers send `Origin: null` on our own forms
    "Cache-Control": "no-store",
}


class _SessionInterface(SecureCookieSessionInterface):
    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


def install(app: Flask) -> None:
    app.session_interface = _SessionInterface()

    @app.before_request
    def _same_origin():
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return None
        origin = request.headers.get("Origin")
        if origin is not None and origin.rstrip("/") != request.host_url.rstrip("/"):
            return jsonify(error={"code": "forbidden", "message": f"Requests from {origin[:100]} are not accepted; "
                                                                  f"use this site's own page or the API."}), 403
        return None

    @app.after_request
    def _headers(response):
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.errorhandler(400)
    def _bad_request(exc):
        return jsonify(error={"code": "bad_request", "message": exc.description}), 400

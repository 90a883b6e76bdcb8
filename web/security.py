"""What every response of the web app carries, and what every state-changing request must show.

- A POST from another site's page is refused (its ``Origin`` is not ours), whatever cookie it has.
- Pages and API answers forbid framing, sniffing and foreign scripts (CSP), and are not cached.
- The session cookie is ``Secure`` whenever the request came over TLS: to this port, or to a
  TLS-terminating proxy in front of it that is trusted (``--trusted-proxy``) and says so in
  ``X-Forwarded-Proto``. From any other peer that header is ignored: a client could send it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from flask import Flask, jsonify, request
from flask.sessions import SecureCookieSessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

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


def trusted_networks(addresses: Iterable[str]) -> list[Network]:
    """``--trusted-proxy`` values (an address or a network, e.g. 10.0.0.5 or 10.0.0.0/24); ValueError
    names a bad one."""
    networks = []
    for address in addresses:
        try:
            networks.append(ipaddress.ip_network(address.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{address!r} is not an IP address or network (e.g. 10.0.0.5 or 10.0.0.0/24).") \
                from None
    return networks


def _forwarded_scheme(app: Flask, networks: list[Network]) -> None:
    """From a trusted proxy, the scheme it forwards (X-Forwarded-Proto, one proxy deep) becomes the
    request's; from anyone else, forwarding headers are dropped before the app sees them."""
    direct, forwarded = app.wsgi_app, ProxyFix(app.wsgi_app, x_for=0, x_proto=1, x_host=0, x_port=0, x_prefix=0)

    def wsgi_app(environ, start_response):
        if _is_trusted(environ.get("REMOTE_ADDR", ""), networks):
            return forwarded(environ, start_response)
        for name in [n for n in environ if n.startswith("HTTP_X_FORWARDED_") or n == "HTTP_FORWARDED"]:
            del environ[name]
        return direct(environ, start_response)
    app.wsgi_app = wsgi_app  # type: ignore[method-assign]


def _is_trusted(peer: str, networks: list[Network]) -> bool:
    try:
        return any(ipaddress.ip_address(peer) in network for network in networks)
    except ValueError:  # no address (a unix socket): nobody to trust
        return False


def install(app: Flask) -> None:
    app.session_interface = _SessionInterface()
    _forwarded_scheme(app, app.config.get("TRUSTED_PROXIES", []))

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

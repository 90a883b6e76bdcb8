"""The Flask app: the report page (``/``) and the JSON API (``/api/v1``) over the CLI's queries.

    aispendtrack web --port 8081                   # or: aispendtrack proxy --web-port 8081
    curl -H "Authorization: Bearer ask_..." "http://127.0.0.1:8081/api/v1/report?by=model&since=7d"
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from flask import Flask, jsonify, request
from flask.json.provider import DefaultJSONProvider

from addon.core import home as home_dir
from addon.core import serialize, spool, store

from . import (
    privacy,  # noqa: F401  (adds the purge and GDPR routes to the API)
    security,
)
from .api import api
from .auth import session_secret
from .metrics import metrics
from .openapi import openapi
from .pages import pages
from .sso import sign_on
from .sso_settings import load as load_sso

# Every request body here is a small form or JSON object: anything larger is a 413.
MAX_BODY = 64 * 1024


class JSONProvider(DefaultJSONProvider):
    """Every API answer in the CLI's JSON dialect (addon/core/serialize.py)."""

    def dumps(self, obj, **kwargs) -> str:
        return serialize.dumps(obj)


def create_app(home: str | Path | None = None, test_config: dict | None = None,
               trusted_proxies: Sequence[str] = ()) -> Flask:
    """``trusted_proxies``: addresses whose X-Forwarded-Proto is believed (web/security.py)."""
    app = Flask(__name__)
    app.json = JSONProvider(app)
    app.config["AISPENDTRACK_HOME"] = home_dir.resolve(home)
    spool.remove_leftovers(app.config["AISPENDTRACK_HOME"])
    app.config["TRUSTED_PROXIES"] = security.trusted_networks(trusted_proxies)
    app.config.update(SECRET_KEY=session_secret(app.config["AISPENDTRACK_HOME"]), SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Strict", SESSION_COOKIE_NAME="aispendtrack_session",
                      MAX_CONTENT_LENGTH=MAX_BODY,
                      # No CORS here: Flask's own OPTIONS answer was an empty HTML 200, where every API
                      # answer is JSON; an OPTIONS gets the 405 of any other method not taken.
                      PROVIDE_AUTOMATIC_OPTIONS=False)
    app.config["SSO"] = load_sso(app.config["AISPENDTRACK_HOME"])  # None: no sso.toml, keys and tokens only
    if test_config:
        app.config.update(test_config)
    security.install(app)
    app.register_blueprint(api)
    app.register_blueprint(pages)
    app.register_blueprint(sign_on)
    app.register_blueprint(metrics)
    app.register_blueprint(openapi)

    @app.before_request
    def _name_the_reader():  # named in the proxy's log line if its writer waits for this request
        store.doing(f"web app ({request.method} {request.path[:100]})")

    @app.teardown_request
    def _done(_):
        store.doing(None)

    @app.errorhandler(404)
    def not_found(_):
        return jsonify(error={"code": "not_found", "message": "No such endpoint; see docs/api.md."}), 404

    @app.errorhandler(405)
    def wrong_method(_):
        return jsonify(error={"code": "method_not_allowed",
                              "message": "Wrong method for this endpoint; see docs/api.md."}), 405

    @app.errorhandler(413)
    def too_large(_):
        return jsonify(error={"code": "too_large", "message": f"The body is over {MAX_BODY // 1024} KiB; no "
                                                              f"endpoint takes one that big."}), 413

    @app.errorhandler(500)
    def failed(_):  # Flask logged the exception; the caller gets JSON, as from every other error
        return jsonify(error={"code": "internal_error",
                              "message": "The request failed on the server; the server's log says why."}), 500

    return app

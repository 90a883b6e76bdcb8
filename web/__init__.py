"""The Flask app: the JSON API (``/api/v1``) over the same queries as the CLI.

    aispendtrack web --port 8081                   # or: aispendtrack proxy --web-port 8081
    curl -H "Authorization: Bearer ask_..." "http://127.0.0.1:8081/api/v1/report?by=model&since=7d"
"""

from __future__ import annotations

from pathlib import Path

from flask import Flask, jsonify

from addon import home as home_dir

from .api import api


def create_app(home: str | Path | None = None, test_config: dict | None = None) -> Flask:
    app = Flask(__name__)
    app.config["AISPENDTRACK_HOME"] = home_dir.resolve(home)
    app.config["JSON_SORT_KEYS"] = False
    if test_config:
        app.config.update(test_config)
    app.register_blueprint(api)

    @app.errorhandler(404)
    def not_found(_):
        return jsonify(error={"code": "not_found", "message": "No such endpoint; see docs/api.md."}), 404

    @app.errorhandler(405)
    def wrong_method(_):
        return jsonify(error={"code": "method_not_allowed", "message": "This endpoint only answers GET."}), 405

    return app

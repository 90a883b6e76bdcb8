"""``/api/v1/openapi.json``: a valid OpenAPI 3.1 document that describes what the API really answers.

Every endpoint is called over HTTP on the real web server, with data from a real store, and each
answer (successes and errors) is validated against the schema the document gives for its status.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from decimal import Decimal

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from addon.core import home as home_dir
from addon.core import reconcile
from addon.core.store import reconciliations, synthetic, writing
from web import create_app
from web.server import WebServer

from .helpers import run_cli


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    home = tmp_path_factory.mktemp("openapi") / "home"
    home.mkdir()
    now = dt.datetime.now(dt.UTC)
    with writing(home_dir.db_path(home)) as con:
        synthetic.generate(con, 2_000, end=now, days=5, customers=20)
        day = now.replace(hour=0, minute=0, second=0, microsecond=0) - dt.timedelta(days=1)
        ours = [{"bucket": day, "model": "gpt-4o", "requests": 2, "input_tokens": 100, "output_tokens": 10,
                 "cost_usd": Decimal("0.0011")}]
        theirs = [{"bucket": day, "model": "gpt-4o", "requests": 3, "input_tokens": 150, "output_tokens": 15}]
        lines = reconcile.compare(ours, theirs, lambda *_: Decimal("0.0016"), dt.timedelta(days=1), now)
        reconciliations.record(con, "openai", day.replace(day=1), day + dt.timedelta(days=1), now,
                               reconcile.total(lines), lines)
    run_cli(home, "budgets", "set", "--scope", "customer:cust-1", "--all-keys", "--daily", "5", "--block")
    admin = json.loads(run_cli(home, "admin", "create-token", "--json"))["token"]
    key = json.loads(run_cli(home, "keys", "create", "--name", "api", "--json"))["key"]
    server = WebServer("127.0.0.1", 0, create_app(home))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"url": f"http://127.0.0.1:{server.server_port}", "admin": admin, "key": key, "app": create_app(home)}
    server.shutdown()


def test_the_document_is_valid_openapi_3_1_and_covers_every_route(site):
    response = httpx.get(site["url"] + "/api/v1/openapi.json")  # no credential needed
    assert response.status_code == 200
    spec = response.json()
    validate(spec)  # raises on anything that is not OpenAPI 3.1
    assert spec["openapi"].startswith("3.1")
    documented = {(method.upper(), "/api/v1" + path) for path, item in spec["paths"].items() for method in item}
    routes = {(method, rule.rule) for rule in site["app"].url_map.iter_rules() if rule.rule.startswith("/api/v1/")
              and rule.rule != "/api/v1/openapi.json" for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert routes == documented, routes ^ documented


CASES = [  # (method, path, params or JSON body, who, expected status)
    ("GET", "/report", {"by": ["model"]}, "admin", 200),
    ("GET", "/report", {"by": ["day", "customer"], "limit": 3, "tz": "America/Los_Angeles"}, "admin", 200),
    ("GET", "/report", {"by": ["key", "month"], "since": "30d"}, "admin", 200),
    ("GET", "/report", {"by": ["provider", "hour"], "since": "1d"}, "key", 200),
    ("GET", "/report", {"by": ["feature"], "since": "999999w"}, "admin", 400),
    ("GET", "/report", {"by": ["nope"]}, "admin", 400),
    ("GET", "/report/total", {"customer": "cust-1"}, "admin", 200),
    ("GET", "/report/total", {}, None, 401),
    ("GET", "/calls", {"limit": 5}, "admin", 200),
    ("GET", "/calls", {"key": 999}, "key", 403),
    ("GET", "/calls", {"cursor": "not-ours"}, "admin", 400),
    ("GET", "/budgets", {}, "admin", 200),
    ("GET", "/reconciliation", {}, "admin", 200),
    ("GET", "/reconciliation", {}, "key", 403),
    ("GET", "/gdpr/export", {"customer": "cust-3"}, "admin", 200),
    ("POST", "/purge", {"dry_run": True}, "admin", 200),
    ("POST", "/purge", {"older_than_days": 0}, "admin", 400),
    ("POST", "/gdpr/delete", {"customer": "cust-4"}, "admin", 200),
]


@pytest.mark.parametrize("method, path, params, who, status", CASES)
def test_every_answer_matches_its_schema(site, method, path, params, who, status):
    spec = httpx.get(site["url"] + "/api/v1/openapi.json").json()
    headers = {"Authorization": f"Bearer {site[who]}"} if who else {}
    url = site["url"] + "/api/v1" + path
    response = (httpx.get(url, params=params, headers=headers, timeout=30) if method == "GET"
                else httpx.post(url, json=params, headers=headers, timeout=30))
    assert response.status_code == status, response.text
    operation = spec["paths"][path][method.lower()]
    [(media, content)] = operation["responses"][str(status)]["content"].items()
    assert response.headers["content-type"].split(";")[0] == media
    body = response.json()
    if isinstance(body, list):
        assert body, f"{path} answered an empty list: nothing was checked"
    validator = Draft202012Validator({**content["schema"], "components": spec["components"]})
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]
    assert not errors, errors[:5]
    durations = re.findall(r'"[a-z0-9_]+_ms": ?(-?[0-9.]+)', response.text)
    assert all(len(d.partition(".")[2]) <= 3 for d in durations), durations  # no 79.27669999999999


def test_exports_have_the_documented_media_types(site):
    spec = httpx.get(site["url"] + "/api/v1/openapi.json").json()
    media = spec["paths"]["/export"]["get"]["responses"]["200"]["content"]
    for fmt in spec["paths"]["/export"]["get"]["parameters"][-1]["schema"]["enum"]:
        response = httpx.get(site["url"] + "/api/v1/export", params={"format": fmt, "since": "1d"},
                             headers={"Authorization": f"Bearer {site['admin']}"}, timeout=30)
        assert response.status_code == 200 and response.headers["content-type"].split(";")[0] in media

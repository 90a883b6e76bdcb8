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
    run_cli(home, "budgets", "set", "--scope", "all", "--monthly", "1000")  # shown to keys too, without spend
    admin = json.loads(run_cli(home, "admin", "create-token", "--json"))["token"]
    run_cli(home, "teams", "create", "site-team")
    key = json.loads(run_cli(home, "keys", "create", "--name", "api", "--team", "site-team", "--json"))["key"]
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
    ("GET", "/budgets", {}, "key", 200),
    ("GET", "/reconciliation", {}, "admin", 200),
    ("GET", "/reconciliation", {}, "key", 403),
    ("GET", "/prices", {}, "admin", 200),
    ("GET", "/prices", {}, "key", 403),
    ("GET", "/report", {"by": ["team", "day"], "team": "site-team"}, "admin", 200),
    ("GET", "/report", {"team": "no-such-team"}, "admin", 400),
    ("GET", "/audit", {"since": "7d"}, "admin", 200),
    ("GET", "/audit", {}, "key", 403),
    ("GET", "/gdpr/export", {"customer": "cust-3"}, "admin", 200),
    ("POST", "/purge", {"dry_run": True}, "admin", 200),
    ("POST", "/purge", {"older_than_days": 0}, "admin", 400),
    ("POST", "/gdpr/delete", {"customer": "cust-4"}, "admin", 200),
    ("POST", "/gdpr/delete", {"key": 99999}, "admin", 200),  # its subject a number, as asked (was a string)
    ("GET", "/export", {"format": "json", "since": "30d"}, "admin", 200),  # an array (was declared a string)
    ("POST", "/report", {}, "admin", 405),  # the other errors: "default", the same body
    ("GET", "/purge", {}, "admin", 405),
    ("OPTIONS", "/report", {}, "admin", 405),  # Flask's own answer was an empty text/html 200
]


@pytest.mark.parametrize("method, path, params, who, status", CASES)
def test_every_answer_matches_its_schema(site, method, path, params, who, status):
    spec = httpx.get(site["url"] + "/api/v1/openapi.json").json()
    headers = {"Authorization": f"Bearer {site[who]}"} if who else {}
    url = site["url"] + "/api/v1" + path
    response = (httpx.get(url, params=params, headers=headers, timeout=30) if method == "GET"
                else httpx.post(url, json=params, headers=headers, timeout=30) if method == "POST"
                else httpx.request(method, url, headers=headers, timeout=30))
    assert response.status_code == status, response.text
    documented = spec["paths"][path].get(method.lower()) or next(iter(spec["paths"][path].values()))
    responses = documented["responses"]
    media = response.headers["content-type"].split(";")[0]
    content = (responses.get(str(status)) or responses["default"])["content"][media]
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


# Values a client may send by mistake or on purpose: dates whose offset carries them past the years
# a datetime can hold, huge, fractional, negative and boolean numbers, lists, objects, nulls, noise.
HOSTILE_QUERY = ["1e9", "-1", "1.5", "true", "null", "[1]", "\x00", "9" * 40, "../../etc/passwd", "x" * 5000]
HOSTILE_DATES = ["0001-01-01T00:00+14:00", "9999-12-31T23:59:59-23:59", "0001-01-01", "999999w", "9999-12-31T23:30"]
HOSTILE_JSON = [1e9, 10**9, 10**30, -1, 0, 1.5, True, False, None, "30", "", [1], [], {"a": 1}, "\x00"]
HOSTILE_BODIES = [b"[]", b"[1, 2]", b'"purge"', b"null", b"1e9", b"true", b"{", b"{\"dry_run\": tru}", b"\xff\xfe"]
# Forced on a second parameter, so the extreme dates are read in a zone that moves them too.
ZONES = {"tz": "Asia/Tokyo"}  # before 1888: local mean time, +09:18:59


def _params(spec: dict, operation: dict) -> list[tuple[str, dict]]:
    return [(p["name"], p["schema"]) for p in operation.get("parameters", [])]


def _fits(value: object, schema: dict, spec: dict) -> bool:
    return Draft202012Validator({**schema, "components": spec["components"]}).is_valid(value)


def _problem(response: httpx.Response, spec: dict, what: str, must_refuse: bool) -> str | None:
    """What is wrong with one answer to a hostile request, or None."""
    media = response.headers["content-type"].split(";")[0]
    if response.status_code >= 500 or media == "text/html":
        return f"{what}: {response.status_code} {media} {response.text[:120]!r}"
    if must_refuse and response.status_code != 400:
        return f"{what}: {response.status_code} instead of 400"
    if response.status_code != 200:
        validator = Draft202012Validator({**spec["components"]["schemas"]["Error"], "components": spec["components"]})
        if media != "application/json" or not validator.is_valid(response.json()):
            return f"{what}: {response.status_code} not the API's JSON error: {response.text[:120]!r}"
    return None


def _walk(client: httpx.Client, spec: dict) -> tuple[int, list[str]]:
    """Every parameter and body field of every endpoint, with every hostile value."""
    checked, problems = 0, []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "get":
                for name, schema in _params(spec, operation):
                    for value in HOSTILE_QUERY + (HOSTILE_DATES if name in ("since", "until") else []):
                        response = client.get(path, params={**ZONES, name: value})
                        typed = schema.get("type") in ("integer", "array") or "enum" in schema
                        must_refuse = (typed and not _fits(_as_number(value), schema, spec)
                                       or value in HOSTILE_DATES[:-1])
                        problems.append(_problem(response, spec, f"GET {path}?{name}={value[:30]!r}", must_refuse))
                        checked += 1
                continue
            body_schema = operation["requestBody"]["content"]["application/json"]["schema"]
            if "$ref" in body_schema:
                body_schema = spec["components"]["schemas"][body_schema["$ref"].rsplit("/", 1)[1]]
            for name, schema in body_schema["properties"].items():
                for value in HOSTILE_JSON:
                    body = {"dry_run": True, name: value} if path == "/purge" else {name: value}
                    response = client.post(path, json=body)
                    must_refuse = not _fits(value, schema, spec) or name == "older_than_days" and value == 10**9
                    problems.append(_problem(response, spec, f"POST {path} {body!r}", must_refuse))
                    checked += 1
            for raw in HOSTILE_BODIES:
                response = client.post(path, content=raw, headers={"Content-Type": "application/json"})
                problems.append(_problem(response, spec, f"POST {path} {raw!r}", must_refuse=True))
                checked += 1
    return checked, [p for p in problems if p]


def test_hostile_values_in_every_parameter_get_a_json_4xx_never_a_500_or_html(site):
    """Walks every endpoint of the OpenAPI document: each parameter and body field gets each hostile
    value; a value its schema refuses (or a time no calendar holds) is a 400 in the Error shape."""
    spec = httpx.get(site["url"] + "/api/v1/openapi.json").json()
    headers = {"Authorization": f"Bearer {site['admin']}"}
    with httpx.Client(base_url=site["url"] + "/api/v1", headers=headers, timeout=60) as client:
        checked, problems = _walk(client, spec)
    assert checked > 300  # every endpoint was walked
    assert not problems, f"{len(problems)} of {checked}:\n" + "\n".join(problems)


def _as_number(value: str) -> object:
    """How a query string would read as JSON, for checking it against an integer schema."""
    try:
        return json.loads(value)
    except ValueError:
        return value

"""Fakes of the providers' organisation usage APIs, at the wire (docs/reconciliation.md).

A real HTTP server on 127.0.0.1 answering OpenAI's ``/v1/organization/usage/{completions,
embeddings}`` and ``/costs``, Anthropic's Usage and Cost Analytics API (``/v1/organizations/
analytics/{usage,cost}``, beta header required, at most 31 days a request, rows paged) and its
legacy ``usage_report/messages`` and ``cost_report``, with the documented field names, buckets and
paging (``has_more`` / ``next_page``), from a ledger of billed calls:
what a provider knows it served. ``billed_from`` builds that ledger from what the fake provider
(tests/upstream.py) actually answered, direct calls included. Faults: a wrong admin key gets 401,
``throttle`` answers the next requests 429 with ``retry-after``; ``stuck_cursor`` says ``has_more``
with the same cursor on every page, ``endless`` with a new one; ``drip_s`` writes every answer a
byte at a time; ``padding`` makes every page that much bigger; ``figures`` puts these values
into every usage result (``costs`` into every cost amount); ``echo_key`` answers that status with
an error that quotes the admin key it got, as a careless API might. It serves on a port of its
own, or through the fake provider (``FakeProvider.usage_api``), as the real APIs share the provider's host.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import payloads

ADMIN_KEY = "sk-admin-test-0123456789"
DAY = dt.timedelta(days=1)


@dataclass
class Billed:
    at: dt.datetime
    provider: str          # "openai" or "anthropic"
    model: str
    input_tokens: int      # uncached
    cached_tokens: int = 0
    cache_5m_tokens: int = 0
    cache_1h_tokens: int = 0
    output_tokens: int = 0
    web_search_requests: int = 0
    billed_usd: float = 0.0  # what the Costs API reports for it (a test sets it)


def billed_from(received) -> list[Billed]:
    """The ledger of non-streamed chat and messages calls the fake provider answered with 200."""
    ledger = []
    for r in received:
        path = r.path.split("?")[0]
        try:
            request = json.loads(r.body) if r.body else {}
        except ValueError:
            continue
        if request.get("stream") or not path.endswith(("/chat/completions", "/v1/messages")):
            continue
        reply = payloads.reply_for(path, r.headers.get("x-test-scenario", ""), request)
        if reply.status != 200:
            continue
        body = json.loads(reply.body)
        usage = body["usage"]
        at = dt.datetime.fromtimestamp(r.at, dt.UTC)
        if path.endswith("/v1/messages"):
            creation = usage.get("cache_creation") or {}
            ledger.append(Billed(at, "anthropic", body["model"], usage["input_tokens"],
                                 usage.get("cache_read_input_tokens", 0), creation.get("ephemeral_5m_input_tokens", 0),
                                 creation.get("ephemeral_1h_input_tokens", 0), usage["output_tokens"]))
        else:
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
            ledger.append(Billed(at, "openai", body["model"], usage["prompt_tokens"] - cached, cached,
                                 output_tokens=usage["completion_tokens"]))
    return ledger


class UsageApi:
    def __init__(self) -> None:
        self.ledger: list[Billed] = []
        self.page_size: int | None = None  # buckets per page; None: as asked
        self.throttle = 0                  # answer this many next requests 429
        self.malformed = 0                 # answer this many next requests with buckets lacking their times
        self.analytics_refused = False     # Anthropic's analytics API answers 400, as to HIPAA-ready orgs
        self.stuck_cursor = False          # has_more: true with the cursor just asked for, every time
        self.endless = False               # has_more: true with a new cursor, every time
        self.drip_s: float | None = None   # write each answer one byte per drip_s seconds
        self.dripping = 0                  # answers being dripped now
        self.figures: dict = {}            # values set in every usage result: {"input_tokens": 1e300}
        self.costs: object = None          # the amount of every cost result, when set
        self.echo_key: int | None = None   # answer this status, quoting the admin key in the error
        self.padding = 0                   # bytes of filler in every page (a page too big to hold)
        self.requests: list[str] = []
        self.closed = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.closed.set()  # ends any drip
        self.server.shutdown()
        self.server.server_close()

    def buckets(self, provider: str, start: dt.datetime, end: dt.datetime) -> list[tuple[dt.datetime, list]]:
        """Every UTC day in [start, end), with the ledger's entries in it (empty days included)."""
        days, day = [], start
        while day < end:
            days.append((day, [b for b in self.ledger if b.provider == provider and day <= b.at < day + DAY]))
            day += DAY
        return days


def _openai_result(model: str, entries: list[Billed]) -> dict:
    return {"object": "organization.usage.completions.result", "model": model,
            "input_tokens": sum(e.input_tokens + e.cached_tokens for e in entries),  # includes cached
            "input_cached_tokens": sum(e.cached_tokens for e in entries),
            "output_tokens": sum(e.output_tokens for e in entries), "input_audio_tokens": 0,
            "output_audio_tokens": 0, "num_model_requests": len(entries),
            "project_id": None, "user_id": None, "api_key_id": None, "batch": None}


def _openai_cost(model: str, entries: list[Billed]) -> dict:
    return {"object": "organization.costs.result", "amount": {"value": sum(e.billed_usd for e in entries),
                                                              "currency": "usd"},
            "line_item": f"{model}, input and output", "project_id": None}


def _anthropic_result(model: str, entries: list[Billed]) -> dict:
    return {"model": model, "uncached_input_tokens": sum(e.input_tokens for e in entries),
            "cache_read_input_tokens": sum(e.cached_tokens for e in entries),
            "cache_creation": {"ephemeral_5m_input_tokens": sum(e.cache_5m_tokens for e in entries),
                               "ephemeral_1h_input_tokens": sum(e.cache_1h_tokens for e in entries)},
            "output_tokens": sum(e.output_tokens for e in entries),
            "server_tool_use": {"web_search_requests": sum(e.web_search_requests for e in entries)},
            "api_key_id": None, "workspace_id": None, "service_tier": None, "context_window": None}


def _cents(entries: list[Billed]) -> str:
    """Anthropic's cost amounts: cents, as a decimal string."""
    return f"{sum(e.billed_usd for e in entries) * 100:.6f}"


def _anthropic_cost(model: str, entries: list[Billed]) -> dict:
    return {"currency": "USD", "amount": _cents(entries), "cost_type": "tokens", "description": f"{model} tokens",
            "model": model, "workspace_id": None, "service_tier": "standard", "context_window": "0-200k",
            "token_type": None, "inference_geo": None}


def _analytics_rows(days: list[tuple[dt.datetime, list]], cost: bool) -> list[dict]:
    """One row per day and model with usage (cost: per day, ungrouped), as the analytics API pages them."""
    rows = []
    for day, entries in days:
        bounds = {"starting_at": day.strftime("%Y-%m-%dT%H:%M:%SZ"),
                  "ending_at": (day + DAY).strftime("%Y-%m-%dT%H:%M:%SZ")}
        if cost and entries:
            rows.append({**bounds, "group": {"model": None, "product": None},
                         "cost": {"amount": _cents(entries), "list_amount": _cents(entries), "currency": "USD",
                                  "requests": len(entries)}})
        elif not cost:
            for model, mine in sorted(_by_model(entries).items()):
                usage = {k: v for k, v in _anthropic_result(model, mine).items() if k in _USAGE_FIELDS}
                usage["requests"] = len(mine)
                usage["total_tokens"] = sum(e.input_tokens + e.cached_tokens + e.cache_5m_tokens + e.cache_1h_tokens
                                            + e.output_tokens for e in mine)
                rows.append({**bounds, "group": {"model": model, "workspace_id": None, "api_key_id": None},
                             "usage": usage})
    return rows


_USAGE_FIELDS = ("uncached_input_tokens", "cache_read_input_tokens", "cache_creation", "output_tokens",
                 "server_tool_use")


def _by_model(entries: list[Billed]) -> dict[str, list[Billed]]:
    models: dict[str, list[Billed]] = {}
    for e in entries:
        models.setdefault(e.model, []).append(e)
    return models


def answer(api: UsageApi, handler: BaseHTTPRequestHandler) -> None:
    """Answer one GET of a usage API on ``handler`` (ours, or the fake provider's: see serve())."""
    url = urllib.parse.urlsplit(handler.path)
    query = urllib.parse.parse_qs(url.query)
    api.requests.append(handler.path)
    if api.drip_s:
        handler.wfile = _Drip(handler.wfile, api)  # type: ignore[assignment]
    if api.echo_key:
        sent = handler.headers.get("x-api-key") or handler.headers.get("authorization") or ""
        return _json(handler, api.echo_key, {"type": "error", "error": {
            "type": "invalid_request_error", "message": f"The key {sent} is not valid for this organization."}})
    if api.throttle > 0:
        api.throttle -= 1
        return _json(handler, 429, {"error": {"message": "Rate limit exceeded", "type": "rate_limit_error"}},
                     {"retry-after": "1"})
    if api.malformed > 0:
        api.malformed -= 1
        return _json(handler, 200, {"data": [{"results": [{"model": "gpt-4o"}]}], "has_more": False})
    if url.path == "/v1/organization/costs":
        if handler.headers.get("authorization") != f"Bearer {ADMIN_KEY}":
            return _json(handler, 401, {"error": {"message": "Invalid authorization header"}})
        start = dt.datetime.fromtimestamp(int(query["start_time"][0]), dt.UTC)
        end = dt.datetime.fromtimestamp(int(query["end_time"][0]), dt.UTC)
        days = api.buckets("openai", start, end)
        make = _openai_cost
        shape = lambda day: {"object": "bucket", "start_time": int(day.timestamp()),  # noqa: E731
                             "end_time": int((day + DAY).timestamp())}
    elif url.path.startswith("/v1/organization/usage/"):
        if handler.headers.get("authorization") != f"Bearer {ADMIN_KEY}":
            return _json(handler, 401, {"error": {"message": "Invalid authorization header",
                                                  "type": "invalid_request_error"}})
        start = dt.datetime.fromtimestamp(int(query["start_time"][0]), dt.UTC)
        end = dt.datetime.fromtimestamp(int(query["end_time"][0]), dt.UTC)
        days = api.buckets("openai", start, end) if url.path.endswith("/completions") else []
        make = _openai_result
        shape = lambda day: {"object": "bucket", "start_time": int(day.timestamp()),  # noqa: E731
                             "end_time": int((day + DAY).timestamp())}
    elif url.path.startswith("/v1/organizations/analytics/"):
        return _analytics(api, handler, url.path, query)
    elif url.path in ("/v1/organizations/usage_report/messages", "/v1/organizations/cost_report"):
        if handler.headers.get("x-api-key") != ADMIN_KEY or not handler.headers.get("anthropic-version"):
            return _json(handler, 401, _ANTHROPIC_401)
        start = dt.datetime.fromisoformat(query["starting_at"][0].replace("Z", "+00:00"))
        end = dt.datetime.fromisoformat(query["ending_at"][0].replace("Z", "+00:00"))
        days = api.buckets("anthropic", start, end)
        make = _anthropic_result if url.path.endswith("/messages") else _anthropic_cost
        shape = lambda day: {"starting_at": day.strftime("%Y-%m-%dT%H:%M:%SZ"),  # noqa: E731
                             "ending_at": (day + DAY).strftime("%Y-%m-%dT%H:%M:%SZ")}
    else:
        return _json(handler, 404, {"error": {"message": "not found"}})
    size = api.page_size or int(query.get("limit", ["7"])[0])
    first = _cursor(query)
    page = days[first:first + size]
    more = first + size < len(days)
    data = [{**shape(day), "results": [_faulty(api, make(m, e)) for m, e in sorted(_by_model(entries).items())]}
            for day, entries in page]
    body = {"data": data, "has_more": more, "next_page": str(first + size) if more else None}
    if len(api.requests) < 5_000 and (api.stuck_cursor or api.endless):  # bounded, should a client never stop
        body.update(has_more=True, next_page=query.get("page", ["p"])[0] if api.stuck_cursor
                    else f"p{len(api.requests)}")
    if url.path.startswith("/v1/organization/"):
        body["object"] = "page"
    if api.padding:
        body["padding"] = "x" * api.padding
    _json(handler, 200, body)


_ANTHROPIC_401 = {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}


def _analytics(api: UsageApi, handler: BaseHTTPRequestHandler, path: str, query: dict) -> None:
    """Anthropic's analytics API: flat rows, ``limit`` rows a page, at most 31 days a request."""
    if handler.headers.get("x-api-key") != ADMIN_KEY or not handler.headers.get("anthropic-version"):
        return _json(handler, 401, _ANTHROPIC_401)
    if "analytics-usage-cost-2026-08-24" not in (handler.headers.get("anthropic-beta") or "") or \
            api.analytics_refused:
        return _json(handler, 400, {"type": "error", "error": {
            "type": "invalid_request_error", "message": "This endpoint is not available to your organization."}})
    start = dt.datetime.fromisoformat(query["starting_at"][0].replace("Z", "+00:00"))
    end = dt.datetime.fromisoformat(query["ending_at"][0].replace("Z", "+00:00"))
    if end - start > 31 * DAY or query.get("time_bucket_width") != ["1d"] or path not in (
            "/v1/organizations/analytics/usage", "/v1/organizations/analytics/cost"):
        return _json(handler, 400, {"type": "error", "error": {"type": "invalid_request_error",
                                                               "message": "bad range, width or path"}})
    rows = _analytics_rows(api.buckets("anthropic", start, end), cost=path.endswith("/cost"))
    size = api.page_size or int(query.get("limit", ["20"])[0])
    first = _cursor(query)
    more = first + size < len(rows)
    _json(handler, 200, {"data": rows[first:first + size], "has_more": more,
                         "next_page": str(first + size) if more else None,
                         "data_refreshed_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")})


def _cursor(query: dict) -> int:
    """The first row of the page asked for (a cursor of the stuck or endless fault: the first)."""
    page = query.get("page", ["0"])[0]
    return int(page) if page.isdigit() else 0


def _faulty(api: UsageApi, result: dict) -> dict:
    if "amount" in result and api.costs is not None:
        return {**result, "amount": {"value": api.costs, "currency": "usd"}}
    return result if "amount" in result else {**result, **api.figures}


class _Drip:
    """An answer written one byte at a time, until it is all out or the fake closes."""

    def __init__(self, wfile, api: UsageApi) -> None:
        self.wfile, self.api = wfile, api

    def write(self, data: bytes) -> int:
        self.api.dripping += 1
        try:
            for n in range(len(data)):
                if self.api.closed.wait(self.api.drip_s):
                    raise BrokenPipeError("the fake closed")
                self.wfile.write(data[n:n + 1])
                self.wfile.flush()
        finally:
            self.api.dripping -= 1
        return len(data)

    def flush(self) -> None:
        self.wfile.flush()


def _json(handler, status: int, body: dict, headers: dict | None = None) -> None:
    raw = json.dumps(body).encode()
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(raw)))
    handler.end_headers()
    handler.wfile.write(raw)



def _handler(api: UsageApi):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            answer(api, self)

    return Handler

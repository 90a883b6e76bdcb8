"""Fakes of the providers' organisation usage APIs, at the wire (docs/reconciliation.md).

A real HTTP server on 127.0.0.1 answering OpenAI's ``/v1/organization/usage/{completions, embeddings}`` and
``/costs``, Anthropic's Usage and Cost Analytics API (``/v1/organizations/ analytics/{usage,cost}``, beta
header required, at most 31 days a request, rows paged) and its legacy ``usage_report/messages`` and
``cost_report``, with the documented field names, buckets and paging (``has_more`` / ``next_page``), from a
ledger of billed calls: what a provider knows it served. Strict as the real APIs: buckets of the
``bucket_width`` asked (``1d``, ``1h``), results grouped by exactly the ``group_by`` fields asked (the
others null), and a 400 for a parameter, ``group_by`` value, width or ``limit`` the API does not take
(``ALLOWED``). ``extra_costs`` are billed line items that are no call (fine-tuning training, storage).
``billed_from`` builds that ledger from what the fake provider (tests/upstream.py) actually answered, direct
calls included. Faults: a wrong admin key gets 401, ``throttle`` answers the next requests 429 with ``retry-
after``; ``stuck_cursor`` says ``has_more`` with the same cursor on every page, ``endless`` with a new one;
``drip_s`` writes every answer a byte at a time; ``padding`` makes every page that much bigger; ``figures``
puts these values into every usage result (``costs`` into every cost amount); ``echo_key`` answers that
status with an error that quotes the admin key it got, as a careless API might. It serves on a port of its
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
from .upstream import send_json

ADMIN_KEY = "sk-admin-test-0123456789"
DAY = dt.timedelta(days=1)
WIDTHS = {"1m": dt.timedelta(minutes=1), "1h": dt.timedelta(hours=1), "1d": DAY}
LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}  # (default, most) buckets a page
_FILTERS_OPENAI = {"start_time", "end_time", "bucket_width", "project_ids", "user_ids", "api_key_ids", "models",
                   "batch", "group_by", "limit", "page"}
_FILTERS_ANTHROPIC = {"starting_at", "ending_at", "bucket_width", "group_by[]", "limit", "page", "models[]",
                      "api_key_ids[]", "workspace_ids[]", "service_tiers[]", "context_window[]", "inference_geos[]"}
# path -> (parameters it takes, group_by values it takes, bucket widths it takes), as documented
ALLOWED = {
    "/v1/organization/usage/completions": (_FILTERS_OPENAI, {"project_id", "user_id", "api_key_id", "model", "batch",
                                                            "service_tier"}, {"1m", "1h", "1d"}),
    "/v1/organization/usage/embeddings": (_FILTERS_OPENAI - {"batch"}, {"project_id", "user_id", "api_key_id",
                                                                        "model"}, {"1m", "1h", "1d"}),
    "/v1/organization/usage/images": ((_FILTERS_OPENAI - {"batch"}) | {"sources", "sizes"},
                                      {"project_id", "user_id", "api_key_id", "model", "size", "source"},
                                      {"1m", "1h", "1d"}),
    "/v1/organization/usage/audio_speeches": (_FILTERS_OPENAI - {"batch"}, {"project_id", "user_id", "api_key_id",
                                                                            "model"}, {"1m", "1h", "1d"}),
    "/v1/organization/usage/audio_transcriptions": (_FILTERS_OPENAI - {"batch"}, {"project_id", "user_id",
                                                                                  "api_key_id", "model"},
                                                    {"1m", "1h", "1d"}),
    "/v1/organization/costs": ({"start_time", "end_time", "bucket_width", "project_ids", "group_by", "limit", "page"},
                               {"project_id", "line_item"}, {"1d"}),
    "/v1/organizations/usage_report/messages": (_FILTERS_ANTHROPIC, {"api_key_id", "workspace_id", "model",
                                                                     "service_tier", "context_window",
                                                                     "inference_geo"}, {"1m", "1h", "1d"}),
    "/v1/organizations/cost_report": ({"starting_at", "ending_at", "bucket_width", "group_by[]", "limit", "page"},
                                      {"workspace_id", "description"}, {"1d"}),
}
GROUPS = {"project_id": "project_id", "workspace_id": "project_id", "api_key_id": "api_key_id", "model": "model",
          "line_item": "line_item", "description": "line_item", "cost_type": "cost_type", "batch": "batch",
          "service_tier": "service_tier", "size": "size", "inference_geo": "inference_geo"}  # wire name -> Billed field


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
    api_key_id: str = "key_0001"   # the provider key it was made with (its id, as the usage API names it)
    project_id: str = "proj_0001"  # OpenAI's project, Anthropic's workspace
    line_item: str = ""            # its cost line item; "" : "<model>, input and output"
    cost_type: str = "tokens"      # Anthropic's analytics cost type: tokens, web_search, code_execution
    usage: str = "completions"     # OpenAI's usage endpoint that counts it: completions, images, audio_speeches, ...
    images: int = 0
    seconds: int = 0               # of audio transcribed
    characters: int = 0            # of text spoken
    size: str | None = None        # of the images
    batch: bool = False            # run by the batch API (OpenAI's ``batch`` group)
    service_tier: str = "standard"  # Anthropic's: "batch" for Message Batches
    inference_geo: str = "not_available"  # Anthropic's: "us" or "global" from Claude Opus 4.6 on

    def __post_init__(self) -> None:
        self.line_item = self.line_item or f"{self.model}, input and output"


def billed_from(received, keys: dict[str, tuple[str, str]] | None = None, batches=None) -> list[Billed]:
    """The ledger of non-streamed chat and messages calls the fake provider answered with 200, its
    images, transcriptions and speech (tests/media_upstream.py), and the requests of the ``batches``
    (a tests.batch_api.BatchApi) that ended. ``keys``: the provider key each call was made with (its
    ``authorization`` / ``x-api-key`` header) -> (its id, its project or workspace), as the
    provider's books name it."""
    ledger = [*_batch_ledger(batches, keys or {})] if batches is not None else []
    for r in received:
        path = r.path.split("?")[0]
        if path in _MEDIA:
            ledger.append(_MEDIA[path](r, _key_of(r, keys)))
            continue
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
        key = _key_of(r, keys)
        if path.endswith("/v1/messages"):
            creation = usage.get("cache_creation") or {}
            ledger.append(Billed(at, "anthropic", body["model"], usage["input_tokens"],
                                 usage.get("cache_read_input_tokens", 0), creation.get("ephemeral_5m_input_tokens", 0),
                                 creation.get("ephemeral_1h_input_tokens", 0), usage["output_tokens"],
                                 inference_geo=usage.get("inference_geo", "not_available"), **key))
        else:
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
            ledger.append(Billed(at, "openai", body["model"], usage["prompt_tokens"] - cached, cached,
                                 output_tokens=usage["completion_tokens"], **key))
    return ledger


def _key_of(request, keys: dict[str, tuple[str, str]] | None) -> dict[str, str]:
    secret = (request.headers.get("authorization") or "").removeprefix("Bearer ") or \
        request.headers.get("x-api-key") or ""
    return _key_named(secret, keys)


def _key_named(secret: str, keys: dict[str, tuple[str, str]] | None) -> dict[str, str]:
    return dict(zip(("api_key_id", "project_id"), (keys or {}).get(secret, ("key_0001", "proj_0001")), strict=True))


def _image(r, key: dict) -> Billed:
    request = json.loads(r.body)
    return Billed(dt.datetime.fromtimestamp(r.at, dt.UTC), "openai", request["model"], 0, usage="images",
                  images=int(request.get("n") or 1), size=request.get("size") or "1024x1024", **key)


def _transcript(r, key: dict) -> Billed:
    from . import media_upstream
    fields = media_upstream.form(r.body, r.headers["content-type"])
    seconds = round(media_upstream.wav_duration(fields["file"][1]))  # type: ignore[index]
    return Billed(dt.datetime.fromtimestamp(r.at, dt.UTC), "openai", fields["model"].decode(), 0,  # type: ignore[union-attr]
                  usage="audio_transcriptions", seconds=seconds, **key)


def _speech(r, key: dict) -> Billed:
    request = json.loads(r.body)
    return Billed(dt.datetime.fromtimestamp(r.at, dt.UTC), "openai", request["model"], 0, usage="audio_speeches",
                  characters=len(request["input"]), **key)


_MEDIA = {"/v1/images/generations": _image, "/v1/audio/transcriptions": _transcript, "/v1/audio/speech": _speech}


def _batch_ledger(api, keys: dict[str, tuple[str, str]]):
    """Each request of each batch that ended, billed to the key that created the batch (failed ones: nothing)."""
    from .batch_api import anthropic_usage, openai_usage
    for batch in api.batches.values():
        if batch.retrieved < api.polls_until_done:
            continue
        at, key = dt.datetime.fromtimestamp(batch.created_at, dt.UTC), _key_named(batch.api_key, keys)
        for n, request in enumerate(batch.requests):
            if batch.provider == "openai":
                usage = openai_usage(n)
                yield Billed(at, "openai", request["body"]["model"] + "-2024-07-18", usage["prompt_tokens"],
                             output_tokens=usage["completion_tokens"], batch=True, **key)
            elif n < len(batch.requests) - 1:  # the fake's last request of a Message Batch fails: not billed
                usage = anthropic_usage(n, request["custom_id"].startswith("long-"))
                yield Billed(at, "anthropic", request["params"]["model"], usage["input_tokens"],
                             output_tokens=usage["output_tokens"], service_tier="batch",
                             inference_geo=request["params"].get("inference_geo", "not_available"), **key)


class UsageApi:
    def __init__(self) -> None:
        self.ledger: list[Billed] = []
        self.page_size: int | None = None  # buckets per page; None: as asked
        self.throttle = 0                  # answer this many next requests 429
        self.malformed = 0                 # answer this many next requests with buckets lacking their times
        self.odd_pages: list[object] = []  # answer the next requests with these bodies, status 200, in order
        self.analytics_refused = False     # Anthropic's analytics API answers 400, as to HIPAA-ready orgs
        self.stuck_cursor = False          # has_more: true with the cursor just asked for, every time
        self.endless = False               # has_more: true with a new cursor, every time
        self.drip_s: float | None = None   # write each answer one byte per drip_s seconds
        self.dripping = 0                  # answers being dripped now
        self.figures: dict = {}            # values set in every usage result: {"input_tokens": 1e300}
        self.costs: object = None          # the amount of every cost result, when set
        self.echo_key: int | None = None   # answer this status, quoting the admin key in the error
        self.padding = 0                   # bytes of filler in every page (a page too big to hold)
        self.extra_costs: list[Billed] = []  # billed line items that are no call: training, storage
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

    def buckets(self, provider: str, start: dt.datetime, end: dt.datetime, width: dt.timedelta = DAY,
                costs: bool = False, usage: str | None = None) -> list[tuple[dt.datetime, list]]:
        """Every bucket of ``width`` in [start, end), with the ledger's entries in it (empty ones
        included); ``costs``: the extra cost line items too; ``usage``: only those that OpenAI usage
        endpoint counts."""
        entries = [b for b in (*self.ledger, *(self.extra_costs if costs else []))
                   if b.provider == provider and usage in (None, b.usage)]
        found, at = [], start
        while at < end:
            found.append((at, [b for b in entries if at <= b.at < at + width]))
            at += width
        return found


def _grouped(entries: list[Billed], fields: list[str]) -> list[tuple[dict, list[Billed]]]:
    """``entries`` per value of the wire ``fields`` asked for (one group of all when none is)."""
    groups: dict[tuple, list[Billed]] = {}
    for e in entries:
        groups.setdefault(tuple(getattr(e, GROUPS[f]) for f in fields), []).append(e)
    return [(dict(zip(fields, key, strict=True)), mine) for key, mine in sorted(groups.items())]


def _openai_result(group: dict, entries: list[Billed]) -> dict:
    return {"object": "organization.usage.completions.result",
            "input_tokens": sum(e.input_tokens + e.cached_tokens for e in entries),  # includes cached
            "input_cached_tokens": sum(e.cached_tokens for e in entries),
            "output_tokens": sum(e.output_tokens for e in entries), "input_audio_tokens": 0,
            "output_audio_tokens": 0, "num_model_requests": len(entries),
            "model": group.get("model"), "project_id": group.get("project_id"), "user_id": None,
            "api_key_id": group.get("api_key_id"), "batch": group.get("batch"), "service_tier": None}


def _openai_units(kind: str, unit: str, field: str):
    """A result of OpenAI's images or audio usage: requests and ``unit`` (what ``field`` of Billed counts)."""
    def result(group: dict, entries: list[Billed]) -> dict:
        return {"object": f"organization.usage.{kind}.result", unit: sum(getattr(e, field) for e in entries),
                "num_model_requests": len(entries), "model": group.get("model"),
                "project_id": group.get("project_id"), "user_id": None, "api_key_id": group.get("api_key_id"),
                **({"size": group.get("size"), "source": None} if kind == "images" else {})}
    return result


_OPENAI_RESULTS = {"completions": _openai_result, "embeddings": _openai_result,
                   "images": _openai_units("images", "images", "images"),
                   "audio_speeches": _openai_units("audio_speeches", "characters", "characters"),
                   "audio_transcriptions": _openai_units("audio_transcriptions", "seconds", "seconds")}


def _openai_cost(group: dict, entries: list[Billed]) -> dict:
    return {"object": "organization.costs.result", "amount": {"value": sum(e.billed_usd for e in entries),
                                                              "currency": "usd"},
            "line_item": group.get("line_item"), "project_id": group.get("project_id")}


def _anthropic_result(group: dict, entries: list[Billed]) -> dict:
    return {"uncached_input_tokens": sum(e.input_tokens for e in entries),
            "cache_read_input_tokens": sum(e.cached_tokens for e in entries),
            "cache_creation": {"ephemeral_5m_input_tokens": sum(e.cache_5m_tokens for e in entries),
                               "ephemeral_1h_input_tokens": sum(e.cache_1h_tokens for e in entries)},
            "output_tokens": sum(e.output_tokens for e in entries),
            "server_tool_use": {"web_search_requests": sum(e.web_search_requests for e in entries)},
            "model": group.get("model"), "api_key_id": group.get("api_key_id"),
            "workspace_id": group.get("workspace_id"), "service_tier": group.get("service_tier"),
            "context_window": None, "inference_geo": group.get("inference_geo")}


def _cents(entries: list[Billed]) -> str:
    """Anthropic's cost amounts: cents, as a decimal string."""
    return f"{sum(e.billed_usd for e in entries) * 100:.6f}"


def _anthropic_cost(group: dict, entries: list[Billed]) -> dict:
    described = "description" in group
    return {"currency": "USD", "amount": _cents(entries), "description": group.get("description"),
            "cost_type": "tokens" if described else None, "model": entries[0].model if described else None,
            "workspace_id": group.get("workspace_id"), "service_tier": "standard" if described else None,
            "context_window": "0-200k" if described else None, "token_type": None, "inference_geo": None}


def _refused(path: str, query: dict, width: str) -> str | None:
    """Why the real API would answer 400 to this query, if it would."""
    params, values, widths = ALLOWED[path]
    unknown = sorted(set(query) - params)
    if unknown:
        return f"unknown parameter: {unknown[0]}"
    group = query.get("group_by", []) + query.get("group_by[]", [])
    if any(g not in values for g in group):
        return f"invalid group_by value: {[g for g in group if g not in values][0]}"
    if width not in widths:
        return f"invalid bucket_width: {width}"
    most = 180 if path.endswith("/costs") else LIMITS[width][1]
    if not 1 <= int(query.get("limit", ["1"])[0]) <= most:
        return f"limit must be from 1 to {most}"
    return None


def _analytics_rows(buckets: list[tuple[dt.datetime, list]], width: dt.timedelta, cost: bool,
                    group: list[str]) -> list[dict]:
    """One row per bucket and group with usage (cost: per bucket, ungrouped), as the analytics API pages them."""
    rows = []
    for at, entries in buckets:
        bounds = {"starting_at": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                  "ending_at": (at + width).strftime("%Y-%m-%dT%H:%M:%SZ")}
        if cost:
            for values, mine in _grouped(entries, group):
                rows.append({**bounds, "group": {"model": None, "product": None, **values},
                             "cost": {"amount": _cents(mine), "list_amount": _cents(mine), "currency": "USD",
                                      # null when grouped by cost_type, as documented
                                      "requests": None if "cost_type" in values else len(mine)}})
        elif not cost:
            for values, mine in _grouped(entries, group):
                usage = {k: v for k, v in _anthropic_result(values, mine).items() if k in _USAGE_FIELDS}
                usage["requests"] = len(mine)
                usage["total_tokens"] = sum(e.input_tokens + e.cached_tokens + e.cache_5m_tokens + e.cache_1h_tokens
                                            + e.output_tokens for e in mine)
                rows.append({**bounds, "group": {"model": None, "workspace_id": None, "api_key_id": None, **values},
                             "usage": usage})
    return rows


_USAGE_FIELDS = ("uncached_input_tokens", "cache_read_input_tokens", "cache_creation", "output_tokens",
                 "server_tool_use")
_ANALYTICS_GROUPS = {"/v1/organizations/analytics/usage": {"model", "api_key_id", "workspace_id", "service_tier",
                                                           "context_window", "inference_geo", "product", "actor"},
                     "/v1/organizations/analytics/cost": {"model", "api_key_id", "workspace_id", "service_tier",
                                                          "context_window", "inference_geo", "product", "cost_type",
                                                          "token_type"}}


def answer(api: UsageApi, handler: BaseHTTPRequestHandler) -> None:
    """Answer one GET of a usage API on ``handler`` (ours, or the fake provider's: see serve())."""
    url = urllib.parse.urlsplit(handler.path)
    query = urllib.parse.parse_qs(url.query)
    api.requests.append(handler.path)
    if api.drip_s:
        handler.wfile = _Drip(handler.wfile, api)  # type: ignore[assignment]
    if api.echo_key:
        sent = handler.headers.get("x-api-key") or handler.headers.get("authorization") or ""
        return send_json(handler, api.echo_key, {"type": "error", "error": {
            "type": "invalid_request_error", "message": f"The key {sent} is not valid for this organization."}})
    if api.throttle > 0:
        api.throttle -= 1
        return send_json(handler, 429, {"error": {"message": "Rate limit exceeded", "type": "rate_limit_error"}},
                     {"retry-after": "1"})
    if api.odd_pages:
        return send_json(handler, 200, api.odd_pages.pop(0))
    if api.malformed > 0:
        api.malformed -= 1
        return send_json(handler, 200, {"data": [{"results": [{"model": "gpt-4o"}]}], "has_more": False})
    if url.path.startswith("/v1/organizations/analytics/"):
        return _analytics(api, handler, url.path, query)
    if url.path not in ALLOWED:
        return send_json(handler, 404, {"error": {"message": "not found"}})
    openai = url.path.startswith("/v1/organization/")
    if openai and handler.headers.get("authorization") != f"Bearer {ADMIN_KEY}":
        return send_json(handler, 401, {"error": {"message": "Invalid authorization header",
                                              "type": "invalid_request_error"}})
    if not openai and (handler.headers.get("x-api-key") != ADMIN_KEY or not handler.headers.get("anthropic-version")):
        return send_json(handler, 401, _ANTHROPIC_401)
    width = query.get("bucket_width", ["1d"])[0]
    refused = _refused(url.path, query, width)
    if refused:
        return send_json(handler, 400, {"error": {"message": refused, "type": "invalid_request_error"}})
    group = query.get("group_by" if openai else "group_by[]", [])
    step = WIDTHS[width]
    costs = url.path.endswith(("/costs", "/cost_report"))
    if openai:
        start = dt.datetime.fromtimestamp(int(query["start_time"][0]), dt.UTC)
        end = dt.datetime.fromtimestamp(int(query["end_time"][0]), dt.UTC)
        kind = url.path.rsplit("/", 1)[1]
        buckets = api.buckets("openai", start, end, step, costs, None if costs else kind)
        make = _openai_cost if costs else _OPENAI_RESULTS[kind]
        shape = lambda at: {"object": "bucket", "start_time": int(at.timestamp()),  # noqa: E731
                            "end_time": int((at + step).timestamp())}
    else:
        start = dt.datetime.fromisoformat(query["starting_at"][0].replace("Z", "+00:00"))
        end = dt.datetime.fromisoformat(query["ending_at"][0].replace("Z", "+00:00"))
        buckets = api.buckets("anthropic", start, end, step, costs)
        make = _anthropic_cost if costs else _anthropic_result
        shape = lambda at: {"starting_at": at.strftime("%Y-%m-%dT%H:%M:%SZ"),  # noqa: E731
                            "ending_at": (at + step).strftime("%Y-%m-%dT%H:%M:%SZ")}
    days = buckets
    size = api.page_size or int(query.get("limit", [str(LIMITS[width][0])])[0])
    first = _cursor(query)
    page = days[first:first + size]
    more = first + size < len(days)
    data = [{**shape(at), "results": [_faulty(api, make(values, mine)) for values, mine in _grouped(entries, group)]}
            for at, entries in page]
    body = {"data": data, "has_more": more, "next_page": str(first + size) if more else None}
    if len(api.requests) < 5_000 and (api.stuck_cursor or api.endless):  # bounded, should a client never stop
        body.update(has_more=True, next_page=query.get("page", ["p"])[0] if api.stuck_cursor
                    else f"p{len(api.requests)}")
    if openai:
        body["object"] = "page"
    if api.padding:
        body["padding"] = "x" * api.padding
    send_json(handler, 200, body)


_ANTHROPIC_401 = {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}


def _analytics(api: UsageApi, handler: BaseHTTPRequestHandler, path: str, query: dict) -> None:
    """Anthropic's analytics API: flat rows, ``limit`` rows a page, at most 31 days a request."""
    if handler.headers.get("x-api-key") != ADMIN_KEY or not handler.headers.get("anthropic-version"):
        return send_json(handler, 401, _ANTHROPIC_401)
    if "analytics-usage-cost-2026-08-24" not in (handler.headers.get("anthropic-beta") or "") or \
            api.analytics_refused:
        return send_json(handler, 400, {"type": "error", "error": {
            "type": "invalid_request_error", "message": "This endpoint is not available to your organization."}})
    start = dt.datetime.fromisoformat(query["starting_at"][0].replace("Z", "+00:00"))
    end = dt.datetime.fromisoformat(query["ending_at"][0].replace("Z", "+00:00"))
    width = query.get("time_bucket_width", ["1d"])[0]
    group = query.get("group_by[]", [])
    if end - start > 31 * DAY or width not in ("1h", "1d") or path not in _ANALYTICS_GROUPS or any(
            g not in _ANALYTICS_GROUPS[path] for g in group):
        return send_json(handler, 400, {"type": "error", "error": {"type": "invalid_request_error",
                                                               "message": "bad range, width, group_by or path"}})
    step = WIDTHS[width]
    cost = path.endswith("/cost")
    rows = _analytics_rows(api.buckets("anthropic", start, end, step, cost), step, cost, group)
    size = api.page_size or int(query.get("limit", ["20"])[0])
    first = _cursor(query)
    more = first + size < len(rows)
    send_json(handler, 200, {"data": rows[first:first + size], "has_more": more,
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





def _handler(api: UsageApi):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            answer(api, self)

    return Handler

"""``GET /api/v1/openapi.json``: an OpenAPI 3.1 description of ``/api/v1``, served without a key.

Its schemas are strict (``additionalProperties: false``): tests/test_openapi.py validates real
answers of every endpoint against them and every route of the app against its paths, so a field
added or renamed in the API and not here fails a test.
"""

from __future__ import annotations

from flask import Blueprint, jsonify

from addon.core.budgets import SCOPES
from addon.core.reports import DIMENSIONS
from addon.core.retention import MAX_OLDER_THAN_DAYS
from addon.core.store import keys as key_rows
from addon.core.store import reports as report_rows
from addon.core.store.calls import TOOL_NAMES, UNIT_COLUMNS

openapi = Blueprint("openapi", __name__)

_INT = {"type": "integer"}
_NUM = {"type": "number"}
_STR = {"type": "string"}
_TIME = {"type": "string", "format": "date-time"}
_KEY_ID = {"type": "integer", "minimum": 1, "maximum": key_rows.MAX_ID}


def _null(schema: dict) -> dict:
    return {**schema, "type": [schema["type"], "null"]}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict, required: list[str] | None = None, **more) -> dict:
    return {"type": "object", "properties": properties, "required": list(properties) if required is None else required,
            "additionalProperties": False, **more}


_TOTALS = {"calls": _INT, "errors": _INT, "unpriced_calls": _INT,
           "unmetered_calls": {**_INT, "description": "Calls to endpoints the provider bills and AiSpendTrack does "
                                                      "not meter (within unpriced_calls)."},
           "estimated_calls": _INT, "input_tokens": _INT,
           "cache_read_tokens": _INT, "cache_write_tokens": _INT, "output_tokens": _INT, "reasoning_tokens": _INT,
           "images": _INT, "characters": _INT, "audio_seconds": _NUM, **dict.fromkeys(TOOL_NAMES, _INT),
           "cost_usd": {**_null(_NUM), "description": "Priced calls only; null when none is priced."},
           "share": {**_null(_NUM), "description": "The group's part of the total cost."},
           "p50_latency_ms": _null(_NUM), "p95_latency_ms": _null(_NUM)}
_ADDED = {f"{q}_proxy_us": {**_null(_INT), "description": f"The {q} of the calls' proxy_us (calls stored before "
                                                             "it was measured left out); null when none has it."}
          for q in ("p50", "p99")}
_GROUP_KEYS = {"model": _null(_STR), "provider": _STR, "customer_id": _null(_STR), "feature": _null(_STR),
               "key_id": _null(_INT),
               "team": {**_null(_STR), "description": "With by=team: the team the calls' key is in now; null: no "
                                                      "team (or no key)."},
               "key_name": {**_null(_STR), "description": "With key_id: the key's name, and its id when another "
                                                          "key has the same name."}, "day": {**_STR, "format": "date"},
               "hour": {**_STR, "example": "2026-11-01 13:00"}, "month": {**_STR, "example": "2026-11"}}
_CALL = {"id": {**_STR, "format": "uuid"}, "ts": _TIME, "key_id": _null(_INT), "key_name": _GROUP_KEYS["key_name"],
         "provider": _STR, "endpoint": _STR,
         "model": _null(_STR), "stream": {"type": "boolean"}, "status": _null(_INT), "outcome": _STR,
         "error": _null(_STR), "input_tokens": _INT, "cache_read_tokens": _INT, "cache_write_tokens": _INT,
         "cache_write_1h_tokens": _INT, "output_tokens": _INT, "reasoning_tokens": _INT,
         "web_search_requests": _INT, "cost_usd": _null(_NUM), "priced": {"type": "boolean"},
         "price_source": _null(_STR), "usage_source": {"type": "string",
                                                       "enum": ["reported", "counted", "estimated", "partial",
                                                                "none", "unmetered", "invalid"]},
         "customer_id": _null(_STR), "feature": _null(_STR), "latency_ms": _null(_NUM), "ttft_ms": _null(_NUM),
         "service_tier": _null(_STR), "previous_cost_usd": _null(_NUM), "previous_price_source": _null(_STR),
         "repriced_at": _null(_TIME), "price_snapshot": _null(_STR),
         "proxy_us": {**_null(_INT), "description": "Microseconds the call spent in the proxy's own hooks; null "
                                                    "for calls stored before it was measured."},
         **{name: _null(_NUM if typ.startswith("DECIMAL") else _INT) for name, typ, _ in UNIT_COLUMNS}}
_LINE_VALUE = {"type": ["integer", "number", "null"]}

SCHEMAS = {
    "Error": _object({"error": _object({"code": _STR, "message": _STR})}),
    "ReportGroup": _object({**_GROUP_KEYS, **_TOTALS}, required=list(_TOTALS),
                           description="Totals of one group; the keys of the dimensions asked for (`by`) name it."),
    "ReportTotal": _object({**_GROUP_KEYS, **_TOTALS, **_ADDED}, required=[*_TOTALS, *_ADDED],
                           description="Totals of the selection, and what the proxy added to its calls."),
    "Call": _object(_CALL),
    "CallsPage": _object({"calls": {"type": "array", "items": _ref("Call")}, "next_cursor": _null(_STR)}),
    "Budget": _object({"id": _INT, "scope": {"type": "string", "enum": list(SCOPES)},
                       "scope_value": _null(_STR),
                       "key_id": {**_null(_INT), "description": "customer/feature budgets: the key whose calls "
                                  "count; null: every key's."}, "daily_usd": _null(_NUM), "monthly_usd": _null(_NUM),
                       "block": {"type": "boolean"},
                       **dict.fromkeys(("spent_today_usd", "spent_this_month_usd"), {
                           **_null(_NUM), "description": "null to a key for a budget over all calls: that spend "
                                                         "is other keys' too."}),
                       **dict.fromkeys(("unpriced_calls_today", "unpriced_calls_this_month"), {
                           **_null(_INT), "description": "Calls in the budget's scope whose cost is unknown (not "
                                                         "in the spend); null where the spend is."}),
                       "tz": {**_STR, "description": "The zone of today and this month (the proxy's quota_tz)."}}),
    "ReconciliationLine": {"type": "object", "required": ["bucket", "model", "status"],
                           "properties": {"bucket": _null(_TIME), "model": _null(_STR), "pending": {"type": "boolean"},
                                          "status": {"type": "string", "enum": ["match", "untracked", "over", "drift"]},
                                          "difference_usd": _null(_NUM), "difference_percent": _null(_NUM)},
                           "patternProperties": {"^(ours|theirs)_": _LINE_VALUE}, "additionalProperties": False},
    "Reconciliation": _object({"provider": _STR, "month_start": _TIME, "until": _TIME, "checked_at": _TIME,
                               "ours_usd": _NUM, "theirs_usd": _NUM, "difference_usd": _NUM,
                               "difference_percent": _null(_NUM), "days_differing": _INT,
                               "lines": {"type": "array", "items": _ref("ReconciliationLine")}}),
    "Prices": _object({"label": _STR, "snapshot": _STR, "source": _STR, "models": _null(_INT),
                       "fetched_at": _null(_TIME), "checked_at": _null(_TIME), "age_seconds": _null(_NUM)}),
    "AuditEntry": _object({"id": _INT, "changed_at": _TIME,
                           "actor": {**_STR, "description": "admin:ID (an admin token), key:ID or cli:USER."},
                           "action": {**_STR, "example": "keys.set-plan"}, "target": {**_STR, "example": "key:3"},
                           **dict.fromkeys(("before", "after"), {"type": ["object", "null"],
                                                                  "description": "The values before and after; "
                                                                                 "null: created or removed."})}),
    "Subject": {"type": "object", "minProperties": 1, "maxProperties": 1, "additionalProperties": False,
                "properties": {"customer": {**_STR, "minLength": 1}, "key": _KEY_ID}},
    "Erased": _object({"subject": _ref("Subject"),
                       "deleted": {"type": "object", "additionalProperties": _INT,
                                   "required": ["calls", "rollups", "budgets", "alerts", "pending_calls"]}}),
    "Purged": _object({"dry_run": {"type": "boolean"}, "expired_calls": _INT,
                       "deleted": {"type": ["object", "null"], "additionalProperties": _INT}}),
}


def _query(name: str, description: str, schema: dict | None = None, **more) -> dict:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema or _STR,
            **more}


_SELECTION = [
    _query("since", "Start, inclusive: `7d`, `24h`, `today`, `2026-11-01` (midnight in `tz`) or `2026-11-01T09:00`; "
                    "within the years 1 to 9999 in UTC."),
    _query("until", "End, exclusive; the same forms as `since`."),
    _query("customer", "Only calls with this `x-customer-id`."),
    _query("feature", "Only calls with this `x-feature`."),
    _query("model", "Only calls of this model (as recorded)."),
    _query("key", "Only calls of this key id (a key may only ask for its own).", _KEY_ID),
    _query("team", "Only calls of the keys now in this team (moving a key moves its calls)."),
    _query("tz", "IANA time zone for dates and for day, hour and month groups; default UTC."),
    _query("provider", "Only calls to this provider (`openai`, `anthropic`, ...)."),
    _query("status", "Only calls answered with this HTTP status.", {"type": "integer", "minimum": 100,
                                                                    "maximum": 599}),
    _query("errors", "Only failed calls (what a report counts as errors).", {"type": "boolean", "default": False}),
]
_EXACT = _query("exact", "Scan every raw call (exact percentiles, for audits) instead of the rollups (15-minute, "
                         "hourly, daily or weekly sums), whose p50/p95 are within 1% or of raw calls; purged calls are "
                         "then not counted.",
                {"type": "boolean", "default": False})


def _answer(description: str, schema: dict, media: str = "application/json") -> dict:
    return {"description": description, "content": {media: {"schema": schema}}}


_ERRORS = {status: _answer(text, _ref("Error")) for status, text in (
    ("400", "A parameter is wrong; the message says which and how."),
    ("401", "No credential, or not an active key or admin token."),
    ("403", "A key asked for what only admins (or another key) may see; a viewer or team user (docs/sso.md) asked "
            "for a change, or a team user for another team's calls."),
    ("503", "The storage is busy or away, or the query ran too long; try again or ask for less."),
    ("default", "Any other error (404 no such endpoint, 405 wrong method, 413 body too large, 500): the same "
                "error body."))}


def _get(summary: str, parameters: list[dict], ok: dict, admin: bool = False) -> dict:
    return {"get": {"summary": summary + (" Admin tokens only." if admin else ""), "parameters": parameters,
                    "responses": {"200": ok, **_ERRORS}}}


def _post(summary: str, body: dict, ok: dict) -> dict:
    return {"post": {"summary": summary + " Admin token in the Authorization header only (never the page's "
                                          "session).", "security": [{"bearer": []}],
                     "requestBody": {"required": False, "content": {"application/json": {"schema": body}}},
                     "responses": {"200": ok, **_ERRORS}}}


def document() -> dict:
    by = _query("by", "One or two dimensions to group by (repeat the parameter).",
                {"type": "array", "items": {"type": "string", "enum": list(DIMENSIONS)}, "minItems": 1, "maxItems": 2},
                style="form", explode=True)
    limit = _query("limit", "Keep only the first groups (the costliest, or the earliest for a time dimension); "
                            "only theirs get percentiles computed.",
                   {"type": "integer", "minimum": 1, "maximum": 100_000})
    percentiles = _query("percentiles", "false: the groups' p50/p95 are null, not computed (sums alone, faster: "
                                        "merging the histograms of many groups is most of a report's time).",
                         {"type": "boolean", "default": True})
    subject = [_query("customer", "The customer's `x-customer-id`."), _query("key", "The key id.", _KEY_ID)]
    exports: dict[str, dict] = {media: {"schema": {"type": "string", "format": "binary"}}
                                for media in dict.fromkeys(report_rows.EXPORT_FORMATS.values())}
    exports["application/json"] = {"schema": {"type": "array", "items": {
        "type": "object", "description": "A call's fields, as a Call has them (without key_name)."}}}
    paths = {
        "/report": _get("Totals per group, ordered by time for time dimensions, else by cost.",
                        [by, *_SELECTION, limit, percentiles, _EXACT],
                        {**_answer("The groups.", {"type": "array", "items": _ref("ReportGroup")}),
                         "headers": {"X-Total-Groups": {"description": "How many groups there are in all, "
                                                                       "however many `limit` keeps.",
                                                        "schema": {"type": "integer", "minimum": 0}}}}),
        "/report/total": _get("The total over the selection.", [*_SELECTION, _EXACT],
                              _answer("The total.", _ref("ReportTotal"))),
        "/calls": _get("Calls, newest first, in keyset pages.", [
            *_SELECTION, _query("limit", "Calls per page.", {"type": "integer", "minimum": 1, "maximum": 1000}),
            _query("cursor", "`next_cursor` of the previous page.")], _answer("One page.", _ref("CallsPage"))),
        "/export": _get("Every selected call (metadata only), streamed.", [
            *_SELECTION, _query("format", "File format.", {"type": "string", "enum": list(report_rows.EXPORT_FORMATS),
                                                          "default": "csv"})],
            {"description": "The file, as an attachment.", "content": exports}),
        "/budgets": _get("Budgets with today's and this month's spend (a key sees its own).", [],
                         _answer("The budgets.", {"type": "array", "items": _ref("Budget")})),
        "/reconciliation": _get("The latest daily reconciliation per provider.", [],
                                _answer("One per provider.", {"type": "array", "items": _ref("Reconciliation")}),
                                admin=True),
        "/prices": _get("The list-price data in use: where it came from and how old it is (age_seconds: since it "
                        "was last fetched; null for the installed package's data).", [],
                        _answer("The data in use.", _ref("Prices")), admin=True),
        "/audit": _get("Every change made through the CLI or the API, oldest first.",
                       [_query("since", "From: `7d`, `today`, a date or a time (in `tz`)."),
                        _query("tz", "IANA time zone of `since`; default UTC.")],
                       _answer("The entries.", {"type": "array", "items": _ref("AuditEntry")}), admin=True),
        "/gdpr/export": _get("Everything stored about one customer or key, one JSON document.", subject,
                             _answer("The document.", {"type": "object", "required": ["subject", "calls"]}),
                             admin=True),
        "/gdpr/delete": _post("Erase a customer or key everywhere and rewrite the storage.", _ref("Subject"),
                              _answer("What was removed.", _ref("Erased"))),
        "/purge": _post("The retention purge.", {"type": "object", "additionalProperties": False, "properties": {
                            "older_than_days": {"type": "integer", "minimum": 1, "maximum": MAX_OLDER_THAN_DAYS},
                            "dry_run": {"type": "boolean"}}},
                        _answer("What expired, and what was deleted (null on a dry run).", _ref("Purged"))),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "AiSpendTrack API", "version": "1",
                 "description": "What your LLM calls cost, from the proxy's records (metadata only). "
                                "Reference: docs/api.md."},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}, {"session": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "An AiSpendTrack key (`ask_...`: its own calls) or an admin token "
                                          "(`ast_...`: every call)."},
                "session": {"type": "apiKey", "in": "cookie", "name": "aispendtrack_session",
                            "description": "The report page's session, after signing in (GET only)."}}},
    }


@openapi.get("/api/v1/openapi.json")
def served():
    return jsonify(document())

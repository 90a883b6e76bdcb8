"""Anthropic's Admin API usage report (``/v1/organizations/usage_report/messages``).

Anthropic's docs now call this the "Usage and Cost API" and also document a newer analytics API;
this report is the one with per-model token kinds by bucket. A second module beside this one
adds another API (``PROVIDERS`` in ``__init__.py``).
"""

from __future__ import annotations

import datetime as dt

from .http import get_json, read_page

NAME = "Anthropic"
KEY_VARIABLE = "ANTHROPIC_ADMIN_KEY"
COUNTS_REQUESTS = False
DEFAULT_BASE_URL = "https://api.anthropic.com"
_PAGE = {"1d": "31", "1h": "168"}


def fetch(base_url: str, admin_key: str, start: dt.datetime, end: dt.datetime, width: str) -> list[dict]:
    url = f"{base_url.rstrip('/')}/v1/organizations/usage_report/messages"
    headers = {"x-api-key": admin_key, "anthropic-version": "2023-06-01"}
    lines: list[dict] = []
    page: str | None = None
    while True:
        params = [("starting_at", _rfc3339(start)), ("ending_at", _rfc3339(end)), ("bucket_width", width),
                  ("group_by[]", "model"), ("limit", _PAGE[width])]
        if page:
            params.append(("page", page))
        body = get_json(url, params, headers, NAME, KEY_VARIABLE)
        lines += read_page(body, url, NAME, _bucket_start, _line)
        page = body.get("next_page") if body.get("has_more") else None
        if not page:
            return lines


def _rfc3339(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _bucket_start(bucket: dict) -> dt.datetime:
    return dt.datetime.fromisoformat(str(bucket["starting_at"]).replace("Z", "+00:00")).astimezone(dt.UTC)


def _line(at: dt.datetime, result: dict) -> dict:
    creation = result.get("cache_creation") or {}
    tools = result.get("server_tool_use") or {}
    return {"bucket": at, "model": result.get("model"), "requests": None,  # the report does not count them
            "input_tokens": int(result.get("uncached_input_tokens") or 0),
            "cache_read_tokens": int(result.get("cache_read_input_tokens") or 0),
            "cache_write_tokens": int(creation.get("ephemeral_5m_input_tokens") or 0)
            + int(creation.get("ephemeral_1h_input_tokens") or 0),
            "cache_write_1h_tokens": int(creation.get("ephemeral_1h_input_tokens") or 0),
            "output_tokens": int(result.get("output_tokens") or 0),
            "web_search_requests": int(tools.get("web_search_requests") or 0)}
